"""Benchmark: training time and memory, reading the examples topic, evaluation, model size.

    python -m tests.bench.bench_training [--sizes N [N ...]] [--kafka-examples N] [--quick]

With the default ``TrainingSettings`` (hyperparameters, time budget, torch threads), except
for the sampling policy, which puts every example in the recency window:

1. training: for each size (default 5,000 and 20,000) a fresh subprocess renders that many
   labelled 64x64 examples (day, night, fog and rain in turn), builds the in-memory example
   table and runs the whole ``Trainer.handle`` path: snapshot, manifest, fit, weights, holdout
   accuracy, ``models.trained`` to a fake publisher. Rendering is timed apart from the
   handler. Peak memory is the child's own ``ru_maxrss`` at its end (the rendered events are
   dropped before training, so the peak is the handler's unless rendering was larger);
2. reading: N rendered ``Example`` events are published to a fresh ``examples`` topic of
   the run's own on the local Kafka, then ``read_examples`` is timed on it (skipped with a
   message when the broker does not answer);
3. evaluation: ``Evaluator.handle`` scores the smallest size's model (candidate) and the
   largest size's (champion), both stored by the training children, on a table of at least
   2,000 examples; seconds per 1,000 examples = handler seconds x 1000 / examples in the two
   holdouts (every one scored by both models), median of ``--eval-rounds`` calls after a
   first, cold one;
4. model size: parameters and FLOPs per image from ``model_cost``.

Everything runs on the CPU, one step after the other; on a small shared machine the figures
move with whatever else runs (the load average is recorded). A measurement, not a test: it
exits 0 whatever the figures, non-zero only on errors. Figures go to
``var/bench/training.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from services.simulator.render import CONDITIONS
from shared.events import ModelTrained
from shared.model import model_cost
from shared.settings import KafkaSettings
from tests.bench.lib.control import kafka_reachable, workdir
from tests.bench.lib.fixtures import condition_of, task_spec
from tests.bench.lib.procs import load_average
from tests.bench.lib.report import write_figures
from tests.bench.lib.training import (
    CHILD_MODULE,
    MIN_EVAL_EXAMPLES,
    SEED,
    TARGET_EXAMPLES,
    TARGET_SECONDS,
    bench_evaluation,
    bench_read,
    child,
    markdown,
    run_child,
)
from tests.synthetic import render_examples


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {CHILD_MODULE}",
        description="Training time and memory, examples read rate, evaluation cost, model size.",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[5_000, 20_000],
        help="training set sizes, one fresh process each (default 5000 20000)",
    )
    parser.add_argument(
        "--kafka-examples", type=int, default=5_000, help="examples read back (default 5000)"
    )
    parser.add_argument(
        "--eval-rounds", type=int, default=3, help="timed evaluation calls (default 3)"
    )
    parser.add_argument("--quick", action="store_true", help="1000 and 2000 examples (smoke run)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.kafka_examples, args.eval_rounds = [1_000, 2_000], 1_000, 1
    if min(args.sizes) < 1 or args.kafka_examples < 1 or args.eval_rounds < 0:
        parser.error("sizes and --kafka-examples must be positive, --eval-rounds not negative")
    return args


def reading_part(console: Console, examples: list[Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The read figures, or why they were skipped."""
    skipped = kafka_reachable(KafkaSettings())
    if skipped is None:
        return bench_read(console, examples).as_dict(), None
    skipped = f"Kafka not reachable ({skipped})"
    console.print(f"reading: skipped, {skipped}")
    return None, skipped


def measure(console: Console, args: argparse.Namespace) -> dict[str, Any]:
    """Training (one child per size), reading and evaluation: their figures."""
    with workdir("bench-training-artifacts-") as artifacts:
        sizes = list(dict.fromkeys(args.sizes))
        training = [run_child(console, n, artifacts) for n in sizes]

        # The same seed as the children: these frames are the first ones each child trained
        # on (or held out), so the smallest model's fresh holdout lies inside this table.
        shared_n = max(min(sizes), args.kafka_examples, MIN_EVAL_EXAMPLES)
        console.print(f"rendering {shared_n:,} examples for the reading and evaluation parts")
        examples = render_examples(shared_n, seed=SEED, condition=condition_of)
        reading, reading_skipped = reading_part(console, examples[: args.kafka_examples])

        by_size = sorted(training, key=lambda t: t["examples"])
        candidate = ModelTrained.model_validate(by_size[0]["event"])
        champion = ModelTrained.model_validate(by_size[-1]["event"]) if len(by_size) > 1 else None
        evaluation = bench_evaluation(
            console, examples, artifacts, candidate, champion, args.eval_rounds
        )
    return {
        "training": training,
        "reading": reading,
        "reading_skipped": reading_skipped,
        "evaluation": evaluation,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        if args.artifacts is None:
            raise SystemExit("--child needs --artifacts")
        return child(args.child, args.artifacts)

    logging.basicConfig(level=logging.WARNING)
    console = Console(soft_wrap=True)
    started = datetime.now(UTC)
    wall_start = time.perf_counter()
    load_start = load_average()
    console.print(
        f"bench_training: sizes {', '.join(f'{n:,}' for n in args.sizes)}; "
        f"{os.cpu_count()} CPUs, load average {load_start} (timings move with other work)"
    )
    spec = task_spec()
    cost = model_cost(spec).model_dump()
    console.print(
        f"model: {cost['parameters']:,} parameters, "
        f"{cost['flops_per_image'] / 1e6:.1f} MFLOPs per {spec.image_width}x"
        f"{spec.image_height} image"
    )
    parts = measure(console, args)
    training = parts["training"]

    wall_s = time.perf_counter() - wall_start
    target_run = next((t for t in training if t["examples"] == TARGET_EXAMPLES), None)
    met: bool | None = None if target_run is None else target_run["handle_s"] <= TARGET_SECONDS

    console.print("")
    table = markdown(
        training, parts["reading"], parts["reading_skipped"], parts["evaluation"], cost
    )
    console.out(table, highlight=False)
    console.print("")
    if target_run is None:
        verdict = f"not measured (no run on {TARGET_EXAMPLES:,} examples)"
    else:
        verdict = f"{'yes' if met else 'no'} (handler {target_run['handle_s']:.1f} s)"
    console.out(
        f"training on {TARGET_EXAMPLES:,} examples within {TARGET_SECONDS:.0f} s: {verdict}",
        highlight=False,
    )
    load_end = load_average()
    console.print(
        f"whole run: {wall_s:.0f} s; load average at start {load_start}, at end {load_end}"
    )

    for t in training:
        t.pop("event", None)
    result = {
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "wall_s": round(wall_s, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average": {"start": load_start, "end": load_end},
        "seed": SEED,
        "conditions": list(CONDITIONS),
        **parts,
        "model": cost,
        "target": {
            "examples": TARGET_EXAMPLES,
            "seconds": TARGET_SECONDS,
            "measure": "Trainer.handle seconds (rendering excluded)",
            "met": met,
        },
    }
    out = write_figures("training", result)
    console.print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
