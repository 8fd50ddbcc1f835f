"""Benchmark: the fit locally and on Ray Train with one and two workers, per architecture.

    python -m tests.bench.bench_ray_train [--examples N] [--architectures NAME ...]

On the simulator's frames (``--examples``, default 1,200, 64x64), with the training defaults
(batch 64, Adam) for three epochs, each of:

- **local**: ``services.training.trainer.fit`` in this process with 2 torch threads;
- **ray 1 / ray 2**: ``RayFitter`` on a local Ray of this machine's CPUs with one and two
  workers (one CPU and one torch thread each; gloo between them).

Per run: seconds per 1,000 examples per epoch (the mean of epochs 2 and 3: epoch 1 of a Ray
run also waits for its workers), and for Ray the fixed overhead, the seconds of the whole
fit beyond its epochs (starting the worker group, the object store's shards, checkpoints,
recomputing batch-norm statistics). A measurement, not a test: it exits 0 whatever the
figures. Figures go to ``var/bench/ray_train.json``.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import UTC, datetime
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from services.training.ray_fit import RayFitter
from services.training.settings import Hyperparameters, RayTrainSettings
from services.training.trainer import FitResult, fit
from shared.model import ModelSpec
from shared.ray_cluster import init_ray
from tests.bench.lib.procs import load_average
from tests.bench.lib.report import write_figures
from tests.synthetic import CLASSES, render_examples, table_of

ARCHITECTURES = ("streamloop-cnn-v1", "mobilenet_v3_small")
EPOCHS = 3


def per_thousand(result: FitResult, n: int) -> float:
    """Seconds per 1,000 examples per epoch, over the epochs after the first."""
    times = [b.elapsed_s - a.elapsed_s for a, b in zip(result.history, result.history[1:])]
    return sum(times) / len(times) / n * 1000


def overhead(result: FitResult, n: int) -> float:
    """The fit's seconds beyond its epochs at the steady per-epoch pace."""
    return result.duration_s - len(result.history) * per_thousand(result, n) * n / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1200)
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES))
    args = parser.parse_args(argv)
    console = Console()
    console.rule("[bold]training: local against Ray Train")
    frames = table_of(render_examples(args.examples, seed=1, condition=lambda i: "day"))
    pixels = frames.pixels
    labels = np.asarray([CLASSES.index(r.label) for r in frames.records], dtype=np.int64)
    hp = Hyperparameters(epochs=EPOCHS)
    init_ray(None)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as storage:
        for arch in args.architectures:
            spec = ModelSpec.for_architecture(arch, CLASSES, 64, 64)
            runs: dict[str, Any] = {"local": None, "ray 1": 1, "ray 2": 2}
            for name, workers in runs.items():
                console.print(f"{arch}: {name} ...")
                if workers is None:
                    result = fit(spec, pixels, labels, hp, seed=0, time_budget_s=3600, threads=2)
                else:
                    fitter = RayFitter(RayTrainSettings(workers=workers, gpu="off"), storage)
                    result = fitter(spec, pixels, labels, hp, seed=0, time_budget_s=3600, threads=1)
                row = {
                    "architecture": arch,
                    "run": name,
                    "workers": workers or 0,
                    "s_per_1000_per_epoch": round(per_thousand(result, len(labels)), 3),
                    "fixed_overhead_s": round(overhead(result, len(labels)), 1),
                    "fit_s": round(result.duration_s, 1),
                    "train_accuracy": round(result.final.accuracy, 3),
                }
                rows.append(row)
                console.print(f"  {row}")
    out = Table("architecture", "run", "s / 1,000 / epoch", "vs local", "fixed overhead", "fit")
    for row in rows:
        local = next(
            r for r in rows if r["architecture"] == row["architecture"] and r["run"] == "local"
        )
        out.add_row(
            row["architecture"],
            row["run"],
            f"{row['s_per_1000_per_epoch']:.2f}",
            f"{row['s_per_1000_per_epoch'] / local['s_per_1000_per_epoch']:.2f}x",
            f"{row['fixed_overhead_s']:.1f} s" if row["workers"] else "-",
            f"{row['fit_s']:.1f} s",
        )
    console.print(out)
    doc = {
        "at": datetime.now(UTC).isoformat(),
        "load_average": load_average(),
        "examples": args.examples,
        "epochs": EPOCHS,
        "rows": rows,
    }
    console.print(f"figures written to {write_figures('ray_train', doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
