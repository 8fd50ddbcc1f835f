"""The tables of ``make bench``: serving's throughput, latency, CPU per stage and memory, then
the architectures side by side.

    python -m tests.bench.bench_report [--since EPOCH_S] [--out PATH]

Reads what ``bench_serving`` (``var/bench/serving.json``) and ``bench_profile``
(``var/bench/profile.json``) wrote and prints them as one Markdown table:

- throughput in frames/s with the ratio to the ceiling: (a) the serving core in process (the
  ceiling), (a') the same with torch eager, (b) the Ray Serve deployment alone through its
  handle, (b') with two calls in flight, (c) the full path ``frames.raw`` -> ingest ->
  ``frames.valid`` -> serving -> ``predictions``;
- latency from publish to the prediction record, p50/p95/p99, at 25, 50 and 90 % of (c);
- CPU time per frame of every stage of the path, from the profiler run, and of every process
  during (c)'s saturation burst;
- peak resident memory of each process (Ray's as PSS, so shared pages count once);
- the targets, met or not.

Then what ``bench_architectures`` wrote (``var/bench/architectures.json``) as a second table,
one row per architecture: parameters, FLOPs per image, in-process and end-to-end frames/s, p99
at half saturation, training seconds per 1,000 examples per epoch, weights and export sizes,
the replica's peak memory, each with its ratio to the built-in CNN of the same run.

``--since`` (seconds since the epoch; ``make bench`` passes its start) refuses figures
written before it, so the tables are always from one run. They are also written to
``--out`` (``var/bench/report.md``). Exits 1 when a figure file is missing or stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.bench.lib.report import FiguresError, bench_dir, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--since", type=float, default=None)
    parser.add_argument("--dir", type=Path, default=bench_dir())
    parser.add_argument("--out", type=Path, default=bench_dir() / "report.md")
    args = parser.parse_args(argv)
    try:
        text = summary(args.dir, args.since, args.out)
    except FiguresError as exc:
        print(f"bench_report: {exc}", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
