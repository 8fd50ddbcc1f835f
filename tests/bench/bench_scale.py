"""Benchmark: end-to-end saturation with 1, 2 and 3 serving ingress processes and 1 and 2 Ray
Serve replicas, on this machine.

    python -m tests.bench.bench_scale [--ingress 1,2,3] [--replicas 1,2] [--frames N] [--quick]

The model is made as ``tests.bench.bench_serving`` makes it (exported for serving's runtime),
and its in-process ceiling is measured first (that benchmark's part (a)). Then, for every
combination of ingress processes N and replicas R:

- a Ray head is started for the combination (``ray start --head``, 2 CPUs), and the ingest
  service and N serving processes join it (``RAY_ADDRESS``). The serving processes share one
  consumer group, so they split the partitions of ``frames.valid``; each deploys the same
  Serve application, with R replicas of 2 / R CPUs and as many threads;
- the champion is announced, a warm-up goes through, then ``--frames`` PNG frames are
  published as fast as possible, and the saturation rate is taken as in bench_serving (c):
  predictions after the first model call over the seconds from the first to the last
  ``served_at``;
- everything stops, the head included, and the combination's topics are deleted.

A measurement, not a test: it exits 0 whatever the figures, 1 only when a part failed. It
stops every Ray process on the machine at the end of each combination (``ray stop``), so it
refuses to start while another Ray runs. Figures go to ``var/bench/scale.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from shared.sdk import FramePublisher
from shared.settings import KafkaSettings
from shared.topics import TOPICS, Topics, provision
from tests.bench.lib.control import Service, preflight, ray_cli, workdir
from tests.bench.lib.e2e import (
    CHAMPION_ADOPTED,
    CONSUMER_STARTED,
    TOPIC_NAMES,
    EndToEnd,
    PredictionReader,
    cleanup_end_to_end,
    service_env,
    start_ingest,
)
from tests.bench.lib.fixtures import Fixture, announce, make_fixture
from tests.bench.lib.measure import saturation
from tests.bench.lib.procs import is_ray, load_average, scan_procs
from tests.bench.lib.report import write_figures
from tests.bench.lib.serving import BATCH, bench_inprocess
from tests.integration.helpers import free_port

RAY_CPUS = 2
"""CPUs the Ray head offers: the machine's, shared with Kafka, Redis and the services."""


def start_serving(
    fx: Fixture,
    prefix: str,
    common: dict[str, str],
    i: int,
    ray_port: int,
    http_port: int,
    replicas: int,
    threads: int,
) -> Service:
    """Serving process ``i`` of the combination, joining the head on ``ray_port``, started."""
    serving = Service(
        f"serving-{i + 1}",
        "services.serving",
        {
            **common,
            "RAY_ADDRESS": f"127.0.0.1:{ray_port}",
            "STREAMLOOP_SERVING_PROVISION_TOPICS": "false",
            "STREAMLOOP_SERVING_MODEL_NAME": fx.ref.model_name,
            "STREAMLOOP_SERVING_GROUP_ID": f"{prefix}serving",
            # Processes of one group on one host: a transactional id each.
            "STREAMLOOP_SERVING_TRANSACTIONS__ID": f"{prefix}serving-{i}",
            "STREAMLOOP_SERVING_BACKEND": "ray",
            "STREAMLOOP_SERVING_HTTP_PORT": str(http_port),
            "STREAMLOOP_SERVING_MIN_REPLICAS": str(replicas),
            "STREAMLOOP_SERVING_MAX_REPLICAS": str(replicas),
            "STREAMLOOP_SERVING_REPLICA_CPUS": str(RAY_CPUS / replicas),
            "STREAMLOOP_SERVING_TORCH_THREADS": str(threads),
            "STREAMLOOP_SERVING_RUNTIME": fx.runtime,
        },
        (CONSUMER_STARTED, CHAMPION_ADOPTED),
    )
    return serving


def one_combination(
    console: Console,
    fx: Fixture,
    root: Path,
    work: Path,
    ingress: int,
    replicas: int,
    frames: int,
) -> dict[str, Any]:
    """Start Ray, ingest and ``ingress`` serving processes; the saturation rate of a burst."""
    prefix = f"scale{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(topic_prefix=prefix)
    port = free_port()
    threads = max(1, RAY_CPUS // replicas)
    out: dict[str, Any] = {"ingress": ingress, "replicas": replicas, "replica_threads": threads}
    services: list[Service] = []
    reader: PredictionReader | None = None
    console.print(f"{ingress} ingress, {replicas} replica(s) of {threads} thread(s)")
    ray_cli(
        "start",
        "--head",
        f"--object-store-memory={256 * 2**20}",
        f"--port={port}",
        f"--num-cpus={RAY_CPUS}",
        "--include-dashboard=false",
    )
    try:
        provision(kafka, [TOPICS[n] for n in TOPIC_NAMES], name_prefix=prefix, timeout_s=30)
        announce(kafka, fx.trained)
        common = service_env(prefix, root, work)
        start = time.perf_counter()
        services.append(start_ingest(prefix, common))
        http_port = free_port()
        for i in range(ingress):
            serving = start_serving(fx, prefix, common, i, port, http_port, replicas, threads)
            services.append(serving)
            # One at a time: each deploys the application, and the next finds it running.
            serving.wait_for(CONSUMER_STARTED, 240, "consumer start (Ray and the deployment)")
            serving.wait_for(CHAMPION_ADOPTED, 60, "adopted champion")
        services[0].wait_for(CONSUMER_STARTED, 90, "consumer start")
        out["services_ready_s"] = round(time.perf_counter() - start, 1)
        reader = PredictionReader(prefix + Topics.PREDICTIONS, prefix)
        reader.start()
        e2e = EndToEnd(prefix, kafka, fx, reader, services)
        with FramePublisher(kafka, source="bench", content_type="image/png") as pub:
            warm = 2 * BATCH * ingress
            e2e.burst(pub, "warm", warm)
            e2e.wait("warm", warm, 180)
            publish_s = e2e.burst(pub, "sat", frames)
            e2e.wait("sat", frames, max(90.0, frames / 20))
        sat = saturation(reader.of("sat"))
        sat["published_in_s"] = round(publish_s, 2)
        out["saturation"] = sat
        out["duplicates"] = reader.duplicates
        console.print(
            f"  {sat['frames_per_s']:,.0f} predictions/s, {sat['model_calls']} model calls "
            f"(mean batch {sat['mean_batch']:.0f}); services ready in {out['services_ready_s']} s"
        )
    finally:
        if reader is not None:
            reader.stop()
        for s in reversed(services):
            s.stop(60 if s.name.startswith("serving") else 20)
        try:
            ray_cli("stop", "--force")
        finally:
            cleanup_end_to_end(console, prefix, [prefix + n for n in TOPIC_NAMES])
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_scale",
        description="End-to-end saturation by serving ingress processes and Ray replicas.",
    )
    ap.add_argument("--ingress", default="1,2,3", help="serving ingress counts (1,2,3)")
    ap.add_argument("--replicas", default="1,2", help="Ray Serve replica counts (1,2)")
    ap.add_argument("--frames", type=int, default=3000, help="burst per combination (3000)")
    ap.add_argument("--quick", action="store_true", help="1000 frames per combination")
    args = ap.parse_args(argv)
    args.ingress = [int(x) for x in str(args.ingress).split(",")]
    args.replicas = [int(x) for x in str(args.replicas).split(",")]
    if args.quick:
        args.frames = 1000
    if min(args.ingress) < 1 or min(args.replicas) < 1 or max(args.replicas) > RAY_CPUS:
        ap.error(f"counts are at least 1, and at most {RAY_CPUS} replicas")
    return args


def print_table(console: Console, runs: list[dict[str, Any]], ceiling: float) -> None:
    console.print("| ingress | replicas | frames/s | of the ceiling | mean batch |")
    console.print("|---:|---:|---:|---:|---:|")
    for run in runs:
        sat = run.get("saturation") or {}
        rate = sat.get("frames_per_s")
        console.print(
            f"| {run['ingress']} | {run['replicas']} | "
            + (
                f"{rate:,.0f} | {rate / ceiling:.2f} | {sat['mean_batch']:.0f} |"
                if rate
                else "failed |||"
            )
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    console = Console(soft_wrap=True)
    console.print(
        f"bench_scale: ingress {args.ingress} x replicas {args.replicas}, {args.frames:,} "
        f"frames each; {os.cpu_count()} CPUs, load average {load_average()}"
    )
    preflight(console)
    if any(is_ray(p.cmdline) for p in scan_procs().values()):
        console.print("[red]another Ray runs on this machine; this benchmark stops Ray[/]")
        return 1
    results: dict[str, Any] = {"started": datetime.now(UTC).isoformat(), "runs": []}
    failed = False
    with workdir() as work:
        root = work / "artifacts"
        fx = make_fixture(console, root, 400, f"bench-scale-{uuid.uuid4().hex[:6]}", "onnx")
        ceiling = bench_inprocess(console, fx, root, 5.0, "before", fx.runtime)
        results["ceiling"] = ceiling
        for replicas in args.replicas:
            for ingress in args.ingress:
                try:
                    run = one_combination(console, fx, root, work, ingress, replicas, args.frames)
                except Exception as exc:  # noqa: BLE001 - report it and go on
                    failed = True
                    run = {"ingress": ingress, "replicas": replicas, "error": str(exc)}
                    console.print(f"[red]  failed:[/] {exc}")
                results["runs"].append(run)
    a = ceiling["frames_per_s"]
    console.print(f"\nin-process ceiling ({fx.runtime}, 2 threads): {a:,.0f} frames/s\n")
    print_table(console, results["runs"], a)
    path = write_figures("scale", results)
    console.print(f"\nfigures in {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
