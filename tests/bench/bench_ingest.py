"""Benchmark: ingest against a bare consume-and-produce loop, and the simulator's top rate.

    python -m tests.bench.bench_ingest [--frames N] [--rounds R] [--sample-ratio F] [--quick]

For each image format (JPEG, PNG) a fresh 3-partition ``frames.raw`` of the run's own is
filled with N simulated 64x64 frames (the wire format of the README). Then, alternating, in
each round:

- bare: a kafka-python consumer polls it and a kafka-python producer sends every value, as
  it is, to an output topic; flush and commit after each poll (the least any
  consume-transform-produce service does);
- ingest: the ingest service's own consumer loop and handler (schema, base64, image decode,
  size and camera checks, normalisation to raw pixels, Redis duplicate claims in one
  pipelined round trip per batch, publish to ``frames.valid``, commit after the flush),
  traced at ``--sample-ratio`` (default 1.0, every record).

Each side is timed from its first polled record to its last output acknowledged by Kafka,
with a fresh consumer group per round (the clock starts after the group join). Medians of
the rounds are reported. Last, the simulator renders, encodes and publishes N frames
(with its labels) as fast as it can. A measurement, not a test: it always exits 0.
Figures go to ``var/bench/ingest.json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from services.ingest.__main__ import make_handler
from services.ingest.logic import Ingestor, Policy
from services.simulator.__main__ import KafkaSink
from services.simulator.fleet import Annotators, Fleet
from services.simulator.runner import Simulator
from services.simulator.scenario import load
from shared.bus import PRODUCER_DEFAULTS, ConsumerLoop, EventProducer, Message
from shared.events import FrameRaw, encode
from shared.images import encode_image
from shared.kafka_admin import KafkaAdmin
from shared.redis_store import RedisClaims, connect
from shared.settings import KafkaSettings, RedisSettings, TelemetrySettings, default_var_dir
from shared.telemetry import setup_telemetry
from shared.topics import TOPICS, Topics, provision
from tests.bench.bench_bus import CONSUMER_CONFIG as BUS_CONSUMER_CONFIG

TARGET_RATIO = 0.7
CLASSES = ("car", "truck", "bus", "motorcycle")
MAX_POLL_RECORDS = 256
CONSUMER_CONFIG: dict[str, Any] = {**BUS_CONSUMER_CONFIG, "max_poll_records": MAX_POLL_RECORDS}


def frames_for(content_type: str, count: int, pool: int = 256) -> list[bytes]:
    """``count`` frames.raw payloads; images are drawn from a pool of simulated crops."""
    fleet = Fleet(load("day-to-night"), CLASSES, run_id="bench", rate=20.0)
    images = [encode_image(fleet.frame(i * 37).pixels, content_type) for i in range(pool)]
    now = datetime.now(UTC)
    out = []
    for i in range(count):
        event = FrameRaw(
            frame_id=f"bench-{i:08d}",
            camera_id=f"cam-{i % 4 + 1}",
            captured_at=now,
            content_type=content_type,  # type: ignore[arg-type]
            image_b64=base64.b64encode(images[i % pool]).decode(),
            source="bench",
        )
        out.append(encode(event))
    return out


def fill(settings: KafkaSettings, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(**PRODUCER_DEFAULTS, **settings.client_kwargs())
    for i, value in enumerate(values):
        producer.send(topic, value=value, key=f"cam-{i % 4 + 1}".encode())
    producer.flush()
    producer.close()


def run_bare(settings: KafkaSettings, src: str, dst: str, group: str, expected: int) -> float:
    """Seconds from the first polled record to the last flush."""
    client = settings.client_kwargs()
    producer = KafkaProducer(client_id=group, **PRODUCER_DEFAULTS, **client)
    consumer = KafkaConsumer(src, group_id=group, **CONSUMER_CONFIG, **client)
    seen, start, end = 0, 0.0, 0.0
    try:
        deadline = time.monotonic() + 120
        while seen < expected and time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=200, max_records=MAX_POLL_RECORDS)
            if not polled:
                continue
            if not start:
                start = time.perf_counter()
            for batch in polled.values():
                for rec in batch:
                    producer.send(dst, value=rec.value, key=rec.key)
                seen += len(batch)
            producer.flush()
            end = time.perf_counter()
            consumer.commit()
    finally:
        producer.close()
        consumer.close(autocommit=False)
    if seen < expected:
        raise TimeoutError(f"bare loop saw {seen}/{expected}")
    return end - start


def run_ingest(
    settings: KafkaSettings,
    group: str,
    expected: int,
    claims_ns: str,
    tracer: Any,
) -> tuple[float, int]:
    """Seconds from the first handled batch to the last acknowledged output; outputs."""
    producer = EventProducer(settings, client_id=group, tracer=tracer)
    claims = RedisClaims(connect(RedisSettings()), claims_ns)
    handle = make_handler(Ingestor(Policy(), claims), producer)
    state = {"start": 0.0, "end": 0.0, "seen": 0, "out": 0}
    done = threading.Event()
    loop: ConsumerLoop[FrameRaw]

    def timed(batch: list[Message[FrameRaw]]) -> Any:
        if not state["start"]:
            state["start"] = time.perf_counter()
        refused = handle(batch)
        producer.flush()
        state["end"] = time.perf_counter()
        state["seen"] += len(batch)
        state["out"] += len(batch) - len(refused)
        if state["seen"] >= expected:
            done.set()
            loop.stop()
        return refused

    loop = ConsumerLoop(
        settings,
        group_id=group,
        topics=[Topics.FRAMES_RAW],
        event_type=FrameRaw,
        producer=producer,
        batch_handler=timed,
        tracer=tracer,
        max_poll_records=MAX_POLL_RECORDS,
    )
    thread = threading.Thread(target=loop.run, kwargs={"max_idle_s": 60}, daemon=True)
    thread.start()
    done.wait(180)
    loop.stop()
    thread.join(30)
    producer.close()
    if state["seen"] < expected:
        raise TimeoutError(f"ingest saw {state['seen']}/{expected}")
    return state["end"] - state["start"], int(state["out"])


def simulator_rate(settings: KafkaSettings, frames: int, tracer: Any) -> float:
    producer = EventProducer(settings, client_id="bench-simulator", tracer=tracer)
    scenario = load("day-to-night")
    fleet = Fleet(scenario, CLASSES, run_id=f"bench{os.getpid()}", rate=scenario.rate)
    labels = scenario.labels.model_copy(update={"delay_s": 0.0, "jitter_s": 0.0})
    annotators = Annotators(labels, CLASSES, 1)
    sim = Simulator(fleet, annotators, KafkaSink(producer, scenario, "bench"), rate=0)
    start = time.perf_counter()
    sim.run(max_frames=frames)
    elapsed = time.perf_counter() - start
    producer.close()
    return frames / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_ingest", description=__doc__)
    ap.add_argument("--frames", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sample-ratio", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="1500 frames, 1 round")
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.rounds = 1500, 1
    logging.basicConfig(level=logging.WARNING)
    console = Console(soft_wrap=True)
    base = f"bench-ingest-{int(time.time())}-{os.getpid()}"
    traces = Path(tempfile.mkdtemp(prefix="bench-traces-"))
    telemetry = setup_telemetry(
        "bench-ingest",
        TelemetrySettings(exporter="jsonl", traces_dir=traces, sample_ratio=args.sample_ratio),
    )
    results: dict[str, Any] = {}
    created: list[str] = []
    try:
        for content_type in ("image/jpeg", "image/png"):
            fmt = content_type.split("/")[1]
            prefix = f"{base}-{fmt}."
            kafka = KafkaSettings(topic_prefix=prefix)
            provision(
                kafka,
                [TOPICS[t] for t in (Topics.FRAMES_RAW, Topics.FRAMES_VALID, Topics.FRAMES_DLQ)],
            )
            bare_out = prefix + "bare.out"
            with KafkaAdmin(kafka) as admin:
                admin.create_topics([(bare_out, 3, {})], 1, timeout_s=30)
            created += [
                prefix + t for t in (Topics.FRAMES_RAW, Topics.FRAMES_VALID, Topics.FRAMES_DLQ)
            ] + [bare_out]
            values = frames_for(content_type, args.frames)
            console.print(
                f"[bold]{fmt}[/]: {args.frames} frames, "
                f"{statistics.mean(map(len, values)) / 1024:.1f} KiB each on the wire"
            )
            fill(KafkaSettings(), prefix + Topics.FRAMES_RAW, values)
            bare_s, ingest_s = [], []
            for r in range(args.rounds):
                b = run_bare(
                    KafkaSettings(),
                    prefix + Topics.FRAMES_RAW,
                    bare_out,
                    f"{prefix}bare-{r}",
                    args.frames,
                )
                i, out = run_ingest(
                    kafka,
                    f"{prefix}ingest-{r}",
                    args.frames,
                    f"bench:{prefix}{r}",
                    telemetry.tracer,
                )
                assert out == args.frames, f"ingest published {out}/{args.frames}"
                bare_s.append(b)
                ingest_s.append(i)
                console.print(
                    f"  round {r + 1}: bare {args.frames / b:,.0f}/s, "
                    f"ingest {args.frames / i:,.0f}/s"
                )
            bare_rate = args.frames / statistics.median(bare_s)
            ingest_rate = args.frames / statistics.median(ingest_s)
            results[fmt] = {
                "bytes_per_frame": statistics.mean(map(len, values)),
                "bare_frames_per_s": round(bare_rate, 1),
                "ingest_frames_per_s": round(ingest_rate, 1),
                "ratio": round(ingest_rate / bare_rate, 3),
                "rounds": {"bare_s": bare_s, "ingest_s": ingest_s},
            }
        sim_kafka = KafkaSettings(topic_prefix=f"{base}-sim.")
        provision(sim_kafka, [TOPICS[Topics.FRAMES_RAW], TOPICS[Topics.LABELS]])
        created += [f"{base}-sim.{Topics.FRAMES_RAW}", f"{base}-sim.{Topics.LABELS}"]
        results["simulator_frames_per_s"] = round(
            simulator_rate(sim_kafka, args.frames, telemetry.tracer), 1
        )
    finally:
        telemetry.shutdown()
        try:
            with KafkaAdmin(KafkaSettings()) as admin:
                admin.delete_topics(created)
        except (KafkaError, OSError) as exc:  # cleanup must not hide the result
            console.print(f"warning: could not delete bench topics: {exc}")
    table = Table(
        title=f"ingest vs bare loop ({args.frames} frames, median of {args.rounds}, "
        f"sample ratio {args.sample_ratio})"
    )
    for col in ("format", "KiB/frame", "bare frames/s", "ingest frames/s", "ratio"):
        table.add_column(col, justify="right")
    for fmt in ("jpeg", "png"):
        r = results[fmt]
        table.add_row(
            fmt,
            f"{r['bytes_per_frame'] / 1024:.1f}",
            f"{r['bare_frames_per_s']:,.0f}",
            f"{r['ingest_frames_per_s']:,.0f}",
            f"[bold]{r['ratio']:.2f}[/]",
        )
    console.print(table)
    console.print(
        f"simulator, render + encode + publish (JPEG, with labels): "
        f"[bold]{results['simulator_frames_per_s']:,.0f}[/] frames/s"
    )
    console.print(f"target: ingest >= {TARGET_RATIO} of the bare loop")
    out = default_var_dir() / "bench" / "ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "frames": args.frames,
                "rounds": args.rounds,
                "sample_ratio": args.sample_ratio,
                **results,
            },
            indent=2,
        )
    )
    console.print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
