"""Benchmark: the serving model on each inference runtime (torch eager, ONNX Runtime, AOTInductor).

    python -m tests.bench.bench_runtimes [--train-examples N] [--images N] [--seconds S]

One small model is trained first the way ``bench_serving`` trains it (one epoch on a few
hundred rendered 64x64 examples) and its weights are stored in a temporary artifact store.
Then, for each runtime:

- export (training's work, timed): ``shared.runtimes.export_model``, the graph from uint8
  pixels to probabilities as ONNX (``torch.onnx.export``, dynamo) or as an AOTInductor package
  (``torch.export`` then ``aoti_compile_and_package``, a C++ compile); stored with the artifact
  store, whose size is reported. Eager has no export: it is the safetensors weights;
- load (serving's work, timed): sha256-verified bytes to a runtime, as ``ServingCore`` does;
- agreement with eager on ``--images`` fresh rendered frames (not trained on): the same most
  probable class for every frame, and the largest absolute difference of any probability
  (the bar: at most 1e-4);
- throughput: ``predict_proba`` on consecutive batches of 1, 32 and 128 frames, 2 threads
  (torch intra-op threads, and ONNX Runtime's intra-op threads), after a warm-up of a few
  calls. Each (runtime, batch size) is measured in ``--rounds`` rounds of ``--seconds``,
  runtimes interleaved, and the best round is kept: other work on a shared machine only ever
  lowers a rate. frames/s = frames predicted / wall seconds of the round, pixels already in
  memory (no decoding, no transport).

A measurement, not a test: it exits 0 whatever the figures, 1 only when a runtime failed to
export or load. Figures go to ``var/bench/runtimes.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from shared.artifacts import ArtifactStore
from shared.model import load_model
from shared.runtimes import EXPORT_FORMATS, TOLERANCE, EagerRuntime, InferenceRuntime
from tests.bench.lib.fixtures import render_pixels, task_spec, train_weights
from tests.bench.lib.procs import load_average
from tests.bench.lib.report import fmt_size, write_figures
from tests.bench.lib.runtimes import (
    BATCHES,
    SEED,
    THREADS,
    Row,
    best_rates,
    export_and_load,
    runtimes_doc,
    table,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_runtimes")
    ap.add_argument("--train-examples", type=int, default=400, help="model's examples (400)")
    ap.add_argument("--images", type=int, default=512, help="agreement frames (512)")
    ap.add_argument("--seconds", type=float, default=1.0, help="per measuring round (1.0)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per runtime and batch (3)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(THREADS)
    spec = task_spec()
    if (spec.image_height, spec.image_width) != (64, 64):
        print("the renderer draws 64x64 frames; set STREAMLOOP_TASK_IMAGE_* to 64")
        return 1
    started = datetime.now(UTC)
    load_start = load_average()
    print(
        f"bench_runtimes: torch {torch.__version__}, {os.cpu_count()} CPUs, {THREADS} threads, "
        f"load average {load_start} (timings move with other work)"
    )
    failed = False
    with tempfile.TemporaryDirectory(prefix="streamloop-bench-runtimes-") as tmp:
        store = ArtifactStore(Path(tmp))
        t0 = time.perf_counter()
        weights = train_weights(store, spec, args.train_examples, SEED, THREADS, prefix="train")
        network, _ = load_model(store, weights.uri, weights.sha256)
        test_pixels, test_labels = render_pixels(args.images, SEED + 1, spec.classes, "test")
        eager = EagerRuntime(network)
        reference = eager.predict_proba(test_pixels)
        accuracy = float((reference.argmax(axis=1) == test_labels).mean())
        print(
            f"model trained on {args.train_examples} examples (1 epoch) in "
            f"{time.perf_counter() - t0:.1f} s; accuracy on {args.images} fresh frames "
            f"{accuracy:.2f}"
        )

        rows = [Row("eager", size_bytes=weights.size, images=len(reference), same_class=True)]
        rows[0].max_abs_diff = 0.0
        runtimes: dict[str, InferenceRuntime] = {"eager": eager}
        for fmt in EXPORT_FORMATS:
            row = Row(fmt)
            rows.append(row)
            try:
                runtimes[fmt] = export_and_load(
                    row, network, spec, fmt, store, reference, test_pixels
                )
            except Exception as exc:  # noqa: BLE001 - report it and measure the others
                failed = True
                row.error = f"{type(exc).__name__}: {exc}"
                print(f"{fmt}: failed: {row.error}")
                continue
            print(
                f"{fmt}: exported in {row.export_s:.1f} s ({fmt_size(row.size_bytes)}), loaded "
                f"in {row.load_s:.2f} s; same class on all {row.images} frames: "
                f"{row.same_class}; max |Δp| {row.max_abs_diff:.1e}"
            )

        by_name = {r.runtime: r for r in rows}
        for batch in BATCHES:
            best = best_rates(runtimes, test_pixels, batch, args.rounds, args.seconds)
            for name, fps in best.items():
                by_name[name].frames_per_s[batch] = fps
            print(f"batch {batch}: " + ", ".join(f"{n} {v:,.0f}/s" for n, v in best.items()))

    load_end = load_average()
    print()
    print(table(rows))
    print(f"\nload average before {load_start}, after {load_end}")
    doc = {
        "benchmark": "bench_runtimes",
        "started_at": started.isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "load_average_start": load_start,
            "load_average_end": load_end,
        },
        "settings": {
            "threads": THREADS,
            "batches": list(BATCHES),
            "train_examples": args.train_examples,
            "images": args.images,
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "tolerance": TOLERANCE,
        },
        "model": {"sha256": weights.sha256, "fresh_accuracy": round(accuracy, 4)},
        "runtimes": runtimes_doc(rows),
    }
    out = write_figures("runtimes", doc)
    print(f"figures written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
