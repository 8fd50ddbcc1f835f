"""Benchmark: what a camera's ``FramePublisher`` costs, itself and the broker, at a paced rate,
by how long a frame waits for others to share its request (``linger_ms``).

    python -m tests.bench.bench_publisher [--rate R] [--seconds S] [--lingers 5,20] [--quick]

A camera does not burst: its frames come one by one, and with a short linger each goes to
the broker in a request of its own. Each setting publishes the same rendered 64x64 PNG (eight
cameras, keyed by camera) at ``--rate`` frames/s for ``--seconds`` to a ``frames.raw`` of its
own, then flushes; the broker's CPU (from /proc, found by its listening port) and this
process's (the publisher's sender thread included) are divided by the frames. The broker's
JIT warms up over the first minutes, which flatters whatever runs later, so the settings
run in a mirrored order (A B B A ...) and each is reported as the median of its runs.
Figures go to ``var/bench/publisher.json``. A measurement, never a test.
"""

from __future__ import annotations

import argparse
import sys

from shared.sdk import FRAME_LINGER_MS
from shared.settings import KafkaSettings
from tests.bench.lib.procs import broker_pid, load_average
from tests.bench.lib.publisher import frame_png, mirrored, one_run, summarise, table
from tests.bench.lib.report import write_figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_publisher", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--rate", type=float, default=245.0, help="frames/s (245)")
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds a run (15)")
    ap.add_argument(
        "--lingers",
        default=f"5,{FRAME_LINGER_MS}",
        help=f"linger_ms settings, comma-separated (5,{FRAME_LINGER_MS})",
    )
    ap.add_argument("--repeats", type=int, default=4, help="runs of each setting (4)")
    ap.add_argument("--quick", action="store_true", help="2 s runs, 2 of each setting")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats = 2.0, 2
    lingers = [int(x) for x in args.lingers.split(",")]
    if args.rate <= 0 or args.seconds <= 0 or args.repeats < 1 or min(lingers) < 0:
        ap.error("--rate and --seconds positive, --repeats at least 1, lingers not negative")
    kafka = KafkaSettings()
    broker = broker_pid(kafka)
    if broker is None:
        print(f"bench_publisher: no local broker at {kafka.bootstrap_servers}", file=sys.stderr)
        return 1
    png = frame_png()
    order = mirrored(lingers, args.repeats)
    print(
        f"bench_publisher: {len(png):,} B frames at {args.rate:g}/s, {args.seconds:g} s a run,"
        f" lingers in the order {order}; load average {load_average()}",
        flush=True,
    )
    runs = []
    for i, linger in enumerate(order, 1):
        run = one_run(kafka, broker, png, linger, args.rate, args.seconds)
        runs.append(run)
        print(
            f"  run {i}/{len(order)}: linger {linger} ms, broker {run['broker_cores']:.3f} "
            f"cores, publisher {run['publisher_cores']:.3f}",
            flush=True,
        )
    rows = summarise(runs)
    print(table(rows))
    path = write_figures(
        "publisher",
        {
            "rate": args.rate,
            "seconds": args.seconds,
            "order": order,
            "runs": runs,
            "rows": rows,
            "png_bytes": len(png),
            "load_average_end": load_average(),
        },
    )
    print(f"figures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
