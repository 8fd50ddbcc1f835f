"""Benchmark: serving throughput in process, through Ray Serve and end to end; latency under load.

    python -m tests.bench.bench_serving [--runtime R] [--backend B] [--frames N] [--paced-s S]
                                        [--warm-s W] [--sample-ratio F] [--quick]

One small model is trained first (one epoch on a few hundred rendered 64x64 examples) and
stored in a temporary artifact store, then exported for the inference runtime measured
(``--runtime``, by default serving's: ``ServingSettings().runtime``) the way training does
it: ``shared.runtimes.export_model``, stored as an export artifact, checked against eager on
the frames used throughout and named in the ``models.trained`` event the benchmark announces.
``eager`` needs no export. Then, one step after the other:

(a) in process: ``ServingCore.probabilities`` with that runtime (ONNX Runtime's intra-op
    threads or torch's: 2) on batches of 128 frames, for a few seconds after a warm-up: the
    CPU ceiling of the model on this machine, as deployed. Measured before (b) and again
    after (c); the better run is the ceiling (other work on a small machine only ever lowers
    it). A call with one frame shows the fixed cost of a call. (a') is the same with
    ``eager``, measured beside it, so the runtime's gain stays visible; every ratio is to (a);
(b) Ray Serve: a local Ray started in this process the way ``services.serving`` starts it,
    ``serve.run(build_app(settings))`` with 1 replica (1 CPU, 2 threads, the runtime measured),
    called through its handle with the same batches, one call at a time (what the Kafka
    ingress does), then with two calls in flight; Ray is shut down afterwards. The replica's
    first answer is compared with the in-process runtime's and with eager's;
(c) end to end, on topics of the run's own (``bench<hex>.``): the ingest service and the
    serving service (``--backend``: by default ``ray``, with the same replica settings;
    ``local`` runs the model in the serving process, without Ray; ``STREAMLOOP_SERVING_RUNTIME``
    set to the runtime measured) run as subprocesses with their default telemetry; the model is
    announced on ``models.lifecycle`` (``registered``, its details naming the export, then
    ``alias_set champion``) and serving must report loading it with that runtime; a warm-up
    goes through, then ``--warm-s`` seconds of frames at 200 a second while the broker
    compiles its hot paths (the broker's CPU and the machine's printed every 15 s: a broker
    just started spends several times its settled CPU for a minute or two, which would
    otherwise count against StreamLoop's measures and not the peer's), then N PNG frames
    (simulator renderer, ``FramePublisher``) are published to ``frames.raw`` as fast as
    possible. Saturation rate = predictions after the first model
    call / seconds from the first to the last ``served_at``. Then three paced streams, one
    after the other, at 25 %, 50 % and 90 % of that rate, each for ``--paced-s`` seconds (the
    next starts once every prediction of the previous one has arrived); each frame's latency
    is taken from its ``captured_at`` (set when it is published) to its prediction: to
    ``served_at``, to the prediction record's Kafka timestamp (the target's measure), and to
    its receipt by a consumer in this process (p50, p95, p99, max). The CPU time of every
    process involved (from /proc) is taken over each phase; "the stack" sums Kafka, Redis,
    ingest, serving and its Ray (this process stands for the cameras and the consumers of
    predictions), and the CPU targets are the stack's.

(d) the peer (``tests.bench.lib.peer``): the same frames through a one-process Quix Streams
    pipeline a user would write by hand (``infra/peer/quix_peer.py``, in its own environment:
    ``make peer-env``), on the same broker with the same ONNX export, one frame per call; a
    warm-up, then one burst of N frames. Both (c) and (d) are also rated over the middle 80 %
    of their burst by their own served time, and the ratio (c)/(d) is printed.

Peak resident memory is sampled from /proc every 0.5 s: the sum over this process's
descendants whose command line names ``ray::``, ``raylet`` or ``gcs_server``; the sum over
every process below the Ray driver (Ray also runs Python helpers those names miss), with its
PSS (shared pages counted once; an RSS sum counts them in every process); the Ray Serve
replica (``ray::ServeReplica:...``) alone, with its PSS; the serving process; the ingest
process. Everything shares the machine's CPUs with Kafka, Redis and this
process (which publishes and reads the predictions), as a one-machine deployment would.

A measurement, not a test: it exits 0 whatever the figures, 1 only when a part failed.
Every subprocess is stopped and the run's topics are deleted at the end. Figures go to
``var/bench/serving.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from services.serving.settings import ServingSettings
from shared.settings import TelemetrySettings
from tests.bench.lib.control import preflight, workdir
from tests.bench.lib.e2e import bench_end_to_end
from tests.bench.lib.fixtures import Fixture, make_fixture
from tests.bench.lib.peer import bench_peer, peer_ratio
from tests.bench.lib.procs import MemorySampler, load_average
from tests.bench.lib.report import write_figures
from tests.bench.lib.serving import (
    BATCH,
    LOAD_LEVELS,
    POOL,
    REPLICA_CPUS,
    RUNTIMES,
    SEED,
    TORCH_THREADS,
    bench_inprocess,
    bench_ray,
    complete,
    first_batch_references,
    markdown,
    measured_runtimes,
    target_lines,
)

MODULE = "tests.bench.bench_serving"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Serving throughput in process, through Ray Serve and end to end; latency.",
    )
    default_runtime = ServingSettings().runtime
    ap.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=default_runtime,
        help=f"inference runtime measured (default: serving's, {default_runtime})",
    )
    ap.add_argument(
        "--backend",
        choices=("ray", "local"),
        default="ray",
        help="serving's backend in (c): Ray Serve (default) or the model in its own process",
    )
    ap.add_argument("--frames", type=int, default=3000, help="saturation burst (default 3000)")
    ap.add_argument("--paced-s", type=float, default=20.0, help="seconds of each paced stream (20)")
    ap.add_argument("--seconds", type=float, default=5.0, help="per throughput part (5)")
    ap.add_argument(
        "--warm-s",
        type=float,
        default=90.0,
        help="seconds of frames before (c) is measured, while the broker warms up (90)",
    )
    ap.add_argument("--train-examples", type=int, default=400, help="model's examples (400)")
    ap.add_argument(
        "--sample-ratio",
        type=float,
        default=None,
        help="the share of traces the services record, frames' too (default: their defaults)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="1000 frames, 5 s per paced stream, 3 s parts, 5 s warm-up",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.paced_s, args.seconds, args.warm_s = 1000, 5.0, 3.0, 5.0
    if args.frames < 2 * BATCH or args.paced_s <= 0 or args.seconds <= 0 or args.warm_s < 0:
        ap.error(
            f"--frames must be at least {2 * BATCH}; --paced-s and --seconds positive; "
            "--warm-s at least 0"
        )
    if args.sample_ratio is not None and not 0.0 <= args.sample_ratio <= 1.0:
        ap.error("--sample-ratio is between 0 and 1")
    return args


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    ratio, defaults = args.sample_ratio, TelemetrySettings()
    return {
        "runtime": args.runtime,
        "backend": args.backend,
        "frames": args.frames,
        "paced_s": args.paced_s,
        "load_levels": list(LOAD_LEVELS),
        "seconds": args.seconds,
        "warm_s": args.warm_s,
        "batch": BATCH,
        "torch_threads": TORCH_THREADS,
        "replica_cpus": REPLICA_CPUS,
        "replicas": 1,
        # What the services record: the ratio given, else their own defaults.
        "sample_ratio": ratio if ratio is not None else defaults.sample_ratio,
        "frames_sample_ratio": ratio if ratio is not None else defaults.frames_sample_ratio,
    }


def inprocess(
    console: Console, fx: Fixture, root: Path, seconds: float, results: dict[str, Any], when: str
) -> None:
    """(a) and (a'): before (b) into ``before``; after (c) into ``after``, and the better of
    the two as the rate."""
    for name, key in measured_runtimes(fx).items():
        run = bench_inprocess(console, fx, root, seconds, when, name)
        if key not in results:
            results[key] = {"runtime": name, "before": run}
            continue
        part = results[key]
        part["after"] = run
        part["frames_per_s"] = max(part["before"]["frames_per_s"], run["frames_per_s"])


def measure(
    console: Console, args: argparse.Namespace, sampler: MemorySampler, results: dict[str, Any]
) -> bool:
    """(a), (b), (c), then (a) again, into ``results``; whether (b) or (c) failed."""
    failed = False
    with workdir() as work:
        root = work / "artifacts"
        name = f"bench-serving-{uuid.uuid4().hex[:6]}"
        fx = make_fixture(
            console, root, args.train_examples, name, args.runtime, seed=SEED, pool=POOL
        )
        torch.set_num_threads(TORCH_THREADS)
        references = first_batch_references(fx, root, list(measured_runtimes(fx)))
        sampler.paused = True  # its /proc scans would take from the CPU ceiling
        inprocess(console, fx, root, args.seconds, results, "before (b)")
        sampler.paused = False
        try:
            results["ray"] = bench_ray(console, fx, root, args.seconds, sampler, references)
        except Exception as exc:  # noqa: BLE001 - report it and go on with (c)
            failed = True
            results["ray_error"] = f"{type(exc).__name__}: {exc}"
            console.print(f"[red](b) failed:[/] {results['ray_error']}")
        results["end_to_end"] = {}
        try:
            bench_end_to_end(
                console,
                fx,
                root,
                work,
                sampler,
                results["end_to_end"],
                frames=args.frames,
                paced_s=args.paced_s,
                sample_ratio=args.sample_ratio,
                warm_s=args.warm_s,
                backend=args.backend,
            )
        except Exception as exc:  # noqa: BLE001 - report it, write what was measured
            failed = True
            results["end_to_end_error"] = f"{type(exc).__name__}: {exc}"
            console.print(f"[red](c) failed:[/] {results['end_to_end_error']}")
        results["peer"] = {}
        try:
            bench_peer(console, fx, root, work, results["peer"], frames=args.frames)
        except Exception as exc:  # noqa: BLE001 - report it, keep the rest
            results["peer_error"] = f"{type(exc).__name__}: {exc}"
            console.print(f"[yellow](d) not measured:[/] {results['peer_error']}")
        sampler.paused = True
        inprocess(console, fx, root, args.seconds, results, "again, after (c)")
        results["model"] = {
            "version": fx.ref.version,
            "train_examples": args.train_examples,
            "train_s": round(fx.train_s, 2),
            "fresh_frames": fx.holdout,
            "export": fx.export,
        }
    return failed


def peer_line(results: dict[str, Any]) -> str:
    """StreamLoop's frames/s, the peer's and their ratio (each over the middle of its burst)."""
    ratio = peer_ratio(results)
    if ratio is None:
        return "peer: not measured (" + results.get("peer_error", "no rate") + ")"
    ours = results["end_to_end"]["saturation"]["middle_frames_per_s"]
    theirs = results["peer"]["middle_frames_per_s"]
    return (
        f"peer: StreamLoop end to end {ours:,.0f} frames/s, the one-process Quix Streams peer "
        f"{theirs:,.0f} frames/s (middle 80 % of each burst, by served time): ratio {ratio:.2f} "
        f"(goal 1.5)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    console = Console(soft_wrap=True)
    started = datetime.now(UTC)
    wall_start = time.perf_counter()
    load_start = load_average()
    console.print(
        f"bench_serving: runtime {args.runtime}; {args.frames:,} frames at saturation, "
        f"{args.paced_s:g} s paced at each of "
        + ", ".join(f"{level:.0%}" for level in LOAD_LEVELS)
        + "; "
        f"{os.cpu_count()} CPUs, load average {load_start} (timings move with other work)"
    )
    preflight(console)
    sampler = MemorySampler()
    sampler.start()
    results: dict[str, Any] = {}
    try:
        failed = measure(console, args, sampler, results)
    finally:
        sampler.stop()
    complete(results, settings_of(args), sampler)
    results["ratios"]["c_over_peer"] = peer_ratio(results)

    wall_s = time.perf_counter() - wall_start
    console.print("")
    console.out(markdown(results, sampler), highlight=False)
    console.print("")
    for line in target_lines(results):
        console.out(line, highlight=False)
    console.out(peer_line(results), highlight=False)
    load_end = load_average()
    console.print(
        f"whole run: {wall_s:.0f} s; load average at start {load_start}, at end {load_end}"
    )
    out = write_figures(
        "serving",
        {
            "started_at": started.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "wall_s": round(wall_s, 1),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "load_average": {"start": load_start, "end": load_end},
            **results,
        },
    )
    console.print(f"figures written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
