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
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from shared.kafka_admin import KafkaAdmin
from shared.settings import KafkaSettings, TelemetrySettings
from shared.telemetry import setup_telemetry
from shared.topics import TOPICS, Topics, provision
from tests.bench.lib.control import delete_topics
from tests.bench.lib.fixtures import frames_raw_payloads
from tests.bench.lib.ingest import (
    CLASSES,
    fill,
    print_table,
    run_bare,
    run_ingest,
    simulator_rate,
)
from tests.bench.lib.report import write_figures

FRAME_TOPICS = (Topics.FRAMES_RAW, Topics.FRAMES_VALID, Topics.FRAMES_DLQ)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_ingest", description=__doc__)
    ap.add_argument("--frames", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sample-ratio", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="1500 frames, 1 round")
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.rounds = 1500, 1
    return args


def one_format(
    console: Console,
    args: argparse.Namespace,
    base: str,
    content_type: str,
    tracer: Any,
    created: list[str],
) -> dict[str, Any]:
    """Bare against ingest, alternating for ``args.rounds`` rounds, on frames of one image
    format; the topics it makes are added to ``created``."""
    fmt = content_type.split("/")[1]
    prefix = f"{base}-{fmt}."
    kafka = KafkaSettings(topic_prefix=prefix)
    provision(kafka, [TOPICS[t] for t in FRAME_TOPICS])
    bare_out = prefix + "bare.out"
    with KafkaAdmin(kafka) as admin:
        admin.create_topics([(bare_out, 3, {})], 1, timeout_s=30)
    created += [prefix + t for t in FRAME_TOPICS] + [bare_out]
    values = frames_raw_payloads(content_type, args.frames, CLASSES)
    console.print(
        f"[bold]{fmt}[/]: {args.frames} frames, "
        f"{statistics.mean(map(len, values)) / 1024:.1f} KiB each on the wire"
    )
    fill(KafkaSettings(), prefix + Topics.FRAMES_RAW, values)
    bare_s, ingest_s = [], []
    for r in range(args.rounds):
        b = run_bare(
            KafkaSettings(), prefix + Topics.FRAMES_RAW, bare_out, f"{prefix}bare-{r}", args.frames
        )
        i, out = run_ingest(kafka, f"{prefix}ingest-{r}", args.frames, f"bench:{prefix}{r}", tracer)
        assert out == args.frames, f"ingest published {out}/{args.frames}"
        bare_s.append(b)
        ingest_s.append(i)
        console.print(
            f"  round {r + 1}: bare {args.frames / b:,.0f}/s, ingest {args.frames / i:,.0f}/s"
        )
    bare_rate = args.frames / statistics.median(bare_s)
    ingest_rate = args.frames / statistics.median(ingest_s)
    return {
        "bytes_per_frame": statistics.mean(map(len, values)),
        "bare_frames_per_s": round(bare_rate, 1),
        "ingest_frames_per_s": round(ingest_rate, 1),
        "ratio": round(ingest_rate / bare_rate, 3),
        "rounds": {"bare_s": bare_s, "ingest_s": ingest_s},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
            results[fmt] = one_format(console, args, base, content_type, telemetry.tracer, created)
        sim_kafka = KafkaSettings(topic_prefix=f"{base}-sim.")
        provision(sim_kafka, [TOPICS[Topics.FRAMES_RAW], TOPICS[Topics.LABELS]])
        created += [f"{base}-sim.{Topics.FRAMES_RAW}", f"{base}-sim.{Topics.LABELS}"]
        results["simulator_frames_per_s"] = round(
            simulator_rate(sim_kafka, args.frames, telemetry.tracer), 1
        )
    finally:
        telemetry.shutdown()
        delete_topics(created, console.print)
    print_table(console, results, args.frames, args.rounds, args.sample_ratio)
    doc = {"frames": args.frames, "rounds": args.rounds, "sample_ratio": args.sample_ratio}
    out = write_figures("ingest", {**doc, **results})
    console.print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
