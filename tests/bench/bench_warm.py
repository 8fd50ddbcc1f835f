"""Benchmark: a warm-start retrain against one from scratch, right after night falls.

    python -m tests.bench.bench_warm [--nights N [N ...]] [--day N]

The demo's situation, with the simulator's renderer and the default training settings: a
champion trained from scratch (8 epochs) on 1,500 day frames; then night falls and the
retrain's example table holds ``--day`` (3,000) other day frames and N night frames (default
70, 140 and 280: roughly what the labels of the first 25, 40 and 70 seconds of night bring).
The request names ``condition=night``. For each N, on the same snapshot and seed:

- **scratch**: 8 epochs of every training example, the night's repeated 4 times;
- **warm**: the champion's weights, 6 focused epochs (the night's examples 4 times and twice
  as many replayed day examples; ``SamplingPolicy.replay_ratio``).

Both are scored on 300 other day and 300 other night frames; ``speed-up`` is the scratch
fit's seconds over the warm fit's. A measurement, not a test: it exits 0 whatever the figures.
Figures go to ``var/bench/warm_start.json``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from services.training.dataset import build_snapshot
from services.training.settings import TrainingSettings
from services.training.trainer import fit
from shared.datasets import ExampleTable
from shared.model import ModelSpec, build_model, predict_proba
from tests.bench.lib.procs import load_average
from tests.bench.lib.report import write_figures
from tests.synthetic import CLASSES, render_examples, table_of

SEED = 0
CHAMPION_DAY = 1500
HELD_OUT = 300


def labels_of(table: ExampleTable) -> npt.NDArray[np.int64]:
    return np.asarray([CLASSES.index(r.label) for r in table.records], dtype=np.int64)


def accuracy(spec: ModelSpec, state: dict[str, Any], table: ExampleTable) -> float:
    model = build_model(spec)
    model.load_state_dict(state)
    model.eval()
    return float((predict_proba(model, table.pixels).argmax(1) == labels_of(table)).mean())


def measure(console: Console, nights: list[int], day_n: int) -> dict[str, Any]:
    settings = TrainingSettings()
    spec = ModelSpec.for_architecture("streamloop-cnn-v1", CLASSES, 64, 64)
    hp, threads = settings.hyperparameters, settings.torch_threads
    console.print(f"rendering {CHAMPION_DAY + day_n + max(nights) + 2 * HELD_OUT:,} frames")
    champion_day = table_of(render_examples(CHAMPION_DAY, seed=61, prefix="c"))
    day = render_examples(day_n, seed=62, prefix="d", start=CHAMPION_DAY)
    night = render_examples(
        max(nights), seed=63, condition="night", prefix="n", start=CHAMPION_DAY + day_n
    )
    held = {
        cond: table_of(render_examples(HELD_OUT, seed=seed, condition=cond, prefix=f"h{cond}"))
        for cond, seed in (("day", 64), ("night", 65))
    }
    console.print(f"champion: {hp.epochs} epochs on {CHAMPION_DAY:,} day frames")
    champion = fit(
        spec, champion_day.pixels, labels_of(champion_day), hp,
        seed=SEED, time_budget_s=3600, threads=threads,
    )  # fmt: skip
    before = {c: accuracy(spec, champion.state_dict, t) for c, t in held.items()}
    rows: list[dict[str, Any]] = []
    for n in nights:
        table = table_of(day + night[:n])
        snap = build_snapshot(table, settings.policy, SEED, ["condition=night"])
        runs = {
            "scratch": (snap, hp, None),
            "warm": (
                replace(snap, focused=True),
                hp.model_copy(update={"epochs": settings.warm_epochs or hp.epochs}),
                champion.state_dict,
            ),
        }
        row: dict[str, Any] = {
            "night_examples": n,
            "night_in_training": sum(1 for r in snap.train if r.condition == "night"),
        }
        for name, (s, run_hp, start) in runs.items():
            seen = s.epoch_examples()
            started = time.perf_counter()
            result = fit(
                spec, table.select(seen), s.labels(spec.classes, seen), run_hp,
                seed=SEED, time_budget_s=3600, threads=threads, start_from=start,
            )  # fmt: skip
            row[name] = {
                "epochs": run_hp.epochs,
                "epoch_examples": len(seen),
                "fit_s": round(result.duration_s, 2),
                "wall_s": round(time.perf_counter() - started, 2),
                **{c: accuracy(spec, result.state_dict, t) for c, t in held.items()},
            }
            console.print(f"  night {n}: {name} {row[name]}")
        row["speed_up"] = round(row["scratch"]["fit_s"] / row["warm"]["fit_s"], 2)
        rows.append(row)
    return {"champion": before, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| night examples (in training) | run | epochs x examples | day | night | fit s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        for name in ("scratch", "warm"):
            r = row[name]
            lines.append(
                f"| {row['night_examples']} ({row['night_in_training']}) | {name} | "
                f"{r['epochs']} x {r['epoch_examples']:,} | {100 * r['day']:.1f} % | "
                f"{100 * r['night']:.1f} % | {r['fit_s']:.1f} |"
            )
        lines.append(f"| | speed-up | | | | {row['speed_up']:.1f}x |")
    c = result["champion"]
    lines.append(
        f"\nThe champion before: day {100 * c['day']:.1f} %, night {100 * c['night']:.1f} %."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nights", type=int, nargs="+", default=[70, 140, 280])
    parser.add_argument("--day", type=int, default=3000)
    args = parser.parse_args(argv)
    console = Console()
    console.rule("[bold]warm start against scratch, after night falls")
    result = measure(console, sorted(args.nights), args.day)
    result |= {"at": datetime.now(UTC).isoformat(), "load_average": load_average()}
    table = Table("night", "run", "epochs x examples", "day", "night", "fit s", "speed-up")
    for row in result["rows"]:
        for name in ("scratch", "warm"):
            r = row[name]
            table.add_row(
                str(row["night_examples"]), name, f"{r['epochs']} x {r['epoch_examples']:,}",
                f"{100 * r['day']:.1f} %", f"{100 * r['night']:.1f} %", f"{r['fit_s']:.1f}",
                f"{row['speed_up']:.1f}x" if name == "warm" else "",
            )  # fmt: skip
    console.print(table)
    result["markdown"] = markdown(result)
    console.print(f"figures written to {write_figures('warm_start', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
