"""The faust application of the monitoring service.

Topology::

    predictions ────────┐
    predictions.shadow ─┼─ route ─> <app>-join ─ join ─> <app>-observations ─ watch ─┐
    labels ─────────────┘  (by frame id)    │          (1 partition)          │      │
                                      table pending                    table state   │
      metrics (windows, comparisons), retrain.requests, alerts, labels.requests <────┘

``route`` re-keys predictions (keyed by camera) and labels (keyed by frame) by frame id, so
all of a frame's records meet in one partition of the ``pending`` table (``join``, see
``services.monitoring.join``). What the join completes goes, keyed by model, to one
single-partition topic, where ``watch`` feeds the pure ``Monitor`` in one order and keeps
its state documents in the ``state`` table. Both tables have changelogs, so a restarted
monitor carries on where it was: the same window ids, the same trigger state, and a drop
that already fired never fires again. What a restart reads again is not counted again: the
join remembers what each frame has sent, and ``state`` holds the offset of the last
observation folded in (written after the documents it covers), so ``watch`` skips the
observations read again from the last committed offset. After every rebalance the monitor is
read again from ``state`` before its next observation: another worker may have folded
observations into the table while this one did not own the partition.

Timers send ticks through the same topics: each join partition sweeps its expired entries,
and the observations partition closes quiet windows by time.

Tracing: each window is published under its own span; a retrain request's span links to the
spans of the windows that caused it (many to one), and training, evaluation, the registry
and serving continue that trace from the request's headers.

Inputs are read at least once, as in labelling: faust flushes its producer before
committing, and no exception escapes an agent; what cannot be handled goes to the dead-letter
topic. Outputs other than label requests are published once across a kill: a fold that has
any keeps them in ``state`` as its outbox, on the changelog before they are published, and a
restarted worker publishes what of it the topics lack (``services.monitoring.outbox``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import faust
from kafka.errors import KafkaError
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind
from prometheus_client import Counter, Gauge

from services.monitoring.calibrations import Temperatures
from services.monitoring.join import FrameJoin, Joined
from services.monitoring.monitor import Monitor, Outputs
from services.monitoring.outbox import EMPTY, OUTBOX, Outbox, PublishedIds, event_ids_since
from services.monitoring.settings import MonitoringSettings
from shared.events import (
    DecodeError,
    Event,
    Label,
    Prediction,
    decode,
    encode,
    utcnow,
)
from shared.expiry import ExpiryIndex
from shared.ports import RegistryReader
from shared.streams import MAX_RECORD_BYTES, BytesKeyed, FaustDeadLetters, new_app, read_source
from shared.telemetry import ALWAYS_SAMPLE, inject_headers
from shared.topics import Topics

__all__ = ["MonitorApp", "build_app"]

log = logging.getLogger("streamloop.monitoring")

RECORDS = Counter(
    "streamloop_monitoring_records",
    "Records handled by monitoring, by kind (prediction, label, other) and outcome.",
    ["kind", "outcome"],
)
PUBLISHED = Counter(
    "streamloop_monitoring_published", "Events published by monitoring, by topic.", ["topic"]
)
LIVE_ACCURACY = Gauge(
    "streamloop_monitoring_window_accuracy",
    "Accuracy of the last closed window, by model version and stream.",
    ["model_version", "stream"],
)
ESTIMATED_ACCURACY = Gauge(
    "streamloop_monitoring_window_estimated_accuracy",
    "Accuracy of the last closed window estimated from its predictions without labels, by "
    "model version, stream and bound (value, low, high of its interval).",
    ["model_version", "stream", "bound"],
)
ESTIMATE_ERROR = Gauge(
    "streamloop_monitoring_window_estimate_error",
    "Estimated minus realised accuracy of the last closed window with both, by model version "
    "and stream.",
    ["model_version", "stream"],
)
CAMERA_ESTIMATE = Gauge(
    "streamloop_monitoring_camera_estimated_accuracy",
    "Estimated accuracy of each camera in the last closed window, by model version and camera.",
    ["model_version", "camera"],
)
JUDGED = Counter(
    "streamloop_monitoring_estimated_requests_judged",
    "Suspected drops (by the estimate or the labels' CUSUM), by what labels then said "
    "(confirmed, false_alarm).",
    ["outcome"],
)
PENDING = Gauge("streamloop_monitoring_pending", "Frames held in this worker's join table.")

MAX_BYTES = MAX_RECORD_BYTES
TICK = b'{"event_type":"monitoring.tick"}'
FOLDED = "folded/observations"
"""The ``state`` document holding the offset of the last observation folded in."""
KEEP_WINDOW_SPANS = 500
OUTBOX_FLUSH_S = 30.0
"""How long a fold that yields outputs waits for its outbox to reach the broker before it
publishes anyway: a kill in the moments after could then publish a window twice, which is
better than never publishing it."""


class MonitorApp:
    """The configured faust app and what its agents share (``build_app`` makes one)."""

    def __init__(
        self,
        settings: MonitoringSettings,
        tracer: trace.Tracer | None = None,
        clock: Callable[[], datetime] = utcnow,
        registry: RegistryReader | None = None,
        published: PublishedIds | None = None,
    ) -> None:
        self.settings = settings
        self.published = published or event_ids_since(settings.kafka)
        self.temperatures = Temperatures(registry, settings.model_name)
        self.tracer = tracer or trace.get_tracer("streamloop.monitoring")
        self.clock = clock
        kafka = settings.kafka
        self.prefix = prefix = kafka.topic_prefix
        self.app_id = app_id = prefix + settings.app_id
        self.app = app = new_app(app_id, kafka, partitions=settings.partitions)
        self.join_rules = FrameJoin(settings.join_ttl_s)
        self.monitor = self._new_monitor()
        self._loaded = False
        self._folded = -1
        """Offset of the last ``observations`` record folded into the ``state`` table."""
        self._boxed = False
        """Whether the ``state`` table's outbox holds outputs (emptied by the next fold)."""
        self._window_spans: OrderedDict[str, SpanContext] = OrderedDict()
        self.dead_letters = FaustDeadLetters(app, prefix, group=app_id, tracer=self.tracer)

        self.sources = app.topic(
            prefix + Topics.PREDICTIONS,
            prefix + Topics.PREDICTIONS_SHADOW,
            prefix + Topics.LABELS,
            key_type=bytes,
            value_type=bytes,
        )
        self.join_topic = app.topic(
            f"{app_id}-join",
            key_type=bytes,
            value_type=bytes,
            partitions=settings.partitions,
            internal=True,
        )
        self.observations = app.topic(
            f"{app_id}-observations", key_type=bytes, value_type=bytes, partitions=1, internal=True
        )
        self.out = {
            name: app.topic(prefix + name, key_type=bytes, value_type=bytes)
            for name in (
                Topics.METRICS,
                Topics.RETRAIN_REQUESTS,
                Topics.ALERTS,
                Topics.LABELS_REQUESTS,
            )
        }
        pending = app.Table(
            "pending",
            default=None,
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
            help="frame_id -> predictions and label waiting for each other (JSON)",
        )
        self.pending_table = pending
        self.pending = BytesKeyed(pending)
        self.due = ExpiryIndex(self.join_rules.due_at)

        @pending.on_recover
        async def reindex() -> None:
            # Entries came back from the changelog: the next sweep of each partition reads it.
            self.due.forget()

        state = app.Table(
            "state",
            default=None,
            partitions=1,
            key_type=bytes,
            value_type=bytes,
            help="the monitor's state documents (windows, trigger, comparisons) as JSON",
        )
        self.state = BytesKeyed(state)

        @state.on_recover
        async def reload() -> None:
            # After every rebalance: the observations may have been folded by another worker
            # while this one did not own them, so the monitor is read again from the table
            # before its next observation, never continued from what this worker held.
            self._loaded = False

        self._wire()

    def _new_monitor(self) -> Monitor:
        s = self.settings
        return Monitor(s.model_name, s.task.classes, s.policy())

    # --- agents ---------------------------------------------------------------------------

    def _wire(self) -> None:
        app, settings = self.app, self.settings

        @app.agent(self.sources)
        async def route(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            async for event in stream.events():
                await self.route(event)
                yield None

        @app.agent(self.join_topic)
        async def join(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            async for event in stream.events():
                await self.join(event)
                yield None

        @app.agent(self.observations)
        async def watch(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            async for event in stream.events():
                await self.watch(event)
                yield None

        @app.timer(interval=settings.sweep_interval_s)  # type: ignore[untyped-decorator]
        async def sweep_tick() -> None:
            for partition in range(settings.partitions):
                await self.join_topic.send(value=TICK, partition=partition)

        @app.timer(interval=settings.tick_interval_s)  # type: ignore[untyped-decorator]
        async def window_tick() -> None:
            await self.observations.send(value=TICK, partition=0)

    async def route(self, event: Any) -> None:
        """Re-key a prediction or label by frame id onto the join topic."""
        msg, source = event.message, self.dead_letters.logical(event)
        try:
            parsed, value = read_source(event.value, source, msg.partition, msg.offset)
        except DecodeError as exc:
            RECORDS.labels("other", exc.reason).inc()
            await self.dead_letters.send(event, exc.reason, exc.message, source)
            return
        if not isinstance(parsed, Prediction | Label):
            RECORDS.labels("other", "wrong_event_type").inc()
            await self.dead_letters.send(
                event, "wrong_event_type", f"{parsed.event_type} does not belong here", source
            )
            return
        if isinstance(parsed, Prediction) and parsed.model_name != self.settings.model_name:
            RECORDS.labels("prediction", "other_model").inc()
            return
        await self.join_topic.send(
            key=parsed.frame_id.encode(), value=value, headers=list(msg.headers or [])
        )

    async def join(self, event: Any) -> None:
        """Join one prediction or label with what the frame already has."""
        now = self.clock()
        if event.value == TICK:
            self.sweep(event.message.partition, now)
            return
        kind = "other"
        try:
            parsed = decode(event.value, Event, max_bytes=MAX_BYTES)
            entry = self.pending.get(getattr(parsed, "frame_id", ""))
            new = entry is None
            if isinstance(parsed, Prediction):
                kind = "prediction"
                entry, joined = self.join_rules.on_prediction(
                    entry, parsed, now, self.temperatures.calibrated(parsed)
                )
            elif isinstance(parsed, Label):
                kind = "label"
                entry, joined = self.join_rules.on_label(entry, parsed, now)
            else:
                raise DecodeError(f"{parsed.event_type} does not belong here")
            entry["p"] = event.message.partition
            self.pending[parsed.frame_id] = entry
            self.due.add(parsed.frame_id, entry, new=new)
        except DecodeError as exc:
            RECORDS.labels(kind, exc.reason).inc()
            await self.dead_letters.send(event, exc.reason, exc.message, Topics.EVENTS_DLQ)
            return
        except Exception as exc:  # a bug must not stop the stream: park the record
            log.exception("join failed", extra={"offset": event.message.offset})
            RECORDS.labels(kind, "handler_error").inc()
            await self.dead_letters.send(
                event, "handler_error", f"{type(exc).__name__}: {exc}", Topics.EVENTS_DLQ
            )
            return
        RECORDS.labels(kind, "joined" if joined else "held").inc()
        for j in joined:
            await self.observations.send(
                key=j.model_name.encode(),
                value=json.dumps(j.to_json(), separators=(",", ":")).encode(),
                partition=0,
            )

    def sweep(self, partition: int, now: datetime) -> None:
        """Remove this partition's expired join entries (each entry remembers its partition:
        the table's mapping view spans every partition this worker holds), found through
        the index of due times rather than by reading the whole table."""
        for key, _ in self.due.expired(self.pending, partition, now.timestamp()):
            del self.pending[key]
        PENDING.set(self.due.held())

    async def watch(self, event: Any) -> None:
        """Feed one joined observation (or a tick) to the monitor and publish its answer."""
        now = self.clock()
        if not self._loaded:
            await self._load()
        if event.message.offset <= self._folded:
            # Folded before a crash; its effects (windows published, requests sent) stand.
            RECORDS.labels("observation", "replayed").inc()
            return
        try:
            if event.value == TICK:
                out = self.monitor.tick(now)
            else:
                out = self.observe(Joined.from_json(json.loads(event.value)), now)
        except Exception as exc:
            log.exception("monitor failed", extra={"offset": event.message.offset})
            RECORDS.labels("observation", "handler_error").inc()
            await self.dead_letters.send(
                event, "handler_error", f"{type(exc).__name__}: {exc}", Topics.EVENTS_DLQ
            )
            return
        for key, doc in self.monitor.take_dirty().items():
            self.state[key] = doc
        box = Outbox.of(out, now)
        if box is not None:
            self.state[OUTBOX] = box.dump()
            self._boxed = True
        elif self._boxed:
            self.state[OUTBOX] = EMPTY
            self._boxed = False
        # Last, after the documents it covers: a record read again after a crash (its offset
        # was not committed yet) is recognised and not folded a second time.
        self.state[FOLDED] = {"offset": event.message.offset}
        self._folded = event.message.offset
        if box is not None:
            # The fold, its offset and its outbox on the broker before any of it is published:
            # a kill from here on leaves the outbox for the next worker to finish.
            await self._flush_outbox()
        if out:
            await self.publish(out)

    async def _flush_outbox(self) -> None:
        """Wait until faust's producer has the outbox on the broker, ``OUTBOX_FLUSH_S`` at most."""
        started = asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(self.app.producer.flush(), OUTBOX_FLUSH_S)
        except TimeoutError:
            log.warning(
                "the outbox did not reach the broker in time; publishing anyway",
                extra={"waited_s": OUTBOX_FLUSH_S},
            )
            return
        waited = asyncio.get_running_loop().time() - started
        if waited > 5:
            log.warning("the outbox took long to reach the broker", extra={"waited_s": waited})

    async def _load(self) -> None:
        """Continue from the ``state`` table; publish what a stopped worker's outbox holds
        and its topics do not."""
        docs = {k: self.state[k] for k in list(self.state)}
        held, self._folded = self._folded, int(docs.pop(FOLDED, {}).get("offset", -1))
        if held >= 0 and held != self._folded:
            log.info(
                "another worker folded observations since this one last did",
                extra={"held": held, "folded": self._folded},
            )
        box = Outbox.load(docs.pop(OUTBOX, EMPTY))
        self.monitor = self._new_monitor()
        self.monitor.load(docs.items())
        self._loaded = True
        self._boxed = False
        if box is None:
            return
        loop = asyncio.get_running_loop()
        try:
            missing = await loop.run_in_executor(None, box.unpublished, self.published)
        except (KafkaError, TimeoutError, OSError) as exc:  # rather twice than never
            log.warning(
                "could not read the output topics back; publishing the whole outbox",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )
            missing = box.unpublished(lambda _topics, _since: set())
        if missing:
            n = len(missing.windows) + len(missing.comparisons)
            n += len(missing.retrains) + len(missing.alerts)
            log.warning("publishing what a stopped worker left unsent", extra={"count": n})
            await self.publish(missing)
        self.state[OUTBOX] = EMPTY

    def observe(self, j: Joined, now: datetime) -> Outputs:
        m = self.monitor
        if j.kind == "prediction":
            return m.on_prediction(j.observation, j.version, j.stream, now)
        if j.kind == "label":
            return m.on_label(j.observation, j.version, j.stream, now)
        if j.kind == "disagreement":
            assert j.challenger is not None and j.challenger_predicted is not None
            return m.on_disagreement(j.observation, j.version, j.challenger, j.challenger_predicted)
        assert j.challenger is not None and j.challenger_correct is not None
        o = j.observation
        return m.on_pair(
            j.version,
            j.challenger,
            champion_correct=o.predicted == o.label,
            challenger_correct=j.challenger_correct,
            at=o.served_at,
        )

    # --- publishing -----------------------------------------------------------------------

    async def _send(
        self,
        topic: str,
        key: str,
        event: Event,
        *,
        name: str,
        links: list[Link] | None = None,
        attributes: dict[str, str | bool] | None = None,
    ) -> SpanContext:
        span = self.tracer.start_span(
            name,
            kind=SpanKind.PRODUCER,
            links=links,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": self.prefix + topic,
                "messaging.message.id": event.event_id,
                # Few and decisive: their traces are kept whatever the sampling ratio.
                ALWAYS_SAMPLE: True,
                **(attributes or {}),
            },
        )
        try:
            await self.out[topic].send(
                key=key.encode(),
                value=encode(event),
                headers=inject_headers(None, trace.set_span_in_context(span)),
            )
        finally:
            span.end()
        PUBLISHED.labels(topic).inc()
        return span.get_span_context()

    async def publish(self, out: Outputs) -> None:
        for w in out.windows:
            ctx = await self._send(
                Topics.METRICS,
                w.model_version,
                w,
                name="monitoring window closed",
                attributes={"streamloop.window_id": w.window_id},
            )
            self._window_spans[w.window_id] = ctx
            while len(self._window_spans) > KEEP_WINDOW_SPANS:
                self._window_spans.popitem(last=False)
            stream = "shadow" if w.shadow else "live"
            if w.accuracy is not None:
                LIVE_ACCURACY.labels(w.model_version, stream).set(w.accuracy)
            if w.estimate is not None:
                for bound in ("value", "low", "high"):
                    ESTIMATED_ACCURACY.labels(w.model_version, stream, bound).set(
                        getattr(w.estimate, bound)
                    )
            if w.estimate_error is not None:
                ESTIMATE_ERROR.labels(w.model_version, stream).set(w.estimate_error)
            if not w.shadow:
                for camera, e in w.per_camera_estimate.items():
                    CAMERA_ESTIMATE.labels(w.model_version, camera).set(e.value)
            log.info(
                "window closed",
                extra={
                    "window_id": w.window_id,
                    "accuracy": w.accuracy,
                    "labelled": w.labelled_count,
                    "samples": w.sample_count,
                    "psi": w.psi,
                    "estimated": w.estimate.value if w.estimate is not None else None,
                },
            )
        for c in out.comparisons:
            await self._send(Topics.METRICS, c.model_name, c, name="monitoring comparison")
        for r in out.retrains:
            links = [Link(self._window_spans[w]) for w in r.window_ids if w in self._window_spans]
            await self._send(
                Topics.RETRAIN_REQUESTS,
                r.model_name,
                r,
                name="monitoring retrain requested",
                links=links,
                attributes={"streamloop.request_id": r.idempotency_key},
            )
            log.warning("retrain requested", extra={"key": r.idempotency_key, "reason": r.reason})
        for a in out.alerts:
            await self._send(Topics.ALERTS, a.kind, a, name="monitoring alert")
            if a.kind in ("estimate_confirmed", "drop_confirmed", "false_alarm"):
                JUDGED.labels("false_alarm" if a.kind == "false_alarm" else "confirmed").inc()
            log.warning("alert", extra={"kind": a.kind, "alert": a.message})
        for q in out.label_requests:
            await self._send(Topics.LABELS_REQUESTS, q.frame_id, q, name="monitoring label request")
        if out.label_requests:
            log.info("labels requested", extra={"count": len(out.label_requests)})


def build_app(
    settings: MonitoringSettings,
    tracer: trace.Tracer | None = None,
    clock: Callable[[], datetime] = utcnow,
    registry: RegistryReader | None = None,
    published: PublishedIds | None = None,
) -> MonitorApp:
    """The configured monitoring app (not started); ``registry`` gives each version's
    temperature (without it, confidences count uncalibrated); ``published`` reads back the
    output topics after a restart (the broker's, by default)."""
    return MonitorApp(settings, tracer, clock, registry, published)
