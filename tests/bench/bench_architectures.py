"""Benchmark: the architectures a model may have, side by side at the task's input size.

    python -m tests.bench.bench_architectures [--architectures A [A ...]] [--runtime R]
                                              [--train-examples N] [--seconds S]
                                              [--e2e-frames N] [--paced-s S] [--quick]

The architectures (by default the built-in CNN ``streamloop-cnn-v1``, then torchvision's
``resnet18``, ``mobilenet_v3_small`` and ``efficientnet_b0``, trained from scratch) are
measured at the task's input size (``STREAMLOOP_TASK_IMAGE_*``, 64x64 by default; the
renderer draws 64x64 frames, so the benchmark refuses another), in three passes, so that
nothing measured in process overlaps Ray starting or stopping: steps 1 and 2 for every
architecture, then steps 3 and 4 for every architecture, then step 2 again for every
architecture.

1. the model: the spec training gives a new model of that architecture
   (``ModelSpec.for_architecture``), its parameters and FLOPs per image (``model_cost``);
   one epoch of ``services.training.trainer.fit`` (default hyperparameters, 2 torch threads)
   on ``--train-examples`` rendered examples of the four conditions; the weights stored as
   safetensors, then exported for the runtime measured as training does it
   (``shared.runtimes.export_model``, ``--runtime``, by default serving's: onnx) and checked
   against eager on 256 fresh frames (``tests.bench.lib.fixtures.make_fixture``, the model of
   ``bench_serving``). Training seconds per 1,000 examples per epoch = the seconds of the
   epoch alone (``EpochStats.elapsed_s``: no rendering, no network building, no batch-norm
   recalibration; the whole fit, recalibration included, is in the figures as ``fit_s``)
   x 1,000 / examples. Artifact sizes: the stored safetensors and export, in bytes;
2. in process: ``ServingCore.probabilities`` with the runtime (2 threads) on batches of 128
   of the 256 fresh frames, ``--seconds`` after a warm-up (part (a) of ``bench_serving``);
   the better of its two runs is the ceiling;
3. end to end: part (c) of ``bench_serving`` on topics of its own: ingest and serving (Ray
   backend, 1 replica of 1 CPU and 2 threads, the runtime; serving must report loading the
   champion with it) as subprocesses; ``--e2e-frames`` PNG frames published as fast as
   possible give the saturation rate (predictions after the first model call / seconds from
   the first to the last ``served_at``); then one paced stream at 50 % of that rate for
   ``--paced-s`` seconds gives each frame's latency from its ``captured_at`` to its
   prediction record's Kafka timestamp, of which the p99 is reported;
4. replica memory: while step 3 runs, /proc is read every 0.5 s; the figure is the peak RSS
   of the Ray Serve replica (the worker named ``ray::ServeReplica:...`` below the serving
   process), which has loaded the model with the runtime and answered every frame of step 3,
   and its PSS at that peak. It includes the Ray worker's own interpreter and libraries,
   the same for every architecture: the differences between rows are the model's.

Every ratio is to the built-in CNN's figure of the same run. The cost of fitting a 1080p JPEG
to each input size (64x64, 128x128, 224x224) against decoding it is ``bench_images``'s.
Everything shares the machine's CPUs with Kafka, Redis and this process; the load average is
recorded. ``--quick`` (256 training examples, 2 s in process, 600 frames, 4 s paced; options
given win) is a smoke run; ``--e2e-frames 0`` leaves step 3, and with it step 4, out.

A measurement, not a test: it exits 0 whatever the figures, 1 when a part failed. Every
subprocess is stopped and each run's topics are deleted at its end. Figures go to
``var/bench/architectures.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from datetime import UTC, datetime
from typing import Any

import torch
from rich.console import Console

from services.serving.settings import ServingSettings
from shared.zoo import KNOWN_ARCHITECTURES
from tests.bench.lib.architectures import (
    ARCHITECTURES,
    BASELINE,
    HALF,
    Plan,
    measure_all,
)
from tests.bench.lib.control import preflight, workdir
from tests.bench.lib.fixtures import task_spec
from tests.bench.lib.procs import load_average
from tests.bench.lib.report import architecture_markdown, ratios_to, write_figures
from tests.bench.lib.serving import BATCH, POOL, REPLICA_CPUS, RUNTIMES, TORCH_THREADS

MODULE = "tests.bench.bench_architectures"
DEFAULTS = {"train_examples": 400, "seconds": 4.0, "e2e_frames": 2000, "paced_s": 10.0}
QUICK = {"train_examples": 256, "seconds": 2.0, "e2e_frames": 600, "paced_s": 4.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="The architectures side by side: ceiling, end to end, p99, training, size.",
    )
    ap.add_argument(
        "--architectures",
        nargs="+",
        choices=KNOWN_ARCHITECTURES,
        default=list(ARCHITECTURES),
        help=f"measured in this order; {BASELINE} is always measured first (the ratios' base)",
    )
    default_runtime = ServingSettings().runtime
    ap.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=default_runtime,
        help=f"inference runtime measured (default: serving's, {default_runtime})",
    )
    ap.add_argument("--train-examples", type=int, help="one epoch on these (400)")
    ap.add_argument("--seconds", type=float, help="each in-process run (4)")
    ap.add_argument("--e2e-frames", type=int, help="saturation burst (2000; 0: no end to end)")
    ap.add_argument("--paced-s", type=float, help="the paced stream at 50 %% (10)")
    ap.add_argument(
        "--sample-ratio", type=float, default=1.0, help="services' trace sampling (1.0, default)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 256 training examples, 2 s in process, 600 frames, 4 s paced "
        "(the options given win)",
    )
    args = ap.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.e2e_frames and args.e2e_frames < 2 * BATCH:
        ap.error(f"--e2e-frames is 0 or at least {2 * BATCH}")
    if args.train_examples < 2 or args.seconds <= 0 or args.paced_s <= 0:
        ap.error("--train-examples at least 2; --seconds and --paced-s positive")
    if not 0.0 <= args.sample_ratio <= 1.0:
        ap.error("--sample-ratio is between 0 and 1")
    args.architectures = list(dict.fromkeys([BASELINE, *args.architectures]))
    return args


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    spec = task_spec()
    return {
        "architectures": args.architectures,
        "input": f"{spec.image_width}x{spec.image_height}",
        "runtime": args.runtime,
        "train_examples": args.train_examples,
        "epochs": 1,
        "seconds": args.seconds,
        "batch": BATCH,
        "fresh_frames": POOL,
        "torch_threads": TORCH_THREADS,
        "replica_cpus": REPLICA_CPUS,
        "replicas": 1,
        "e2e_frames": args.e2e_frames,
        "paced_load": HALF,
        "paced_s": args.paced_s,
        "sample_ratio": args.sample_ratio,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    console = Console(soft_wrap=True)
    started = datetime.now(UTC)
    wall_start = time.perf_counter()
    load_start = load_average()
    console.print(
        f"bench_architectures: {', '.join(args.architectures)}; runtime {args.runtime}, "
        f"{args.train_examples} training examples, "
        + (
            f"{args.e2e_frames:,} frames at saturation, {args.paced_s:g} s paced at {HALF:.0%}"
            if args.e2e_frames
            else "no end to end"
        )
        + f"; {os.cpu_count()} CPUs, load average {load_start} (timings move with other work)"
    )
    if args.e2e_frames:
        preflight(console)
    plan = Plan(
        runtime=args.runtime,
        train_examples=args.train_examples,
        seconds=args.seconds,
        e2e_frames=args.e2e_frames,
        paced_s=args.paced_s,
        sample_ratio=args.sample_ratio,
    )
    with workdir("bench-architectures-") as work:
        entries = measure_all(console, args.architectures, plan, work)
    baseline = entries[0]["figures"]
    for entry in entries:
        entry["ratios"] = ratios_to(baseline, entry["figures"])
    failed = any(e.get("error") or e.get("end_to_end_error") for e in entries)

    wall_s = time.perf_counter() - wall_start
    load_end = load_average()
    doc = {
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "wall_s": round(wall_s, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average": {"start": load_start, "end": load_end},
        "settings": settings_of(args),
        "baseline": BASELINE,
        "architectures": entries,
    }
    console.print("")
    console.out(architecture_markdown(doc), highlight=False)
    console.print(
        f"whole run: {wall_s:.0f} s; load average at start {load_start}, at end {load_end}"
    )
    out = write_figures("architectures", doc)
    console.print(f"figures written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
