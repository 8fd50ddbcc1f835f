"""``bench_profile``'s measure: the CPU time per frame of every stage of the frame path, each
run in this process over the same records, and the service loops whole and under cProfile.

CPU is in seconds (``process_s``: every thread of this process; ``thread_s``: the calling
thread; the broker's and Redis's from /proc) and reported in µs per frame."""

from __future__ import annotations

import cProfile
import hashlib
import pstats
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from services.ingest.handler import make_handler
from services.ingest.logic import Ingestor, Policy, validate
from services.ingest.settings import IngestSettings
from services.serving.core import ServingCore, frame_pixels, to_predictions
from services.serving.ingress import Ingress
from services.serving.settings import ServingSettings
from shared.bus import DEFAULT_MAX_MESSAGE_BYTES, ConsumerLoop, EventProducer, Message
from shared.events import Event, FrameRaw, FrameValid, Prediction, decode, encode, utcnow
from shared.images import b64decode_strict, decode_image
from shared.sdk import FramePublisher
from shared.settings import KafkaSettings
from shared.telemetry import extract_context
from shared.topics import Topics
from tests.bench.lib.control import REPO
from tests.bench.lib.fixtures import FramePool, UntrainedModel, lifecycle_events
from tests.bench.lib.procs import cpu_s_of, thread_cpu_s, thread_names, threads_us_per_frame
from tests.bench.lib.report import fmt_share

BATCH = 128
POOL = 256
SEED = 31
CAMERAS = 4
MODEL_NAME = "bench-profile"
TOP = 15
INGEST_POLL = IngestSettings.model_fields["max_poll_records"].default
SERVING_POLL = ServingSettings.model_fields["max_poll_records"].default
SERVING_CALL = ServingSettings.model_fields["call_size"].default
TORCH_THREADS = ServingSettings.model_fields["torch_threads"].default
TOPIC_NAMES = (
    Topics.FRAMES_RAW,
    Topics.FRAMES_VALID,
    Topics.FRAMES_DLQ,
    Topics.PREDICTIONS,
    Topics.PREDICTIONS_SHADOW,
    Topics.EVENTS_DLQ,
)
CONSUMER_OVERRIDES: dict[str, Any] = {"metadata_max_age_ms": 5_000}
"""A fresh group's first assignment can miss a topic's metadata on a loaded machine (seen:
no partitions for 5 minutes, the default refresh); a short refresh lets the group recover."""
REJOIN_S = 30.0
"""And a member that has had no record for this long (seen: none for 120 s on a broker started
a minute before, the group's member then unknown to it) is replaced by another."""


@dataclass
class Measure:
    """CPU seconds of one stage over ``frames`` frames."""

    name: str
    frames: int = 0
    process_s: float = 0.0
    thread_s: float = 0.0
    broker_s: float | None = None
    """Net of the broker's idle rate over the stage's wall time (``broker_raw_s``: not)."""
    redis_s: float | None = None
    broker_raw_s: float | None = None
    redis_raw_s: float | None = None
    wall_s: float = 0.0

    def us(self, what: str = "process_s") -> float:
        value = getattr(self, what)
        return 1e6 * value / self.frames if value is not None and self.frames else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "frames": self.frames,
            "process_s": round(self.process_s, 5),
            "thread_s": round(self.thread_s, 5),
            "broker_s": None if self.broker_s is None else round(self.broker_s, 3),
            "redis_s": None if self.redis_s is None else round(self.redis_s, 3),
            "broker_raw_s": None if self.broker_raw_s is None else round(self.broker_raw_s, 3),
            "redis_raw_s": None if self.redis_raw_s is None else round(self.redis_raw_s, 3),
            "wall_s": round(self.wall_s, 4),
            "process_us_per_frame": round(self.us(), 2),
            "thread_us_per_frame": round(self.us("thread_s"), 2),
        }


@dataclass
class Meter:
    broker_pid: int | None
    redis_pid: int | None
    flush_spans: Callable[[], object]
    results: dict[str, Measure] = field(default_factory=dict)
    broker_idle: float = 0.0
    """The broker's CPU seconds per second while nothing of this run uses it (its own
    background work, and anyone else's load on it), subtracted from its stage figures."""
    redis_idle: float = 0.0

    def measure_idle(self, seconds: float) -> None:
        b0, r0 = cpu_s_of(self.broker_pid), cpu_s_of(self.redis_pid)
        w0 = time.perf_counter()
        time.sleep(seconds)
        wall = time.perf_counter() - w0
        b1, r1 = cpu_s_of(self.broker_pid), cpu_s_of(self.redis_pid)
        if b0 is not None and b1 is not None:
            self.broker_idle = (b1 - b0) / wall
        if r0 is not None and r1 is not None:
            self.redis_idle = (r1 - r0) / wall

    @contextmanager
    def stage(self, name: str, frames: int, spans: bool = False) -> Iterator[Measure]:
        """Measure the block; with ``spans``, the export of the spans it created is measured
        after it, as ``<name>: span export``."""
        m = Measure(name, frames)
        b0, r0 = cpu_s_of(self.broker_pid), cpu_s_of(self.redis_pid)
        w0, p0, t0 = time.perf_counter(), time.process_time(), time.thread_time()
        yield m
        m.process_s = time.process_time() - p0
        m.thread_s = time.thread_time() - t0
        m.wall_s = time.perf_counter() - w0
        b1, r1 = cpu_s_of(self.broker_pid), cpu_s_of(self.redis_pid)
        if b0 is not None and b1 is not None:
            m.broker_raw_s = b1 - b0
            m.broker_s = max(0.0, m.broker_raw_s - self.broker_idle * m.wall_s)
        if r0 is not None and r1 is not None:
            m.redis_raw_s = r1 - r0
            m.redis_s = max(0.0, m.redis_raw_s - self.redis_idle * m.wall_s)
        self.results[name] = m
        if spans:
            e = Measure(f"{name}: span export", frames)
            p0, t0 = time.process_time(), time.thread_time()
            self.flush_spans()
            e.process_s = time.process_time() - p0
            e.thread_s = time.thread_time() - t0
            self.results[e.name] = e

    def us(self, name: str, what: str = "process_s") -> float:
        m = self.results.get(name)
        return m.us(what) if m is not None else 0.0


# --- fixture ------------------------------------------------------------------------------


def announce(ingress: Ingress, model: UntrainedModel) -> None:
    """Make ``model`` the ingress's champion, as the lifecycle events would."""
    for event in lifecycle_events(model.trained()):
        ingress.on_lifecycle(event)
    ingress.caught_up()
    if not ingress.wait_for_champion(0):
        raise RuntimeError("the ingress did not adopt the model")


def fill(
    producer: EventProducer, kafka: KafkaSettings, n: int, start: int, pool: FramePool
) -> None:
    """Publish frames ``start`` to ``start + n`` of the pool (round) to ``frames.raw``."""
    pub = FramePublisher(kafka, producer=producer, source="bench")
    now = datetime.now(UTC)
    for i in range(start, start + n):
        pub.publish(
            pool.png[i % len(pool.png)],
            camera_id=f"cam-{i % CAMERAS + 1}",
            frame_id=f"bench-{i:08d}",
            captured_at=now,
            condition=pool.conditions[i % len(pool.png)],
        )
    producer.flush(60)


# --- stages -------------------------------------------------------------------------------


def consume(
    meter: Meter, name: str, loop: ConsumerLoop[Any], poll: int, expected: int
) -> list[list[Any]]:
    """Poll (and commit, as the loop does) until ``expected`` records; the group join and the
    first batch are not measured (a consumer that has had nothing for ``REJOIN_S`` is closed
    and another joins). Returns the records by poll."""
    consumer = loop._new_consumer()
    batches: list[list[Any]] = []
    deadline = time.monotonic() + 120
    rejoin = time.monotonic() + REJOIN_S
    try:
        while not batches:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{name}: no records after 120 s (assigned: {sorted(consumer.assignment())})"
                )
            if time.monotonic() > rejoin:
                consumer.close(autocommit=False)
                consumer, rejoin = loop._new_consumer(), time.monotonic() + REJOIN_S
            recs = [r for b in consumer.poll(timeout_ms=200, max_records=poll).values() for r in b]
            if recs:
                batches.append(recs)
                loop._commit(consumer, recs)
        seen = len(batches[0])
        with meter.stage(name, 0) as m:
            while seen < expected and time.monotonic() < deadline:
                polled = consumer.poll(timeout_ms=200, max_records=poll)
                recs = [r for b in polled.values() for r in b]
                if not recs:
                    continue
                loop._commit(consumer, recs)
                batches.append(recs[: expected - seen])
                seen += len(recs)
                m.frames += len(recs)
    finally:
        consumer.close(autocommit=False)
    if seen < expected:
        raise TimeoutError(f"{name}: {seen}/{expected} records")
    return batches


def timed_each(
    meter: Meter,
    name: str,
    items: Sequence[Any],
    fn: Callable[[Any], Any],
    warmup: int,
    rounds: int = 3,
) -> list[Any]:
    """``fn`` over ``items``; the least CPU of ``rounds`` passes is kept (other work on the
    machine only ever adds to it)."""
    for x in items[:warmup]:
        fn(x)
    return best_of(meter, name, len(items), lambda: [fn(x) for x in items], rounds)


def best_of(meter: Meter, name: str, frames: int, call: Callable[[], Any], rounds: int = 3) -> Any:
    best: Measure | None = None
    out = None
    for _ in range(rounds):
        with meter.stage(name, frames) as m:
            out = call()
        if best is None or m.process_s < best.process_s:
            best = m
    assert best is not None
    meter.results[name] = best
    return out


def loop_step(
    meter: Meter,
    name: str,
    loop: ConsumerLoop[Any],
    batches: list[list[Any]],
    captured: list[list[Message[Any]]],
    warmup: int,
) -> list[list[Message[Any]]]:
    """The consumer loop's batch step (decode, batch span, links, messages) with a handler
    that only keeps the batch."""
    for recs in batches[:warmup]:
        loop._process_batch(recs)
    captured.clear()
    with meter.stage(name, sum(map(len, batches)), spans=True):
        for recs in batches:
            loop._process_batch(recs)
    return list(captured)


def publish_stage(
    meter: Meter,
    name: str,
    producer: EventProducer,
    topic: str,
    batches: list[list[tuple[Event, Any, str]]],
) -> None:
    """``EventProducer.publish`` of each event (with its trace context and frame id), one
    flush per batch, as the handlers do."""
    for event, ctx, key in batches[0][:64]:
        producer.publish(topic, event, key=key, context=ctx)
    producer.flush(60)
    meter.flush_spans()
    with meter.stage(name, sum(map(len, batches)), spans=True):
        for batch in batches:
            for event, ctx, key in batch:
                producer.publish(
                    topic,
                    event,
                    key=key,
                    context=ctx,
                    attributes={"streamloop.frame_id": event.frame_id},  # type: ignore[attr-defined]
                )
            producer.flush(60)


def validate_stages(
    meter: Meter, frames: list[FrameRaw], policy: Policy, warmup: int
) -> list[FrameValid]:
    """The steps of ``validate`` one after the other, then ``validate`` whole; its output."""
    size = (policy.width, policy.height)
    datas = timed_each(
        meter,
        "ingest: base64 decode image_b64",
        frames,
        lambda f: b64decode_strict(f.image_b64),
        warmup,
    )
    pixels = timed_each(
        meter,
        "ingest: image decode + checks",
        [(f, d) for f, d in zip(frames, datas, strict=True)],
        lambda fd: decode_image(
            fd[1],
            content_type=fd[0].content_type,
            max_bytes=policy.max_image_bytes,
            max_pixels=policy.max_pixels,
            size=size,
            fit=policy.fit,
        ),
        warmup,
    )
    raws = timed_each(
        meter,
        "ingest: pixels to bytes",
        pixels,
        lambda a: np.ascontiguousarray(a, dtype=np.uint8).tobytes(),
        warmup,
    )
    shas = timed_each(
        meter, "ingest: sha256 of the image", datas, lambda d: hashlib.sha256(d).hexdigest(), warmup
    )
    now = utcnow()
    timed_each(
        meter,
        "ingest: FrameValid construction",
        list(zip(frames, pixels, raws, shas, strict=True)),
        lambda x: FrameValid(
            frame_id=x[0].frame_id,
            camera_id=x[0].camera_id,
            captured_at=x[0].captured_at,
            ingested_at=now,
            width=x[1].shape[1],
            height=x[1].shape[0],
            channels=x[1].shape[2],
            pixels=x[2],
            content_sha256=x[3],
            condition=x[0].condition,
            attributes=x[0].attributes,
            source="ingest",
        ),
        warmup,
    )
    return timed_each(
        meter, "ingest: validate() whole", frames, lambda f: validate(f, policy, now), warmup
    )


def ingest_stages(
    meter: Meter,
    kafka: KafkaSettings,
    producer: EventProducer,
    tracer: Any,
    ingestor: Ingestor,
    policy: Policy,
    n: int,
    warmup: int,
) -> None:
    captured: list[list[Message[FrameRaw]]] = []
    loop: ConsumerLoop[FrameRaw] = ConsumerLoop(
        kafka,
        group_id=f"{kafka.topic_prefix}stages-ingest",
        topics=[Topics.FRAMES_RAW],
        event_type=FrameRaw,
        producer=producer,
        batch_handler=captured.append,
        tracer=tracer,
        max_poll_records=INGEST_POLL,
        client_id="ingest",
        **CONSUMER_OVERRIDES,
    )
    records = consume(meter, "ingest: Kafka consume frames.raw", loop, INGEST_POLL, n)
    flat = [r for b in records for r in b]
    timed_each(
        meter,
        "ingest: decode FrameRaw",
        flat,
        lambda r: decode(r.value, FrameRaw, max_bytes=DEFAULT_MAX_MESSAGE_BYTES),
        warmup,
    )
    batches = loop_step(meter, "ingest: consumer loop step", loop, records, captured, 2)
    frames = [m.event for b in batches for m in b]
    valid = validate_stages(meter, frames, policy, warmup)
    for b in batches[:2]:
        ingestor.process(b)
    best_of(
        meter,
        "ingest: Ingestor.process whole",
        len(frames),
        lambda: [ingestor.process(b) for b in batches],
    )
    msgs = [m for b in batches for m in b]
    contexts = timed_each(
        meter, "ingest: extract trace context", msgs, lambda m: extract_context(m.headers), warmup
    )
    timed_each(meter, "ingest: encode FrameValid", valid, encode, warmup)
    out: list[list[tuple[Event, Any, str]]] = []
    i = 0
    for b in batches:
        out.append([(valid[i + j], contexts[i + j], valid[i + j].camera_id) for j in range(len(b))])
        i += len(b)
    publish_stage(meter, "ingest: publish + flush frames.valid", producer, Topics.FRAMES_VALID, out)
    handle = make_handler(ingestor, producer)
    with meter.stage("ingest: handler whole", len(frames), spans=True):
        for b in batches:
            handle(b)
            producer.flush(60)


def serving_stages(
    meter: Meter,
    kafka: KafkaSettings,
    producer: EventProducer,
    tracer: Any,
    model: UntrainedModel,
    n: int,
    warmup: int,
) -> None:
    captured: list[list[Message[FrameValid]]] = []
    loop: ConsumerLoop[FrameValid] = ConsumerLoop(
        kafka,
        group_id=f"{kafka.topic_prefix}stages-serving",
        topics=[Topics.FRAMES_VALID],
        event_type=FrameValid,
        producer=producer,
        batch_handler=captured.append,
        tracer=tracer,
        max_poll_records=SERVING_POLL,
        client_id="serving",
        **CONSUMER_OVERRIDES,
    )
    records = consume(meter, "serving: Kafka consume frames.valid", loop, SERVING_POLL, n)
    flat = [r for b in records for r in b]
    timed_each(
        meter,
        "serving: decode FrameValid",
        flat,
        lambda r: decode(r.value, FrameValid, max_bytes=DEFAULT_MAX_MESSAGE_BYTES),
        warmup,
    )
    batches = loop_step(meter, "serving: consumer loop step", loop, records, captured, 2)
    frames = [m.event for b in batches for m in b]
    nframes = len(frames)
    for b in batches[:2]:
        frame_pixels([m.event for m in b])
    arrays = best_of(
        meter,
        "serving: frame_pixels whole",
        nframes,
        lambda: [frame_pixels([m.event for m in b]) for b in batches],
    )
    pixels = np.concatenate(arrays)
    chunks = [pixels[i : i + BATCH] for i in range(0, len(pixels), BATCH)]
    cores: dict[str, ServingCore] = {}
    for runtime in ("onnx", "eager"):
        core = ServingCore(model.store, runtime=runtime, threads=TORCH_THREADS)
        served = core.model(model.ref)[0].name
        cores[runtime] = core
        for c in chunks[:3]:
            core.probabilities(model.ref, c)
        best_of(
            meter,
            f"serving: model {runtime} (runtime {served})",
            nframes,
            lambda core=core: [core.probabilities(model.ref, c) for c in chunks],
        )
    probs = [cores["onnx"].probabilities(model.ref, c) for c in chunks]
    classes = model.spec.classes
    for c, p in zip(chunks[:2], probs[:2], strict=True):
        to_predictions(frames[: len(c)], p, classes, model.ref, served_at=utcnow())

    def predict_all() -> list[Prediction]:
        preds: list[Prediction] = []
        for k, p in enumerate(probs):
            part = frames[k * BATCH : k * BATCH + len(p)]
            preds.extend(to_predictions(part, p, classes, model.ref, served_at=utcnow()))
        return preds

    preds: list[Prediction] = best_of(meter, "serving: to_predictions", nframes, predict_all)
    msgs = [m for b in batches for m in b]
    contexts = timed_each(
        meter, "serving: extract trace context", msgs, lambda m: extract_context(m.headers), warmup
    )
    timed_each(meter, "serving: JSON encode Prediction", preds, encode, warmup)
    out = [
        [(preds[i + j], contexts[i + j], preds[i + j].camera_id) for j in range(len(c))]
        for i, c in ((k * BATCH, c) for k, c in enumerate(chunks))
    ]
    publish_stage(meter, "serving: publish + flush predictions", producer, Topics.PREDICTIONS, out)
    ingress = Ingress(
        MODEL_NAME,
        backend=cores["onnx"],
        verifier=cores["onnx"],
        producer=producer,
        call_size=BATCH,
    )
    announce(ingress, model)
    for b in batches[:2]:
        ingress.handle(b)
    producer.flush(60)
    meter.flush_spans()
    with meter.stage("serving: Ingress.handle whole (onnx)", nframes, spans=True):
        for b in batches:
            ingress.handle(b)
            producer.flush(60)


# --- service loops, whole and profiled ----------------------------------------------------


def service_loop(
    kafka: KafkaSettings,
    group: str,
    topic: str,
    event_type: type[Event],
    handler: Callable[[list[Message[Any]]], Any],
    producer: EventProducer,
    tracer: Any,
    poll: int,
    expected: int,
    client_id: str,
    profile: cProfile.Profile | None = None,
) -> dict[str, Any]:
    """``ConsumerLoop.run`` with ``handler`` until ``expected`` records were handled. CPU of the
    process from the first handled batch to the loop's return (its final flush included)."""
    state: dict[str, Any] = {"seen": 0, "p0": None, "handler_s": 0.0, "batches": 0}
    loop: ConsumerLoop[Any]

    def counting(batch: list[Message[Any]]) -> Any:
        if state["p0"] is None:
            state["p0"] = time.process_time()
            state["w0"] = time.perf_counter()
            state["threads0"] = thread_cpu_s()
            if profile is not None:
                profile.enable()
        h0 = time.process_time()
        refused = handler(batch)
        state["handler_s"] += time.process_time() - h0
        state["seen"] += len(batch)
        state["batches"] += 1
        if state["seen"] >= expected and "threads1" not in state:
            # Before the loop closes its clients, whose threads then end.
            state["threads1"] = thread_cpu_s()
            state["names"] = thread_names()
            loop.stop()
        return refused

    loop = ConsumerLoop(
        kafka,
        group_id=group,
        topics=[topic],
        event_type=event_type,
        producer=producer,
        batch_handler=counting,
        tracer=tracer,
        max_poll_records=poll,
        client_id=client_id,
        **CONSUMER_OVERRIDES,
    )
    stopper = threading.Timer(180, loop.stop)
    stopper.start()
    try:
        loop.run(max_idle_s=60)
    finally:
        stopper.cancel()
        if profile is not None:
            profile.disable()
    if state["p0"] is None:
        raise TimeoutError(f"{group}: no records handled")
    cpu = time.process_time() - state["p0"]
    return {
        "frames": state["seen"],
        "batches": state["batches"],
        "cpu_s": round(cpu, 4),
        "wall_s": round(time.perf_counter() - state["w0"], 4),
        "cpu_us_per_frame": round(1e6 * cpu / max(1, state["seen"]), 1),
        "handler_us_per_frame": round(1e6 * state["handler_s"] / max(1, state["seen"]), 1),
        "loop_us_per_frame": round(1e6 * (cpu - state["handler_s"]) / max(1, state["seen"]), 1),
        "threads_us_per_frame_until_last_batch": threads_us_per_frame(
            state["threads0"],
            state.get("threads1") or thread_cpu_s(),
            state.get("names") or thread_names(),
            state["seen"],
        ),
    }


def top_functions(profile: cProfile.Profile, frames: int, top: int = TOP) -> dict[str, Any]:
    stats = pstats.Stats(profile)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in sorted(
        raw.items(), key=lambda kv: kv[1][2], reverse=True
    )[:top]:
        where = filename
        for marker in ("site-packages/", f"{REPO}/"):
            if marker in where:
                where = where.split(marker, 1)[1]
        rows.append(
            {
                "function": f"{where}:{line}({func})" if line else func,
                "calls": nc,
                "calls_per_frame": round(nc / frames, 2),
                "tottime_us_per_frame": round(1e6 * tt / frames, 1),
                "cumtime_us_per_frame": round(1e6 * ct / frames, 1),
                "share_of_profiled": round(tt / total, 4) if total else 0.0,
            }
        )
    return {"frames": frames, "profiled_s": round(total, 4), "top": rows}


# --- report -------------------------------------------------------------------------------


StageRow = tuple[str, str, float]
"""(stage, side, CPU µs per frame); a side ending in ``*`` is not counted in the total."""


def table_rows(meter: Meter) -> list[StageRow]:
    """Leaves that add up to the path; derived rows are the difference between a whole and
    the parts measured inside it. Last, the eager model, not counted in the total."""
    u = meter.us
    i, s = "ingest: ", "serving: "
    broker = [
        ("broker: frames.raw in (camera publish)", "camera: publish frames.raw"),
        ("broker: frames.raw fetch + commit", i + "Kafka consume frames.raw"),
        ("broker: frames.valid in", i + "publish + flush frames.valid"),
        ("broker: frames.valid fetch + commit", s + "Kafka consume frames.valid"),
        ("broker: predictions in", s + "publish + flush predictions"),
    ]
    eager = _model_stage(meter, "eager")
    return [
        *_ingest_rows(meter),
        *_serving_rows(meter),
        *[(label, "broker", u(k, "broker_s")) for label, k in broker],
        ("Redis: duplicate claims", "redis", u(i + "Ingestor.process whole", "redis_s")),
        (f"(not in total) model {eager.removeprefix(s + 'model ')}", "serving*", u(eager)),
    ]


def _model_stage(meter: Meter, runtime: str) -> str:
    """The name of the model stage run with ``runtime`` ("" when it was not measured)."""
    return next((k for k in meter.results if k.startswith(f"serving: model {runtime}")), "")


def _span_export_us(meter: Meter, side: str) -> float:
    """CPU µs per frame of exporting the spans of the stages of ``side`` (wholes excluded)."""
    return sum(
        meter.us(k)
        for k in meter.results
        if k.endswith(": span export") and "whole" not in k and k.startswith(side)
    )


IMAGE_DECODE = "image decode + checks"
"""Ingest's decoding of the camera's image (``validate: <this>`` in the table): with the model
and the broker, the floor of the frame path (docs/benchmarks.md, "The floor on two cores")."""


def _ingest_rows(meter: Meter) -> list[StageRow]:
    u = meter.us
    i = "ingest: "
    rows: list[StageRow] = []
    validate_parts = [
        "base64 decode image_b64",
        IMAGE_DECODE,
        "pixels to bytes",
        "sha256 of the image",
        "FrameValid construction",
    ]
    pub_i = i + "publish + flush frames.valid"
    rows += [
        (
            "Kafka consume frames.raw (poll, fetch parsing, commit)",
            "ingest",
            u(i + "Kafka consume frames.raw"),
        ),
        ("JSON decode + pydantic validation of FrameRaw", "ingest", u(i + "decode FrameRaw")),
        (
            "consumer loop: batch span, trace links, Message",
            "ingest",
            u(i + "consumer loop step") - u(i + "decode FrameRaw"),
        ),
    ]
    rows += [(f"validate: {p}", "ingest", u(i + p)) for p in validate_parts]
    rows += [
        (
            "validate: rest (camera check, size check)",
            "ingest",
            u(i + "validate() whole") - sum(u(i + p) for p in validate_parts),
        ),
        (
            "Ingestor: Redis duplicate claims (client side)",
            "ingest",
            u(i + "Ingestor.process whole") - u(i + "validate() whole"),
        ),
        ("trace context from record headers", "ingest", u(i + "extract trace context")),
        ("encode FrameValid (binary: JSON header + pixels)", "ingest", u(i + "encode FrameValid")),
        (
            "produce: span, headers, send() (calling thread)",
            "ingest",
            u(pub_i, "thread_s") - u(i + "encode FrameValid"),
        ),
        (
            "produce: kafka-python sender thread + flush",
            "ingest",
            u(pub_i) - u(pub_i, "thread_s"),
        ),
        (
            "handler: rest (metrics, outcome loop)",
            "ingest",
            u(i + "handler whole")
            - u(i + "Ingestor.process whole")
            - u(i + "extract trace context")
            - u(pub_i),
        ),
        ("span export (JSONL)", "ingest", _span_export_us(meter, i)),
    ]
    return rows


def _serving_rows(meter: Meter) -> list[StageRow]:
    u = meter.us
    s = "serving: "
    pub_s = s + "publish + flush predictions"
    onnx = _model_stage(meter, "onnx")
    return [
        (
            "Kafka consume frames.valid (poll, fetch parsing, commit)",
            "serving",
            u(s + "Kafka consume frames.valid"),
        ),
        (
            "decode FrameValid (JSON header, pydantic, pixels)",
            "serving",
            u(s + "decode FrameValid"),
        ),
        (
            "consumer loop: batch span, trace links, Message",
            "serving",
            u(s + "consumer loop step") - u(s + "decode FrameValid"),
        ),
        (
            "batching: join pixels into (N, 64, 64, 3), checks",
            "serving",
            u(s + "frame_pixels whole"),
        ),
        (f"MODEL: {onnx.removeprefix(s + 'model ')}, batch {BATCH}", "serving", u(onnx)),
        ("Prediction construction (to_predictions)", "serving", u(s + "to_predictions")),
        ("trace context from record headers", "serving", u(s + "extract trace context")),
        ("JSON encode Prediction", "serving", u(s + "JSON encode Prediction")),
        (
            "produce: span, headers, send() (calling thread)",
            "serving",
            u(pub_s, "thread_s") - u(s + "JSON encode Prediction"),
        ),
        ("produce: kafka-python sender thread + flush", "serving", u(pub_s) - u(pub_s, "thread_s")),
        (
            "ingress: rest (grouping, histograms, counters)",
            "serving",
            u(s + "Ingress.handle whole (onnx)")
            - u(s + "frame_pixels whole")
            - u(onnx)
            - u(s + "to_predictions")
            - u(s + "extract trace context")
            - u(pub_s),
        ),
        ("span export (JSONL)", "serving", _span_export_us(meter, s)),
    ]


def markdown(rows: list[StageRow], model_label: str) -> tuple[str, dict[str, Any]]:
    counted = [r for r in rows if not r[1].endswith("*")]
    total = sum(r[2] for r in counted)
    in_process = sum(r[2] for r in counted if r[1] in ("ingest", "serving"))
    model = sum(r[2] for r in counted if r[0].startswith("MODEL"))
    floor = model + sum(
        r[2] for r in counted if r[1] == "broker" or r[0] == f"validate: {IMAGE_DECODE}"
    )
    alt = next((r[2] for r in rows if r[1].endswith("*")), 0.0)
    lines = ["| stage | side | CPU µs/frame | share |", "|:---|:---|---:|---:|"]
    for stage, side, us in rows:
        lines.append(
            f"| {stage} | {side} | {us:,.1f} | {'' if '*' in side else fmt_share(us, total)} |"
        )
    by_side: dict[str, float] = {}
    for _, side, us in counted:
        by_side[side] = by_side.get(side, 0.0) + us
    for side, us in by_side.items():
        lines.append(f"| subtotal | {side} | {us:,.1f} | {fmt_share(us, total)} |")
    lines.append(f"| **total** | all | **{total:,.1f}** | 100 % |")
    lines.append(
        f"| **model share** ({model_label}) | serving | {model:,.1f} | "
        f"**{fmt_share(model, total)}** (of this process alone: {fmt_share(model, in_process)}) |"
    )
    lines.append(
        f"| **floor** (the model, the image decode, the broker) | all | {floor:,.1f} | "
        f"{fmt_share(floor, total)} |"
    )
    with_eager = total - model + alt
    lines.append(
        f"| model share with eager instead | serving | {alt:,.1f} | {fmt_share(alt, with_eager)} |"
    )
    summary = {
        "total_us_per_frame": round(total, 1),
        "this_process_us_per_frame": round(in_process, 1),
        "by_side_us_per_frame": {k: round(v, 1) for k, v in by_side.items()},
        "model_us_per_frame": round(model, 1),
        "floor_us_per_frame": round(floor, 1),
        "model_share": round(model / total, 4) if total else None,
        "model_share_of_this_process": round(model / in_process, 4) if in_process else None,
        "eager_model_us_per_frame": round(alt, 1),
        "eager_model_share": round(alt / with_eager, 4) if with_eager else None,
    }
    return "\n".join(lines), summary


def top_markdown(side: str, prof: dict[str, Any]) -> str:
    lines = [
        f"top {TOP} functions by own time, {side} loop under cProfile ({prof['frames']} frames)",
        "",
        "| function | calls/frame | own CPU µs/frame | cum µs/frame | share of profiled |",
        "|:---|---:|---:|---:|---:|",
    ]
    for r in prof["top"]:
        lines.append(
            f"| `{r['function']}` | {r['calls_per_frame']:g} | {r['tottime_us_per_frame']:,.1f} "
            f"| {r['cumtime_us_per_frame']:,.1f} | {100 * r['share_of_profiled']:.1f} % |"
        )
    return "\n".join(lines)


def loop_lines(loops: dict[str, Any], by_side_us: dict[str, float]) -> list[str]:
    """Each side's service loop, unprofiled, against the sum of its stages."""
    lines: list[str] = []
    for side in ("ingest", "serving"):
        if side not in loops:
            continue
        loop = loops[side]
        lines.append(
            f"\n{side} service loop whole, unprofiled: {loop['cpu_us_per_frame']:,.1f} "
            f"CPU µs/frame in this process (handler {loop['handler_us_per_frame']:,.1f}"
            f", poll/decode/commit {loop['loop_us_per_frame']:,.1f}; "
            f"{loop['batches']} batches); "
            f"the stages above add up to {by_side_us.get(side, 0.0):,.1f}"
        )
        threads = loop.get("threads_us_per_frame_until_last_batch", {})
        lines.append(
            "  by thread (CPU µs/frame, 10 ms ticks): "
            + ", ".join(f"{k} {v:,.0f}" for k, v in threads.items())
        )
    return lines


# --- the whole run ------------------------------------------------------------------------


def service_loops(
    kafka: KafkaSettings,
    producer: EventProducer,
    tracer: Any,
    ingestor: Ingestor,
    model: UntrainedModel,
    n: int,
    flush_spans: Callable[[], object],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each side's ``ConsumerLoop.run`` over the ``n`` records, unprofiled, then under cProfile
    timed by this thread's CPU clock: (loops, profiles) by side."""
    core = ServingCore(model.store, runtime="onnx", threads=TORCH_THREADS)
    ingress = Ingress(
        MODEL_NAME, backend=core, verifier=core, producer=producer, call_size=SERVING_CALL
    )
    announce(ingress, model)
    sides: list[tuple[str, str, type[Event], Callable[..., Any], int]] = [
        ("ingest", Topics.FRAMES_RAW, FrameRaw, make_handler(ingestor, producer), INGEST_POLL),
        ("serving", Topics.FRAMES_VALID, FrameValid, ingress.handle, SERVING_POLL),
    ]
    loops: dict[str, Any] = {}
    profiles: dict[str, Any] = {}
    for side, topic, etype, handler, poll in sides:
        for mode in ("whole", "profiled"):
            prof = cProfile.Profile(time.thread_time) if mode == "profiled" else None
            group = f"{kafka.topic_prefix}{side}-{mode}"
            out = service_loop(
                kafka, group, topic, etype, handler, producer, tracer, poll, n, side, prof
            )
            flush_spans()
            if prof is None:
                loops[side] = out
            else:
                profiles[side] = top_functions(prof, out["frames"])
                profiles[side]["loop"] = out
    return loops, profiles
