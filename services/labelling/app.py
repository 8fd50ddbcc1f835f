"""The faust application of the labelling service.

Topology::

    frames.valid ─┐                         ┌─> examples (key frame_id, compacted)
                  ├─ route ─> <app>-join ─ join ─┤
    labels ───────┘   (re-key by frame_id)  └─> events.dlq / frames.dlq (refusals)
                                  │
                          table <app>-pending (changelog <app>-pending-changelog)

``frames.valid`` is keyed by camera and ``labels`` by frame, so ``route`` re-keys both by
frame_id onto one internal topic; every entry for a frame then lives in the same partition
of the ``pending`` table as of the join topic, whichever worker owns it (faust's
co-partitioning: a table change goes to the changelog partition of the event being handled).
Expiry runs inside the stream too: a timer sends a tick to every partition of the join topic,
and the tick sweeps the expired entries of its own partition, found through an in-memory
index of due times (rebuilt from the table after recovery), so a sweep never decodes the
whole table.

Tracing: each record is handled under a CONSUMER span, in ``route`` continuing the trace of
the record's producer and in ``join`` the trace ``route`` forwarded in the join record's
headers. An example is published under a PRODUCER span of the trace of the record that
completed it (its headers carry that span), linked to the span in which the other half was
joined, so a frame's trace reaches its example whichever half came last.

At-least-once: faust flushes its producer before it commits an offset, and every output is
handed to the producer before its input event is acknowledged. No exception escapes an
agent: a record that cannot be handled goes to the dead-letter topic with the standard
``dlq.*`` headers and the stream moves on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractContextManager
from typing import Any

import faust
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind
from prometheus_client import Counter, Gauge

from services.labelling.join import Joiner, UnknownClassError
from services.labelling.settings import LabellingSettings
from shared.events import (
    DecodeError,
    Event,
    Example,
    FrameValid,
    Label,
    decode,
    encode,
)
from shared.streams import (
    MAX_RECORD_BYTES,
    BytesKeyed,
    FaustDeadLetters,
    new_app,
    read_source,
    record_headers,
)
from shared.telemetry import Headers, extract_context, inject_headers
from shared.topics import Topics

__all__ = ["LabellingApp", "build_app"]

log = logging.getLogger("streamloop.labelling")

RECORDS = Counter(
    "streamloop_labelling_records",
    "Records handled by labelling, by kind (frame, label) and outcome.",
    ["kind", "outcome"],
)
EXAMPLES = Counter("streamloop_labelling_examples", "Examples published.")
EXPIRED = Counter(
    "streamloop_labelling_expired",
    "Pending entries removed at expiry, by kind (unlabelled_frame, orphan_label, labelled).",
    ["kind"],
)
PENDING = Gauge("streamloop_labelling_pending", "Entries held in this worker's join table.")

MAX_BYTES = MAX_RECORD_BYTES
# Where a record of the join topic came from, by what it turned out to be (for its DLQ);
# anything else falls back to events.dlq.
SOURCE_OF = {"frame": Topics.FRAMES_VALID, "label": Topics.LABELS, "unknown": Topics.EVENTS_DLQ}
KIND_OF: dict[type[Event], str] = {FrameValid: "frame", Label: "label"}
TICK = b'{"event_type":"labelling.tick"}'
"""Sent by the timer to each join partition: sweep your expired entries."""


def consumer_span(tracer: trace.Tracer, message: Any) -> AbstractContextManager[trace.Span]:
    """The current CONSUMER span for handling ``message``, continuing its producer's trace."""
    return tracer.start_as_current_span(
        f"{message.topic} process",
        context=extract_context(record_headers(message)),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": message.topic,
            "messaging.destination.partition.id": message.partition,
            "messaging.kafka.offset": message.offset,
        },
    )


def traceparent_of(span: trace.Span) -> str | None:
    """The W3C ``traceparent`` of ``span``; None when it has no valid context."""
    value = dict(inject_headers(None, trace.set_span_in_context(span))).get("traceparent")
    return value.decode() if value is not None else None


def links_to(traceparents: Iterable[str], own: trace.Span) -> list[Link]:
    """Links to the spans named by ``traceparents``, ``own`` left out."""
    mine = own.get_span_context().span_id
    links = []
    for tp in traceparents:
        ctx = trace.get_current_span(extract_context([("traceparent", tp.encode())]))
        other = ctx.get_span_context()
        if other.is_valid and other.span_id != mine:
            links.append(Link(other))
    return links


class LabellingApp:
    """The configured faust app and what its agents share (``build_app`` makes one)."""

    def __init__(self, settings: LabellingSettings, tracer: trace.Tracer | None = None) -> None:
        self.settings = settings
        self.tracer = tracer or trace.get_tracer("streamloop.labelling")
        prefix = settings.kafka.topic_prefix
        self.app_id = app_id = prefix + settings.app_id
        on_disk = settings.table_store == "rocksdb"
        self.app = app = new_app(
            app_id,
            settings.kafka,
            partitions=settings.partitions,
            store="rocksdb://" if on_disk else "memory://",
            standby_replicas=0 if on_disk else 1,
        )
        self.joiner = Joiner(
            settings.task.classes,
            frame_ttl_s=settings.frame_ttl_s,
            label_ttl_s=settings.label_ttl_s,
        )
        self.sources = app.topic(
            prefix + Topics.FRAMES_VALID, prefix + Topics.LABELS, key_type=bytes, value_type=bytes
        )
        self.join_topic = app.topic(
            f"{app_id}-join",
            key_type=bytes,
            value_type=bytes,
            partitions=settings.partitions,
            internal=True,
        )
        self.examples_name = prefix + Topics.EXAMPLES
        self.examples = app.topic(self.examples_name, key_type=bytes, value_type=bytes)
        mib = 1 << 20
        self.pending = app.Table(
            "pending",
            default=None,
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
            help="frame_id -> frame and/or label waiting for the other half (JSON)",
            options={
                "write_buffer_size": settings.rocksdb_write_buffer_mib * mib,
                "max_write_buffer_number": 2,
                "target_file_size_base": settings.rocksdb_write_buffer_mib * mib,
                "block_cache_size": settings.rocksdb_cache_mib * mib,
            }
            if on_disk
            else None,
        )
        self.state = BytesKeyed(self.pending)
        self.dead_letters = FaustDeadLetters(app, prefix, group=app_id, tracer=self.tracer)
        self._wire()

    # --- agents ---------------------------------------------------------------------------

    def _wire(self) -> None:
        app, settings = self.app, self.settings

        @self.pending.on_recover
        async def reindex() -> None:
            # Entries came back from the changelog: the next sweep of each partition reads
            # it once.
            self.joiner.forget_due_times()

        @app.agent(self.sources)
        async def route(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            async for event in stream.events():
                await self.forward(event)
                yield None

        @app.agent(self.join_topic)
        async def join(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            async for event in stream.events():
                if event.value == TICK:
                    self.sweep(event.message.partition)
                else:
                    await self.handle(event)
                yield None

        @app.timer(interval=settings.sweep_interval_s)  # type: ignore[untyped-decorator]
        async def tick() -> None:
            for partition in range(settings.partitions):
                await self.join_topic.send(value=TICK, partition=partition)

    async def forward(self, event: Any) -> None:
        """Re-key a frame or a label by frame id onto the join topic, with the trace context
        of this step; park anything else."""
        msg, source = event.message, self.dead_letters.logical(event)
        with consumer_span(self.tracer, msg) as span:
            try:
                parsed, value = read_source(
                    event.value, source, msg.partition, msg.offset, max_bytes=MAX_BYTES
                )
            except DecodeError as exc:
                RECORDS.labels("unknown", exc.reason).inc()
                await self.dead_letters.send(event, exc.reason, exc.message, source)
                return
            span.set_attribute("messaging.message.id", parsed.event_id)
            if not isinstance(parsed, FrameValid | Label):
                RECORDS.labels("unknown", "wrong_event_type").inc()
                why = f"{parsed.event_type} does not belong here"
                await self.dead_letters.send(event, "wrong_event_type", why, source)
                return
            await self.join_topic.send(
                key=parsed.frame_id.encode(),
                value=value,
                headers=inject_headers(record_headers(msg)),
            )

    async def handle(self, event: Any) -> None:
        """Join one frame or label (under a CONSUMER span of its trace); publish the example
        it completes, park what cannot be joined."""
        msg = event.message
        with consumer_span(self.tracer, msg) as span:
            kind = "unknown"
            try:
                parsed = decode(event.value, Event, max_bytes=MAX_BYTES)
                span.set_attribute("messaging.message.id", parsed.event_id)
                kind = KIND_OF.get(type(parsed), "unknown")
                example = self._join(parsed, msg.partition, traceparent_of(span))
            except (DecodeError, UnknownClassError) as exc:
                RECORDS.labels(kind, exc.reason).inc()
                await self.dead_letters.send(event, exc.reason, str(exc), SOURCE_OF[kind])
                return
            except Exception as exc:  # a bug must not stop the stream: park the record
                log.exception("join failed", extra={"offset": msg.offset})
                RECORDS.labels(kind, "handler_error").inc()
                why = f"{type(exc).__name__}: {exc}"
                await self.dead_letters.send(event, "handler_error", why, SOURCE_OF[kind])
                return
            RECORDS.labels(kind, "held" if example is None else "joined").inc()
            if example is not None:
                links = links_to(self.joiner.traceparents(self.state, example.frame_id), span)
                await self.publish(example, record_headers(msg), links)

    def _join(self, parsed: Event, partition: int, here: str | None) -> Example | None:
        """The example ``parsed`` (a frame or a label) completes, if any.

        Raises ``DecodeError`` for any other event, ``UnknownClassError`` for a label of a
        class the task does not have."""
        if isinstance(parsed, FrameValid):
            return self.joiner.on_frame(self.state, parsed, partition, traceparent=here)
        if isinstance(parsed, Label):
            return self.joiner.on_label(self.state, parsed, partition, traceparent=here)
        raise DecodeError(f"{parsed.event_type} does not belong here")

    async def publish(self, example: Example, headers: Headers, links: list[Link]) -> None:
        """Send ``example`` under a PRODUCER span (child of the current span, linked to
        ``links``) whose context its headers carry."""
        span = self.tracer.start_span(
            f"{self.examples_name} publish",
            kind=SpanKind.PRODUCER,
            links=links,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": self.examples_name,
                "messaging.message.id": example.event_id,
            },
        )
        try:
            await self.examples.send(
                key=example.frame_id.encode(),
                value=encode(example),
                headers=inject_headers(headers, trace.set_span_in_context(span)),
            )
        finally:
            span.end()
        EXAMPLES.inc()

    def sweep(self, partition: int) -> None:
        gone = self.joiner.expire(self.state, partition)
        for kind, n in (
            ("unlabelled_frame", gone.unlabelled_frames),
            ("orphan_label", gone.orphan_labels),
            ("labelled", gone.labelled),
        ):
            if n:
                EXPIRED.labels(kind).inc(n)
        if gone.orphan_labels:
            log.info("labels expired without their frame", extra={"count": gone.orphan_labels})
        PENDING.set(self.joiner.pending())


def build_app(settings: LabellingSettings, tracer: trace.Tracer | None = None) -> faust.App:
    """The configured faust app (not started). ``tracer``: default, the global provider's."""
    return LabellingApp(settings, tracer).app
