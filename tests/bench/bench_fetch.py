"""Benchmark: how much the frame path's fetches gather, CPU a frame against latency, in one run.

    python -m tests.bench.bench_fetch [--sizes KIB,...] [--rounds K] [--frames N]
                                      [--paced-s S] [--warm-s W] [--quick]

Ingest and serving (Ray Serve, one replica, the runtime serving defaults to) as
subprocesses, as in ``bench_serving`` (c), on one broker, once for each least size of a fetch
(``STREAMLOOP_{INGEST,SERVING}_FETCH__MIN_BYTES``, default 128, 256 and 512 KiB), for
``--rounds`` rounds (default 2), each round starting one size later than the one before, so
that no size always runs first. Frames at 200 a second warm the broker for ``--warm-s``
seconds before the first run (90; a broker just started spends several times its settled CPU
for a minute or two) and for a third of that before each later one. Each run: ``--frames``
PNG frames at once (the saturation rate), then ``--paced-s`` seconds at each of two rates,
the same for every size: 25 % and 50 % of the first run's saturation rate. Per run and
phase, the CPU of the stack (Kafka, Redis, ingest, serving and its Ray; from /proc) a frame,
the whole machine's, the mean model batch and p50/p99 from capture to the prediction
record. The table gives each size's median over its rounds and the lowest rate's CPU a frame
over saturation's (the issue's low-load goal: at most 1.5).

A measurement, not a test: it exits 0 whatever the figures, 1 only when a part failed.
Figures go to ``var/bench/fetch.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from services.serving.settings import ServingSettings
from shared.settings import FetchSettings
from tests.bench.lib.control import preflight, workdir
from tests.bench.lib.e2e import measured_run, warm_seconds
from tests.bench.lib.fetch import (
    KIB,
    LEVELS,
    env_of,
    figures,
    median_of,
    paced_rates,
    parse_sizes,
    round_order,
    table,
)
from tests.bench.lib.fixtures import make_fixture
from tests.bench.lib.procs import MemorySampler, load_average
from tests.bench.lib.report import write_figures
from tests.bench.lib.serving import POOL, SEED

MODULE = "tests.bench.bench_fetch"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes", default="128,256,512", help="least KiB a fetch gathers (128,256,512)"
    )
    ap.add_argument("--rounds", type=int, default=2, help="runs of each size (2)")
    ap.add_argument("--frames", type=int, default=3000, help="saturation burst (3000)")
    ap.add_argument("--paced-s", type=float, default=20.0, help="seconds at each rate (20)")
    ap.add_argument(
        "--warm-s", type=float, default=90.0, help="seconds of frames before the first run (90)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="one round, 1000 frames, 5 s paced, 5 s warm-up"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.frames, args.paced_s, args.warm_s = 1, 1000, 5.0, 5.0
    try:
        args.sizes = parse_sizes(args.sizes)
    except ValueError as exc:
        ap.error(str(exc))
    if args.rounds < 1 or args.frames < 100 or args.paced_s <= 0 or args.warm_s < 0:
        ap.error("--rounds at least 1, --frames at least 100, --paced-s positive, --warm-s >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    console = Console(soft_wrap=True)
    default_kib = FetchSettings().min_bytes // KIB
    console.print(
        f"bench_fetch: {args.rounds} round(s) of "
        + ", ".join(f"{s} KiB" for s in args.sizes)
        + f" (default {default_kib}); {args.frames:,} frames at saturation, {args.paced_s:g} s "
        f"at each rate; {os.cpu_count()} CPUs, load average {load_average()}"
    )
    preflight(console)
    sampler = MemorySampler()
    sampler.start()
    runs: dict[int, list[dict[str, Any]]] = {s: [] for s in args.sizes}
    raw: dict[int, list[dict[str, Any]]] = {s: [] for s in args.sizes}
    rates: tuple[float, ...] = ()
    failed = False
    try:
        with workdir() as work:
            root = work / "artifacts"
            fx = make_fixture(
                console,
                root,
                400,
                f"bench-fetch-{uuid.uuid4().hex[:6]}",
                ServingSettings().runtime,
                seed=SEED,
                pool=POOL,
            )
            for k in range(args.rounds):
                for j, kib in enumerate(round_order(args.sizes, k)):
                    out = measured_run(
                        console,
                        f"round {k + 1}: fetches of at least {kib} KiB",
                        fx,
                        root,
                        work,
                        sampler,
                        frames=args.frames,
                        paced_s=args.paced_s,
                        sample_ratio=None,
                        # The first run sets the rates every size is paced at.
                        levels=() if rates else LEVELS,
                        rates=rates,
                        env=env_of(kib),
                        warm_s=warm_seconds(k * len(args.sizes) + j, args.warm_s),
                    )
                    failed = failed or "error" in out
                    rates = rates or paced_rates(out)
                    runs[kib].append(figures(out))
                    raw[kib].append(out)
    finally:
        sampler.stop()
    summary = {kib: median_of(rs) for kib, rs in runs.items()}
    console.print("")
    for line in table(summary, default_kib):
        console.out(line, highlight=False)
    path = write_figures(
        "fetch",
        {
            "at": datetime.now(UTC).isoformat(),
            "settings": {**vars(args), "levels": list(LEVELS), "default_kib": default_kib},
            "rates_per_s": list(rates),
            "load_average": load_average(),
            "summary": {str(k): v for k, v in summary.items()},
            "runs": {str(k): v for k, v in runs.items()},
            "raw": {str(k): v for k, v in raw.items()},
        },
    )
    console.print(f"figures written to {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
