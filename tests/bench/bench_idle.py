"""Benchmark: the whole stack at rest, the CPU it burns while no frame arrives.

    python -m tests.bench.bench_idle [--window-s W] [--settle-s S]

The seven services start as ``streamloop demo`` starts them (``python -m services.<name>``,
the demo's trace sampling), on topics, consumer groups, artifacts and state of the run's own
(``tests.integration.helpers.demo_env``), beside the Kafka and Redis ``make bench`` runs;
serving starts its own local Ray. No frame is published. Once every service says it is ready,
the CPU time of every process is read from /proc over ``--window-s`` seconds (start-up: faust
recovering its tables, Ray deploying), then, after ``--settle-s`` seconds more, over another
``--window-s`` seconds (at rest). Each service's row is its own process; "<service> children"
is what it started (serving: Ray's processes); Kafka and Redis are the broker and the Redis
server, which other clients may also use. Cores = CPU seconds / wall seconds. The broker's
share at rest is also broken down by thread name (its JVM names its threads by pool: network,
request handlers, the metadata log, the JIT compilers...).

A measurement, not a test: it exits 0 whatever the figures, 1 when the stack did not start.
The services are stopped and the run's topics deleted at the end. Figures go to
``var/bench/idle.json``.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from shared.kafka_admin import KafkaAdmin
from shared.settings import KafkaSettings
from shared.topics import TOPICS, provision
from tests.bench.lib.control import BenchError, Service, delete_topics, end_processes, workdir
from tests.bench.lib.idle import start_stack, table, wait_ready, window
from tests.bench.lib.procs import (
    broker_pid,
    descendants,
    load_average,
    scan_procs,
    thread_cores,
    threads_by_name,
)
from tests.bench.lib.report import write_figures

GOAL_CORES = 0.05
"""The whole stack at rest: at most 5 % of one core."""
BROKER_THREADS = 8
"""The broker's busiest thread names reported at rest."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window-s", type=float, default=60.0, help="each measured window (60)")
    ap.add_argument("--settle-s", type=float, default=120.0, help="between the windows (120)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(soft_wrap=True)
    started = datetime.now(UTC)
    console.print(
        f"bench_idle: the seven services with no frame; {args.window_s:g} s from ready, then "
        f"{args.window_s:g} s after {args.settle_s:g} s more; {os.cpu_count()} CPUs, load "
        f"average {load_average()}"
    )
    prefix = f"idle{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(topic_prefix=prefix)
    provision(kafka, list(TOPICS.values()), name_prefix=prefix, timeout_s=30)
    services: list[Service] = []
    results: dict[str, Any] = {"prefix": prefix}
    failed = False
    with workdir("bench-idle-") as home:
        try:
            services = start_stack(home, prefix)
            results["ready_s"] = round(wait_ready(services, 240), 1)
            console.print(f"all seven ready in {results['ready_s']:.0f} s; measuring")
            pids = {s.name: s.p.pid for s in services}
            windows = {"from ready": window(pids, args.window_s)}
            console.print(f"  from ready: {windows['from ready']['total']:.2f} cores")
            time.sleep(args.settle_s)
            broker = broker_pid(kafka)
            threads0 = threads_by_name(broker) if broker else {}
            windows["at rest"] = window(pids, args.window_s)
            if broker:
                # Where the broker's share goes, by thread (its JVM names them by pool).
                results["broker_threads"] = thread_cores(
                    threads0, threads_by_name(broker), args.window_s, BROKER_THREADS
                )
            for s in services:
                s.check("while idle")
            results["windows"] = windows
            console.print(table(windows))
            if results.get("broker_threads"):
                console.print(
                    "the broker at rest by thread, cores: "
                    + ", ".join(f"{n} {c:.4f}" for n, c in results["broker_threads"].items())
                )
            rest = windows["at rest"]["total"]
            console.print(
                f"goal: the stack at rest <= {GOAL_CORES:.0%} of one core: "
                f"{'yes' if rest <= GOAL_CORES else 'no'} ({rest:.1%})"
            )
        except BenchError as exc:
            failed = True
            results["error"] = str(exc)
            console.print(f"[red]failed:[/] {exc}")
        finally:
            procs = scan_procs()
            spawned = [procs[p] for s in services for p in descendants(procs, s.p.pid)]
            for s in reversed(services):
                console.print(f"  {s.name}: {s.stop(30)}")
            end_processes(spawned, console)
            with KafkaAdmin(kafka) as admin:
                ours = [t for t in admin.list_topics() if t.startswith(prefix)]
            delete_topics(ours, console.print)
    out = write_figures(
        "idle",
        {
            "started_at": started.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "window_s": args.window_s,
            "settle_s": args.settle_s,
            "cpu_count": os.cpu_count(),
            **results,
        },
    )
    console.print(f"figures written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
