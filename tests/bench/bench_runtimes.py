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
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from services.simulator.render import CONDITIONS
from services.training.settings import Hyperparameters
from services.training.trainer import fit
from shared.artifacts import ArtifactStore
from shared.model import ModelSpec, example_pixels, load_model
from shared.runtimes import (
    EXPORT_FORMATS,
    EXPORT_KIND,
    EXPORT_SUFFIX,
    TOLERANCE,
    EagerRuntime,
    InferenceRuntime,
    compare,
    export_model,
    load_runtime,
)
from shared.settings import TaskSettings, default_var_dir
from tests.synthetic import render_examples

THREADS = 2
BATCHES = (1, 32, 128)
SEED = 23
WARMUP_CALLS = 5


@dataclass
class Row:
    runtime: str
    export_s: float | None = None
    load_s: float | None = None
    size_bytes: int | None = None
    images: int = 0
    same_class: bool | None = None
    max_abs_diff: float | None = None
    frames_per_s: dict[int, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def agrees(self) -> bool:
        return (
            bool(self.same_class)
            and self.max_abs_diff is not None
            and self.max_abs_diff <= TOLERANCE
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_runtimes")
    ap.add_argument("--train-examples", type=int, default=400, help="model's examples (400)")
    ap.add_argument("--images", type=int, default=512, help="agreement frames (512)")
    ap.add_argument("--seconds", type=float, default=1.0, help="per measuring round (1.0)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per runtime and batch (3)")
    return ap.parse_args(argv)


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def rendered(n: int, seed: int, spec: ModelSpec, prefix: str) -> tuple[Any, Any]:
    examples = render_examples(
        n,
        seed=seed,
        condition=lambda i: CONDITIONS[i % len(CONDITIONS)],
        classes=spec.classes,
        prefix=prefix,
    )
    pixels = np.stack([example_pixels(e.pixels_b64, 64, 64, 3) for e in examples])
    labels = np.asarray([spec.classes.index(e.label) for e in examples], dtype=np.int64)
    return pixels, labels


def rate(runtime: InferenceRuntime, pixels: npt.NDArray[np.uint8], batch: int, s: float) -> float:
    """Frames per second of ``runtime`` on consecutive ``batch``-frame slices for ``s`` seconds."""
    slices = [
        np.ascontiguousarray(pixels[i : i + batch])
        for i in range(0, len(pixels) - batch + 1, batch)
    ]
    frames, calls = 0, 0
    start = time.perf_counter()
    while True:
        runtime.predict_proba(slices[calls % len(slices)])
        frames += batch
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= s:
            return frames / elapsed


def fmt_rate(x: float | None) -> str:
    return "failed" if x is None else f"{x:,.0f}"


def fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:,.0f} KiB" if n < 2**20 else f"{n / 2**20:,.1f} MiB"


def table(rows: list[Row]) -> str:
    eager = rows[0].frames_per_s
    head = (
        "| runtime | agrees | max \\|Δp\\| | "
        + " | ".join(f"frames/s @{b}" for b in BATCHES)
        + " | ratio to eager @"
        + "/".join(str(b) for b in BATCHES)
        + " | export s | load s | artifact |"
    )
    lines = [head, "|:---|:---|---:|" + "---:|" * len(BATCHES) + "---:|---:|---:|---:|"]
    for r in rows:
        ratios = "/".join(
            f"{r.frames_per_s[b] / eager[b]:.2f}" if b in r.frames_per_s and b in eager else "-"
            for b in BATCHES
        )
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}"
        agrees = "reference" if r.runtime == "eager" else ("yes" if r.agrees else "**no**")
        lines.append(
            f"| {r.runtime} | {agrees} | {diff} | "
            + " | ".join(fmt_rate(r.frames_per_s.get(b)) for b in BATCHES)
            + f" | {ratios} | "
            + ("-" if r.export_s is None else f"{r.export_s:.1f}")
            + " | "
            + ("-" if r.load_s is None else f"{r.load_s:.2f}")
            + f" | {fmt_size(r.size_bytes)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(THREADS)
    task = TaskSettings()
    spec = ModelSpec(
        classes=task.classes, image_height=task.image_height, image_width=task.image_width
    )
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
        train_pixels, train_labels = rendered(args.train_examples, SEED, spec, "train")
        result = fit(
            spec,
            train_pixels,
            train_labels,
            Hyperparameters(epochs=1),
            seed=SEED,
            time_budget_s=60,
            threads=THREADS,
        )
        weights = store.put_weights(result.state_dict, spec.to_metadata({"seed": str(SEED)}))
        network, _ = load_model(store, weights.uri, weights.sha256)
        test_pixels, test_labels = rendered(args.images, SEED + 1, spec, "test")
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
                t = time.perf_counter()
                data = export_model(network, spec, fmt)
                row.export_s = time.perf_counter() - t
                ref = store.put_bytes(data, EXPORT_KIND, EXPORT_SUFFIX[fmt])
                row.size_bytes = ref.size
                t = time.perf_counter()
                runtime = load_runtime(fmt, store.read_verified(ref.uri, ref.sha256), THREADS)
                row.load_s = time.perf_counter() - t
            except Exception as exc:  # noqa: BLE001 - report it and measure the others
                failed = True
                row.error = f"{type(exc).__name__}: {exc}"
                print(f"{fmt}: failed: {row.error}")
                continue
            agreement = compare(reference, runtime.predict_proba(test_pixels))
            row.images = agreement.images
            row.same_class = agreement.same_class
            row.max_abs_diff = agreement.max_abs_diff
            runtimes[fmt] = runtime
            print(
                f"{fmt}: exported in {row.export_s:.1f} s ({fmt_size(row.size_bytes)}), loaded "
                f"in {row.load_s:.2f} s; same class on all {agreement.images} frames: "
                f"{agreement.same_class}; max |Δp| {agreement.max_abs_diff:.1e}"
            )

        by_name = {r.runtime: r for r in rows}
        for batch in BATCHES:
            warm = np.ascontiguousarray(test_pixels[:batch])
            for runtime in runtimes.values():
                for _ in range(WARMUP_CALLS):
                    runtime.predict_proba(warm)
            best: dict[str, float] = {}
            for _ in range(args.rounds):
                for name, runtime in runtimes.items():
                    fps = rate(runtime, test_pixels, batch, args.seconds)
                    best[name] = max(best.get(name, 0.0), fps)
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
        "runtimes": {
            r.runtime: {
                "agrees": r.agrees,
                "images": r.images,
                "same_class": r.same_class,
                "max_abs_diff": r.max_abs_diff,
                "frames_per_s": {str(b): round(v, 1) for b, v in r.frames_per_s.items()},
                "ratio_to_eager": {
                    str(b): round(v / rows[0].frames_per_s[b], 3)
                    for b, v in r.frames_per_s.items()
                    if rows[0].frames_per_s.get(b)
                },
                "export_s": None if r.export_s is None else round(r.export_s, 2),
                "load_s": None if r.load_s is None else round(r.load_s, 3),
                "artifact_bytes": r.size_bytes,
                "error": r.error,
            }
            for r in rows
        },
    }
    out = default_var_dir() / "bench" / "runtimes.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"figures written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
