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
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from services.ingest.logic import Ingestor, Policy
from shared.bus import EventProducer
from shared.redis_store import RedisClaims, connect
from shared.settings import KafkaSettings, RedisSettings, TelemetrySettings
from shared.telemetry import JsonlSpanExporter, Telemetry, setup_telemetry
from shared.topics import TOPICS, provision
from tests.bench.lib.control import delete_topics, workdir
from tests.bench.lib.fixtures import render_pool, untrained_model
from tests.bench.lib.procs import broker_pid, listening_pid, load_average
from tests.bench.lib.report import write_figures
from tests.bench.lib.stages import (
    BATCH,
    INGEST_POLL,
    MODEL_NAME,
    POOL,
    SEED,
    SERVING_CALL,
    SERVING_POLL,
    TOPIC_NAMES,
    TORCH_THREADS,
    Meter,
    fill,
    ingest_stages,
    loop_lines,
    markdown,
    service_loops,
    serving_stages,
    table_rows,
    top_markdown,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_profile", description=__doc__)
    ap.add_argument("--frames", type=int, default=5000)
    ap.add_argument("--sample-ratio", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="1000 frames")
    args = ap.parse_args(argv)
    if args.quick:
        args.frames = 1000
    return args


def tracing(work: Path, sample_ratio: float) -> Telemetry:
    """The services' exporter and queue; the export of each stage's spans is deferred to the
    stage's end so that it can be counted on its own."""
    telemetry = setup_telemetry(
        "bench-profile", TelemetrySettings(exporter="none", sample_ratio=sample_ratio)
    )
    telemetry.provider.add_span_processor(
        BatchSpanProcessor(
            JsonlSpanExporter(work / "traces" / "bench-profile.jsonl"),
            max_queue_size=1 << 17,
            max_export_batch_size=1 << 17,
            schedule_delay_millis=3_600_000,
        )
    )
    return telemetry


def meter_for(kafka: KafkaSettings, telemetry: Telemetry) -> Meter:
    """A meter that also reads the CPU of the broker and Redis (the processes on their ports)."""
    redis_port = int(RedisSettings().url.rsplit(":", 1)[1].split("/")[0])
    return Meter(broker_pid(kafka), listening_pid(redis_port), telemetry.provider.force_flush)


def measure(
    meter: Meter,
    kafka: KafkaSettings,
    producer: EventProducer,
    tracer: Any,
    work: Path,
    n: int,
    results: dict[str, Any],
) -> None:
    """Fill frames.raw, then every stage, then the service loops, into ``meter`` and
    ``results``."""
    provision(kafka, [TOPICS[t] for t in TOPIC_NAMES])
    t = time.perf_counter()
    model = untrained_model(work / "artifacts", MODEL_NAME, SEED)
    print(f"model stored, ONNX export in {time.perf_counter() - t:.1f} s")
    if model.onnx_error:
        results["errors"].append(f"onnx export: {model.onnx_error}")
        print(f"warning: no ONNX export ({model.onnx_error}); serving falls back to eager")
    pool = render_pool(POOL, SEED)
    results["png_bytes_mean"] = round(float(np.mean([len(p) for p in pool.png])), 1)
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
    claims = RedisClaims(connect(RedisSettings()), f"bench:{kafka.topic_prefix}claims")
    ingestor = Ingestor(policy, claims, dedupe_ttl_s=600)
    warmup = min(256, n // 4)

    t = time.perf_counter()
    ingest_stages(meter, kafka, producer, tracer, ingestor, policy, n, warmup)
    print(f"ingest stages in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    serving_stages(meter, kafka, producer, tracer, model, n, warmup)
    print(f"serving stages in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    loops, profiles = service_loops(kafka, producer, tracer, ingestor, model, n, meter.flush_spans)
    print(f"service loops in {time.perf_counter() - t:.1f} s")
    results["service_loops_unprofiled"] = loops
    results["cprofile"] = profiles


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n = max(args.frames, 2 * SERVING_POLL)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.ERROR)
    torch.set_num_threads(TORCH_THREADS)
    started = time.perf_counter()
    load_start = load_average()
    prefix = f"bench-profile-{int(time.time())}-{os.getpid()}."
    kafka = KafkaSettings(topic_prefix=prefix)
    results: dict[str, Any] = {"errors": []}
    with workdir("bench-profile-") as work:
        telemetry = tracing(work, args.sample_ratio)
        meter = meter_for(kafka, telemetry)
        print(
            f"profile: {n} PNG frames, sample ratio {args.sample_ratio}, torch threads "
            f"{TORCH_THREADS}, broker pid {meter.broker_pid}, redis pid {meter.redis_pid}, "
            f"load {load_start}"
        )
        producer: EventProducer | None = None
        try:
            producer = EventProducer(kafka, client_id="bench-profile", tracer=telemetry.tracer)
            measure(meter, kafka, producer, telemetry.tracer, work, n, results)
        except Exception as exc:
            logging.getLogger("bench").exception("profile run failed")
            results["errors"].append(f"{type(exc).__name__}: {exc}")
        finally:
            if producer is not None:
                producer.close()
            telemetry.shutdown()
            delete_topics([prefix + t for t in TOPIC_NAMES], print)

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
    for line in loop_lines(
        results.get("service_loops_unprofiled", {}), summary["by_side_us_per_frame"]
    ):
        print(line)
    for side, prof in results.get("cprofile", {}).items():
        print()
        print(top_markdown(side, prof))
    for err in results["errors"]:
        print(f"error: {err}")
    out_path = write_figures(
        "profile",
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
                {"stage": st, "side": sd, "cpu_us_per_frame": round(us, 2)} for st, sd, us in rows
            ],
            **summary,
            "stages": {k: m.as_dict() for k, m in meter.results.items()},
            **results,
        },
    )
    print(f"\nwritten to {out_path} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
