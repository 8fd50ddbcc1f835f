"""Benchmark: CPU time per frame of every stage of the frame path, from frames.raw to predictions.

    python -m tests.bench.bench_profile [--frames N] [--sample-ratio F] [--quick]

N PNG 64x64 frames (simulator renderer, a pool of 256 distinct crops) are published to a
``frames.raw`` of the run's own (``bench-profile-<time>-<pid>.``) with the SDK's
``FramePublisher``. Then, in this process, one stage after the other, each stage is run over
all N frames after a warm-up and its CPU time is taken with ``time.process_time`` (every
thread of this process: kafka-python's sender, the span exporter) and ``time.thread_time``
(the calling thread alone); stages without Kafka output keep the least of 3 passes. Rows
named "rest" are a whole minus the parts measured inside it, so noise can make them
slightly negative. Every stage calls the project's own code:

ingest side
    Kafka consume of ``frames.raw`` (poll and commit with the ingest consumer loop's client
    settings); ``shared.events.decode`` of ``FrameRaw`` (JSON and pydantic); the rest of the
    consumer loop's batch step (batch span, trace links, ``Message``); the steps of
    ``services.ingest.logic.validate``: base64 of ``image_b64``, ``decode_image`` (PNG decode
    and checks), the raw pixels' bytes, sha256, ``FrameValid`` construction, and
    ``validate`` whole (its rest: the camera check); ``Ingestor.process`` (adds the Redis
    duplicate claims); ``extract_context`` of the record headers; ``encode`` of
    ``FrameValid``; ``EventProducer.publish`` and ``flush`` to ``frames.valid``; the ingest
    handler (``make_handler``) whole (its rest: metrics);
serving side
    Kafka consume of ``frames.valid``; ``decode`` of ``FrameValid``; the consumer loop's batch
    step; ``frame_pixels`` (the frames' pixels joined into one batch array);
    ``ServingCore.probabilities`` on batches of 128 with the ``onnx`` runtime and, separately,
    ``eager``; ``to_predictions``;
    ``encode`` of ``Prediction``; publish and flush to ``predictions``; ``Ingress.handle``
    whole with the in-process backend (its rest: grouping, metrics).

Spans go to a JSONL file as in the services (sample ratio ``--sample-ratio``, default 1.0:
every record traced); their export is flushed, and counted, at the end of each stage. The
broker's CPU (the process listening on the bootstrap port) and Redis's are read from /proc
around each stage (10 ms ticks), less their rate over 3 idle seconds measured first (after
256 warm-up frames through the broker); anyone else using them at the time still counts.

Then each side's service loop runs on the same topics, as the services run it
(``ConsumerLoop.run`` with the ingest handler, then with ``Ingress.handle``; the real
producer; serving with the local backend, ``onnx``, its default call size): once unprofiled
(CPU per frame of the whole loop, split into handler and the rest and by thread, a check on
the sum of the stages) and once under cProfile timed by this thread's CPU clock (top 15
functions by own CPU time; the profiler sees only this thread and slows Python code).

A measurement, not a test: it always exits 0 (a part that failed is reported). The run's topics are
deleted at the end. Figures go to ``var/bench/profile.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import logging
import os
import pstats
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kafka.errors import KafkaError
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from services.ingest.__main__ import make_handler
from services.ingest.logic import Ingestor, Policy, validate
from services.ingest.settings import IngestSettings
from services.serving.core import ModelRef, ServingCore, frame_pixels, to_predictions
from services.serving.ingress import Ingress
from services.serving.settings import ServingSettings
from services.simulator.render import CONDITIONS
from shared.artifacts import ArtifactStore
from shared.bus import DEFAULT_MAX_MESSAGE_BYTES, ConsumerLoop, EventProducer, Message
from shared.events import (
    Event,
    ExportRef,
    FrameRaw,
    FrameValid,
    ModelLifecycle,
    Prediction,
    decode,
    encode,
    utcnow,
)
from shared.images import b64decode_strict, decode_image, encode_image
from shared.kafka_admin import KafkaAdmin
from shared.model import ModelSpec, build_model, example_pixels, load_model
from shared.redis_store import RedisClaims, connect
from shared.runtimes import EXPORT_KIND, EXPORT_SUFFIX, export_model
from shared.sdk import FramePublisher
from shared.settings import (
    KafkaSettings,
    RedisSettings,
    TaskSettings,
    TelemetrySettings,
    default_var_dir,
)
from shared.telemetry import JsonlSpanExporter, extract_context, setup_telemetry
from shared.topics import TOPICS, Topics, provision
from tests.synthetic import render_examples, trained_event

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
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONSUMER_OVERRIDES: dict[str, Any] = {"metadata_max_age_ms": 5_000}
"""A fresh group's first assignment can miss a topic's metadata on a loaded machine (seen:
no partitions for 5 minutes, the default refresh); a short refresh lets the group recover."""


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# --- CPU accounting -----------------------------------------------------------------------


def listening_pid(port: int) -> int | None:
    """The process holding a listening TCP socket on ``port`` (None when not found)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry.name}/fd/{fd}") in inodes:
                    return int(entry.name)
            except OSError:
                continue
    return None


def cpu_ticks(pid: int | None) -> int | None:
    """User + system CPU of ``pid`` so far, in clock ticks."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
        rest = stat[stat.rindex(")") + 2 :].split()
        return int(rest[11]) + int(rest[12])
    except (OSError, ValueError, IndexError):
        return None


def thread_ticks() -> dict[int, int]:
    """User + system CPU of each thread of this process so far, in clock ticks, by native id."""
    out: dict[int, int] = {}
    for entry in os.scandir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{entry.name}/stat", encoding="utf-8") as f:
                stat = f.read()
            rest = stat[stat.rindex(")") + 2 :].split()
            out[int(entry.name)] = int(rest[11]) + int(rest[12])
        except (OSError, ValueError, IndexError):
            continue
    return out


def thread_names() -> dict[int, str]:
    return {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}


def by_thread(
    before: dict[int, int], after: dict[int, int], names: dict[int, str], frames: int
) -> dict[str, float]:
    """CPU µs per frame of each thread between two ``thread_ticks`` (threads without a Python
    name, such as ONNX Runtime's or torch's, are summed as native)."""
    out: dict[str, float] = {}
    for tid, ticks in after.items():
        delta = ticks - before.get(tid, 0)
        if delta > 0:
            name = names.get(tid, "native threads")
            out[name] = out.get(name, 0.0) + delta / CLK_TCK
    ranked = sorted(out.items(), key=lambda kv: -kv[1])
    return {k: round(1e6 * v / max(1, frames), 1) for k, v in ranked}


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
        b0, r0 = cpu_ticks(self.broker_pid), cpu_ticks(self.redis_pid)
        w0 = time.perf_counter()
        time.sleep(seconds)
        wall = time.perf_counter() - w0
        b1, r1 = cpu_ticks(self.broker_pid), cpu_ticks(self.redis_pid)
        if b0 is not None and b1 is not None:
            self.broker_idle = (b1 - b0) / CLK_TCK / wall
        if r0 is not None and r1 is not None:
            self.redis_idle = (r1 - r0) / CLK_TCK / wall

    @contextmanager
    def stage(self, name: str, frames: int, spans: bool = False) -> Iterator[Measure]:
        """Measure the block; with ``spans``, the export of the spans it created is measured
        after it, as ``<name>: span export``."""
        m = Measure(name, frames)
        b0, r0 = cpu_ticks(self.broker_pid), cpu_ticks(self.redis_pid)
        w0, p0, t0 = time.perf_counter(), time.process_time(), time.thread_time()
        yield m
        m.process_s = time.process_time() - p0
        m.thread_s = time.thread_time() - t0
        m.wall_s = time.perf_counter() - w0
        b1, r1 = cpu_ticks(self.broker_pid), cpu_ticks(self.redis_pid)
        if b0 is not None and b1 is not None:
            m.broker_raw_s = (b1 - b0) / CLK_TCK
            m.broker_s = max(0.0, m.broker_raw_s - self.broker_idle * m.wall_s)
        if r0 is not None and r1 is not None:
            m.redis_raw_s = (r1 - r0) / CLK_TCK
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


@dataclass
class Model:
    store: ArtifactStore
    ref: ModelRef
    spec: ModelSpec
    onnx_error: str | None


def make_model(root: Path) -> Model:
    """An untrained network of the shared architecture (what it computes costs the same as a
    trained one's), stored with its ONNX export and announced as serving would see it."""
    task = TaskSettings()
    spec = ModelSpec(
        classes=task.classes, image_height=task.image_height, image_width=task.image_width
    )
    torch.manual_seed(SEED)
    store = ArtifactStore(root)
    art = store.put_weights(build_model(spec).state_dict(), spec.to_metadata({"seed": str(SEED)}))
    network, _ = load_model(store, art.uri, art.sha256)
    exports: dict[str, ExportRef] = {}
    error = None
    try:
        data = export_model(network, spec, "onnx")
        stored = store.put_bytes(data, EXPORT_KIND, EXPORT_SUFFIX["onnx"])
        exports["onnx"] = ExportRef(uri=stored.uri, sha256=stored.sha256)
    except Exception as exc:  # noqa: BLE001 - eager is still measured
        error = f"{type(exc).__name__}: {exc}"
    ref = ModelRef(
        MODEL_NAME, art.sha256[:12], art.uri, art.sha256, exports=tuple(sorted(exports.items()))
    )
    return Model(store, ref, spec, error)


def announce(ingress: Ingress, model: Model) -> None:
    trained = trained_event(
        MODEL_NAME, model.ref.version, model.ref.uri, model.ref.sha256, code_version="bench"
    ).model_copy(update={"exports": dict(model.ref.exports)})
    ingress.on_lifecycle(
        ModelLifecycle(
            model_name=MODEL_NAME,
            action="registered",
            model_version=model.ref.version,
            details=trained.model_dump(mode="json"),
        )
    )
    ingress.on_lifecycle(
        ModelLifecycle(
            model_name=MODEL_NAME,
            action="alias_set",
            alias="champion",
            model_version=model.ref.version,
        )
    )
    if not ingress.wait_for_champion(0):
        raise RuntimeError("the ingress did not adopt the model")


def png_pool() -> tuple[list[bytes], list[str]]:
    rendered = render_examples(
        POOL, seed=SEED, condition=lambda i: CONDITIONS[i % len(CONDITIONS)], prefix="pool"
    )
    pngs = [encode_image(example_pixels(e.pixels_b64, 64, 64, 3), "image/png") for e in rendered]
    return pngs, [e.condition or "day" for e in rendered]


def fill(producer: EventProducer, kafka: KafkaSettings, n: int, start: int, pool: Any) -> None:
    pngs, conditions = pool
    pub = FramePublisher(kafka, producer=producer, source="bench")
    now = datetime.now(UTC)
    for i in range(start, start + n):
        pub.publish(
            pngs[i % POOL],
            camera_id=f"cam-{i % CAMERAS + 1}",
            frame_id=f"bench-{i:08d}",
            captured_at=now,
            condition=conditions[i % POOL],
        )
    producer.flush(60)


# --- stages -------------------------------------------------------------------------------


def consume(
    meter: Meter, name: str, loop: ConsumerLoop[Any], poll: int, expected: int
) -> list[list[Any]]:
    """Poll (and commit, as the loop does) until ``expected`` records; the group join and the
    first batch are not measured. Returns the records by poll."""
    consumer = loop._new_consumer()
    batches: list[list[Any]] = []
    deadline = time.monotonic() + 120
    try:
        while not batches:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: no records after 120 s")
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
            size=size,
            resize=policy.resize,
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
    valid = timed_each(
        meter, "ingest: validate() whole", frames, lambda f: validate(f, policy, now), warmup
    )
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
    model: Model,
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
        core = ServingCore(model.store, runtime=runtime, threads=TORCH_THREADS)  # type: ignore[arg-type]
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
            state["threads0"] = thread_ticks()
            if profile is not None:
                profile.enable()
        h0 = time.process_time()
        refused = handler(batch)
        state["handler_s"] += time.process_time() - h0
        state["seen"] += len(batch)
        state["batches"] += 1
        if state["seen"] >= expected and "threads1" not in state:
            # Before the loop closes its clients, whose threads then end.
            state["threads1"] = thread_ticks()
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
        "threads_us_per_frame_until_last_batch": by_thread(
            state["threads0"],
            state.get("threads1") or thread_ticks(),
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
        for marker in ("site-packages/", str(Path(__file__).resolve().parents[2]) + "/"):
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


def table_rows(meter: Meter) -> list[tuple[str, str, float]]:
    """(stage, side, CPU us per frame): leaves that add up to the path; derived rows are the
    difference between a whole and the parts measured inside it."""
    u = meter.us
    span = [k for k in meter.results if k.endswith(": span export") and "whole" not in k]

    def export(side: str) -> float:
        return sum(u(k) for k in span if k.startswith(side))

    rows: list[tuple[str, str, float]] = []
    i = "ingest: "
    validate_parts = [
        "base64 decode image_b64",
        "image decode + checks",
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
        ("span export (JSONL)", "ingest", export(i)),
    ]
    s = "serving: "
    pub_s = s + "publish + flush predictions"
    onnx = next((k for k in meter.results if k.startswith(s + "model onnx")), "")
    eager = next((k for k in meter.results if k.startswith(s + "model eager")), "")
    rows += [
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
        ("span export (JSONL)", "serving", export(s)),
    ]
    broker = [
        ("broker: frames.raw in (camera publish)", "camera: publish frames.raw"),
        ("broker: frames.raw fetch + commit", i + "Kafka consume frames.raw"),
        ("broker: frames.valid in", pub_i),
        ("broker: frames.valid fetch + commit", s + "Kafka consume frames.valid"),
        ("broker: predictions in", pub_s),
    ]
    rows += [(label, "broker", u(k, "broker_s")) for label, k in broker]
    rows.append(("Redis: duplicate claims", "redis", u(i + "Ingestor.process whole", "redis_s")))
    rows.append((f"(not in total) model {eager.removeprefix(s + 'model ')}", "serving*", u(eager)))
    return rows


def share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "n/a"


def markdown(rows: list[tuple[str, str, float]], model_label: str) -> tuple[str, dict[str, Any]]:
    counted = [r for r in rows if not r[1].endswith("*")]
    total = sum(r[2] for r in counted)
    in_process = sum(r[2] for r in counted if r[1] in ("ingest", "serving"))
    model = sum(r[2] for r in counted if r[0].startswith("MODEL"))
    alt = next((r[2] for r in rows if r[1].endswith("*")), 0.0)
    lines = ["| stage | side | CPU µs/frame | share |", "|:---|:---|---:|---:|"]
    for stage, side, us in rows:
        lines.append(
            f"| {stage} | {side} | {us:,.1f} | {'' if '*' in side else share(us, total)} |"
        )
    by_side: dict[str, float] = {}
    for _, side, us in counted:
        by_side[side] = by_side.get(side, 0.0) + us
    for side, us in by_side.items():
        lines.append(f"| subtotal | {side} | {us:,.1f} | {share(us, total)} |")
    lines.append(f"| **total** | all | **{total:,.1f}** | 100 % |")
    lines.append(
        f"| **model share** ({model_label}) | serving | {model:,.1f} | "
        f"**{share(model, total)}** (of this process alone: {share(model, in_process)}) |"
    )
    with_eager = total - model + alt
    lines.append(
        f"| model share with eager instead | serving | {alt:,.1f} | {share(alt, with_eager)} |"
    )
    summary = {
        "total_us_per_frame": round(total, 1),
        "this_process_us_per_frame": round(in_process, 1),
        "by_side_us_per_frame": {k: round(v, 1) for k, v in by_side.items()},
        "model_us_per_frame": round(model, 1),
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


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_profile", description=__doc__)
    ap.add_argument("--frames", type=int, default=5000)
    ap.add_argument("--sample-ratio", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="1000 frames")
    args = ap.parse_args(argv)
    if args.quick:
        args.frames = 1000
    n = max(args.frames, 2 * SERVING_POLL)
    warmup = min(256, n // 4)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.ERROR)
    torch.set_num_threads(TORCH_THREADS)
    started = time.perf_counter()
    load_start = load_average()
    prefix = f"bench-profile-{int(time.time())}-{os.getpid()}."
    kafka = KafkaSettings(topic_prefix=prefix)
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    telemetry = setup_telemetry(
        "bench-profile", TelemetrySettings(exporter="none", sample_ratio=args.sample_ratio)
    )
    # The services' exporter and queue; the export of each stage's spans is deferred to the
    # stage's end so that it can be counted on its own.
    telemetry.provider.add_span_processor(
        BatchSpanProcessor(
            JsonlSpanExporter(work / "traces" / "bench-profile.jsonl"),
            max_queue_size=1 << 17,
            max_export_batch_size=1 << 17,
            schedule_delay_millis=3_600_000,
        )
    )
    tracer = telemetry.tracer
    _host, _, port = kafka.bootstrap_servers.split(",")[0].rpartition(":")
    redis_port = int(RedisSettings().url.rsplit(":", 1)[1].split("/")[0])
    meter = Meter(
        listening_pid(int(port)), listening_pid(redis_port), telemetry.provider.force_flush
    )
    print(
        f"profile: {n} PNG frames, sample ratio {args.sample_ratio}, torch threads "
        f"{TORCH_THREADS}, broker pid {meter.broker_pid}, redis pid {meter.redis_pid}, "
        f"load {load_start}"
    )
    results: dict[str, Any] = {"errors": []}
    created = [prefix + t for t in TOPIC_NAMES]
    producer: EventProducer | None = None
    try:
        provision(kafka, [TOPICS[t] for t in TOPIC_NAMES])
        t = time.perf_counter()
        model = make_model(work / "artifacts")
        print(f"model stored, ONNX export in {time.perf_counter() - t:.1f} s")
        if model.onnx_error:
            results["errors"].append(f"onnx export: {model.onnx_error}")
            print(f"warning: no ONNX export ({model.onnx_error}); serving falls back to eager")
        pool = png_pool()
        results["png_bytes_mean"] = round(float(np.mean([len(p) for p in pool[0]])), 1)
        producer = EventProducer(kafka, client_id="bench-profile", tracer=tracer)
        fill(producer, kafka, POOL, n, pool)
        meter.flush_spans()
        meter.measure_idle(3.0)
        print(
            f"idle: broker {1e3 * meter.broker_idle:.0f} CPU ms/s, "
            f"redis {1e3 * meter.redis_idle:.0f} CPU ms/s (subtracted from their stages)"
        )
        with meter.stage("camera: publish frames.raw", n, spans=True):
            fill(producer, kafka, n, 0, pool)
        policy = Policy()
        claims = RedisClaims(connect(RedisSettings()), f"bench:{prefix}claims")
        ingestor = Ingestor(policy, claims, dedupe_ttl_s=600)

        t = time.perf_counter()
        ingest_stages(meter, kafka, producer, tracer, ingestor, policy, n, warmup)
        print(f"ingest stages in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        serving_stages(meter, kafka, producer, tracer, model, n, warmup)
        print(f"serving stages in {time.perf_counter() - t:.1f} s")

        t = time.perf_counter()
        loops: dict[str, Any] = {}
        profiles: dict[str, Any] = {}
        core = ServingCore(model.store, runtime="onnx", threads=TORCH_THREADS)
        ingress = Ingress(
            MODEL_NAME, backend=core, verifier=core, producer=producer, call_size=SERVING_CALL
        )
        announce(ingress, model)
        sides: list[tuple[str, str, type[Event], Callable[..., Any], int, str]] = [
            (
                "ingest",
                Topics.FRAMES_RAW,
                FrameRaw,
                make_handler(ingestor, producer),
                INGEST_POLL,
                "ingest",
            ),
            ("serving", Topics.FRAMES_VALID, FrameValid, ingress.handle, SERVING_POLL, "serving"),
        ]
        for side, topic, etype, handler, poll, client in sides:
            for mode in ("whole", "profiled"):
                prof = cProfile.Profile(time.thread_time) if mode == "profiled" else None
                out = service_loop(
                    kafka,
                    f"{prefix}{side}-{mode}",
                    topic,
                    etype,
                    handler,
                    producer,
                    tracer,
                    poll,
                    n,
                    client,
                    prof,
                )
                meter.flush_spans()
                if prof is None:
                    loops[side] = out
                else:
                    profiles[side] = top_functions(prof, out["frames"])
                    profiles[side]["loop"] = out
        print(f"service loops in {time.perf_counter() - t:.1f} s")
        results["service_loops_unprofiled"] = loops
        results["cprofile"] = profiles
    except Exception as exc:
        logging.getLogger("bench").exception("profile run failed")
        results["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        if producer is not None:
            producer.close()
        telemetry.shutdown()
        try:
            with KafkaAdmin(KafkaSettings()) as admin:
                admin.delete_topics(created)
        except (KafkaError, OSError) as exc:  # cleanup must not hide the result
            print(f"warning: could not delete bench topics: {exc}")

    rows = table_rows(meter)
    onnx_label = next(
        (k.removeprefix("serving: model ") for k in meter.results if "model onnx" in k), "onnx"
    )
    table, summary = markdown(rows, onnx_label)
    print()
    print(
        f"CPU per frame by stage ({n} PNG 64x64 frames, load average at start {load_start}, "
        f"end {load_average()})"
    )
    print()
    print(table)
    loops = results.get("service_loops_unprofiled", {})
    for side in ("ingest", "serving"):
        if side in loops:
            staged = summary["by_side_us_per_frame"].get(side, 0.0)
            print(
                f"\n{side} service loop whole, unprofiled: {loops[side]['cpu_us_per_frame']:,.1f} "
                f"CPU µs/frame in this process (handler {loops[side]['handler_us_per_frame']:,.1f}"
                f", poll/decode/commit {loops[side]['loop_us_per_frame']:,.1f}; "
                f"{loops[side]['batches']} batches); "
                f"the stages above add up to {staged:,.1f}"
            )
            threads = loops[side].get("threads_us_per_frame_until_last_batch", {})
            print(
                "  by thread (CPU µs/frame, 10 ms ticks): "
                + ", ".join(f"{k} {v:,.0f}" for k, v in threads.items())
            )
    for side, prof in results.get("cprofile", {}).items():
        print()
        print(top_markdown(side, prof))
    for err in results["errors"]:
        print(f"error: {err}")
    out_path = default_var_dir() / "bench" / "profile.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(
        json.dumps(
            {
                "benchmark": "bench_profile",
                "frames": n,
                "quick": args.quick,
                "sample_ratio": args.sample_ratio,
                "settings": {
                    "ingest_poll": INGEST_POLL,
                    "serving_poll": SERVING_POLL,
                    "serving_call_size_in_loops": SERVING_CALL,
                    "model_batch": BATCH,
                    "torch_threads": TORCH_THREADS,
                },
                "load_average_start": load_start,
                "load_average_end": load_average(),
                "seconds": round(time.perf_counter() - started, 1),
                "table": [
                    {"stage": st, "side": sd, "cpu_us_per_frame": round(us, 2)}
                    for st, sd, us in rows
                ],
                **summary,
                "stages": {k: m.as_dict() for k, m in meter.results.items()},
                **results,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {out_path} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
