"""Benchmark: what exactly-once costs on the frame path, against at-least-once, in one run.

    python -m tests.bench.bench_transactions [--frames N] [--rate R] [--paced-s S] [--rounds K]
                                             [--warm-s W]

Ingest and serving (Ray Serve, one replica, the runtime serving defaults to) as
subprocesses, as in ``bench_serving`` (c), once with transactions on (each batch's outputs
and offsets in one Kafka transaction, readers ``read_committed``) and once with them off
(``STREAMLOOP_{INGEST,SERVING}_TRANSACTIONS__ENABLED=false``), alternating for ``--rounds``
rounds (default 2) so that drift of the machine falls on both. Per mode: the saturation
rate (``--frames`` published at once, the faster of two bursts) and the latency from
capture to the prediction's record at a fixed ``--rate`` frames/s (default 40, the rate of
a few cameras), p50 and p99. The table gives each mode's best round and the ratios. Frames
at 200 a second warm the broker for ``--warm-s`` seconds before the first run (90) and for a
third of that before each later one: a broker just started spends several times its settled
CPU for a minute or two, which would otherwise fall on the first mode's first round.

A measurement, not a test: it exits 0 whatever the figures, 1 only when a part failed.
Figures go to ``var/bench/transactions.json``.
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
from rich.table import Table

from services.serving.settings import ServingSettings
from tests.bench.lib.control import preflight, workdir
from tests.bench.lib.e2e import measured_run, warm_seconds
from tests.bench.lib.fixtures import make_fixture
from tests.bench.lib.procs import MemorySampler, load_average
from tests.bench.lib.report import write_figures
from tests.bench.lib.transactions import MODES, best, env_of, figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=2000, help="saturation burst (2000)")
    ap.add_argument("--rate", type=float, default=40.0, help="paced frames/s (40)")
    ap.add_argument("--paced-s", type=float, default=20.0, help="seconds of the paced stream")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of on and off (2)")
    ap.add_argument(
        "--warm-s", type=float, default=90.0, help="seconds of frames before the first run (90)"
    )
    args = ap.parse_args(argv)
    if args.warm_s < 0:
        ap.error("--warm-s is at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    console = Console(soft_wrap=True)
    runtime = ServingSettings().runtime
    console.print(
        f"bench_transactions: {args.rounds} rounds of transactions on and off; "
        f"{args.frames:,} frames at saturation, {args.rate:g}/s for {args.paced_s:g} s; "
        f"{os.cpu_count()} CPUs, load average {load_average()}"
    )
    preflight(console)
    sampler = MemorySampler()
    sampler.start()
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    failed = False
    try:
        with workdir() as work:
            root = work / "artifacts"
            fx = make_fixture(console, root, 400, f"bench-tx-{uuid.uuid4().hex[:6]}", runtime)
            for k in range(args.rounds):
                for j, mode in enumerate(MODES):
                    out = measured_run(
                        console,
                        f"round {k + 1}: transactions {mode}",
                        fx,
                        root,
                        work,
                        sampler,
                        frames=args.frames,
                        paced_s=args.paced_s,
                        sample_ratio=0.01,
                        levels=(),
                        rates=(args.rate,),
                        bursts=2,
                        env=env_of(mode),
                        warm_s=warm_seconds(k * len(MODES) + j, args.warm_s),
                    )
                    failed = failed or "error" in out
                    runs[mode].append({**figures(out), "raw": out})
    finally:
        sampler.stop()
    summary = {mode: best(rs) for mode, rs in runs.items()}
    table = Table("transactions", "saturation frames/s", f"p50 at {args.rate:g}/s", "p99", "dup.")
    for mode, s in summary.items():
        dups = [r.get("duplicates") for r in runs[mode]]
        table.add_row(
            mode,
            f"{s['frames_per_s']:,.0f}" if s["frames_per_s"] else "-",
            f"{s['p50_ms']:.0f} ms" if s["p50_ms"] else "-",
            f"{s['p99_ms']:.0f} ms" if s["p99_ms"] else "-",
            ", ".join(str(d) for d in dups),
        )
    console.print(table)
    on, off = summary["on"], summary["off"]
    ratios: dict[str, float] = {}
    if on["frames_per_s"] and off["frames_per_s"]:
        ratios["throughput_on_over_off"] = round(on["frames_per_s"] / off["frames_per_s"], 3)
    if on["p99_ms"] and off["p99_ms"]:
        ratios["p99_on_over_off"] = round(on["p99_ms"] / off["p99_ms"], 3)
    for name, value in ratios.items():
        console.print(f"{name}: {value}")
    path = write_figures(
        "transactions",
        {
            "at": datetime.now(UTC).isoformat(),
            "settings": vars(args),
            "runtime": runtime,
            "load_average": load_average(),
            "summary": summary,
            "ratios": ratios,
            "runs": {
                m: [{k: v for k, v in r.items() if k != "raw"} for r in rs]
                for m, rs in runs.items()
            },
            "raw": {m: [r["raw"] for r in rs] for m, rs in runs.items()},
        },
    )
    console.print(f"figures written to {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
