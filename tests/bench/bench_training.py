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
import gc
import json
import logging
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from kafka import KafkaProducer
from kafka.errors import KafkaError
from rich.console import Console

from services.evaluation.service import Evaluator
from services.evaluation.settings import EvaluationSettings
from services.simulator.render import CONDITIONS
from services.training.service import Trainer
from services.training.settings import SamplingPolicy, TrainingSettings
from shared.artifacts import ArtifactStore
from shared.bus import PRODUCER_DEFAULTS
from shared.datasets import read_examples
from shared.events import Event, ModelEvaluated, ModelTrained, RetrainRequest, TrainingProgress
from shared.events import encode as encode_event
from shared.kafka_admin import KafkaAdmin
from shared.model import ModelSpec, model_cost
from shared.redis_store import MemoryLeases
from shared.registry import MemoryRegistry, RegistryView, VersionView
from shared.settings import KafkaSettings, default_var_dir
from shared.topics import TOPICS, Topics, provision
from tests.synthetic import render_examples, table_of

TARGET_EXAMPLES = 5_000
TARGET_SECONDS = 120.0
"""Target: a retrain on 5,000 examples (the whole handler) within this many seconds."""

SEED = 11
"""Render seed shared by every part, so all sizes draw the same frames in the same order."""

MIN_EVAL_EXAMPLES = 2_000
REPO = Path(__file__).resolve().parents[2]
MODULE = "tests.bench.bench_training"


def condition_of(i: int) -> str:
    return CONDITIONS[i % len(CONDITIONS)]


def mib(kib: float) -> float:
    return kib / 1024


def vm_rss_kib() -> int | None:
    """This process's resident set now (``VmRSS``), in KiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# --- part 1: training, in a child process -------------------------------------------------


class ProgressPublisher:
    """The service's ``Publisher`` port: keeps events, prints every epoch to stderr."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.sent: list[tuple[str, Event]] = []

    def publish(self, topic: str, event: Event, *, key: str | None = None) -> object:
        self.sent.append((topic, event))
        if isinstance(event, TrainingProgress):
            print(
                f"  [{self.label}] epoch {event.epoch}/{event.epochs}: loss {event.loss:.4f}, "
                f"accuracy {event.accuracy:.3f}, {event.elapsed_s:.1f} s into the fit",
                file=sys.stderr,
                flush=True,
            )
        return None

    def flush(self, timeout_s: float | None = None) -> None:
        return None

    def of(self, topic: str) -> list[Event]:
        return [e for t, e in self.sent if t == topic]


def child(examples: int, artifacts: Path) -> int:
    """Render ``examples``, run one ``Trainer.handle``, print one JSON line on stdout."""
    logging.basicConfig(level=logging.WARNING)
    label = f"{examples:,}"

    def say(text: str) -> None:
        print(f"  [{label}] {text}", file=sys.stderr, flush=True)

    say(f"rendering {examples:,} examples")
    start = time.perf_counter()
    rendered = render_examples(examples, seed=SEED, condition=condition_of)
    render_s = time.perf_counter() - start
    start = time.perf_counter()
    table = table_of(rendered)
    table_s = time.perf_counter() - start
    # The service holds the table, never the events: drop them before the handler runs.
    del rendered
    gc.collect()
    rss_before = vm_rss_kib()
    say(f"rendered in {render_s:.1f} s, table built in {table_s:.1f} s; training")

    with tempfile.TemporaryDirectory(prefix="bench-training-var-") as var:
        settings = TrainingSettings(
            policy=SamplingPolicy(recent_examples=examples, older_per_class=0),
            var_dir=Path(var),
        )
        publisher = ProgressPublisher(label)
        trainer = Trainer(
            settings,
            load_examples=lambda: table,
            store=ArtifactStore(artifacts),
            leases=MemoryLeases(),
            registry=MemoryRegistry(),
            publisher=publisher,
            owner="bench",
            code_version="bench",
        )
        request = RetrainRequest(
            model_name=settings.model_name,
            idempotency_key=f"bench-training-{examples}-{uuid.uuid4().hex[:8]}",
            reason="benchmark",
            trigger="operator",
        )
        start = time.perf_counter()
        outcome = trainer.handle(request)
        handle_s = time.perf_counter() - start
    if outcome.status != "trained" or outcome.event is None:
        raise RuntimeError(f"training did not produce a model: {outcome.status} {outcome.detail}")
    event = outcome.event
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    epochs = [e for e in publisher.of(Topics.TRAINING_PROGRESS) if isinstance(e, TrainingProgress)]
    hp = settings.hyperparameters
    result = {
        "examples": examples,
        "train_examples": event.dataset.size,
        "holdout_examples": event.dataset.holdout_size,
        "epochs": hp.epochs,
        "epochs_completed": int(event.metrics["epochs_completed"]),
        "stopped_by_budget": bool(event.hyperparameters["stopped_by_budget"]),
        "epoch_end_s": [round(e.elapsed_s, 2) for e in epochs],
        "render_s": round(render_s, 2),
        "table_s": round(table_s, 2),
        "fit_s": round(event.metrics["fit_seconds"], 2),
        "handle_s": round(handle_s, 2),
        "rss_before_handle_mib": round(mib(rss_before), 1) if rss_before is not None else None,
        "peak_rss_mib": round(mib(peak_kib), 1),
        "train_accuracy": round(event.metrics["train_accuracy"], 4),
        "holdout_accuracy": (
            round(event.metrics["holdout_accuracy"], 4)
            if "holdout_accuracy" in event.metrics
            else None
        ),
        "settings": {
            **hp.model_dump(),
            "time_budget_s": settings.time_budget_s,
            "torch_threads": settings.torch_threads,
            "seed": settings.seed,
        },
        "model_version": event.model_version,
        "event": event.model_dump(mode="json"),
    }
    print(json.dumps(result), flush=True)
    return 0


def run_child(console: Console, examples: int, artifacts: Path) -> dict[str, Any]:
    """One training size in a fresh interpreter; its progress passes through on stderr."""
    console.print(f"training on {examples:,} examples (fresh process)")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            MODULE,
            "--child",
            str(examples),
            "--artifacts",
            str(artifacts),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the training child for {examples} exited {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the training child for {examples} printed no result")
    result: dict[str, Any] = json.loads(lines[-1])
    console.print(
        f"  [{examples:,}] done: {result['epochs_completed']}/{result['epochs']} epochs, "
        f"handler {result['handle_s']:.1f} s (fit {result['fit_s']:.1f} s), "
        f"peak RSS {result['peak_rss_mib']:.0f} MiB, "
        f"holdout accuracy {result['holdout_accuracy']}"
    )
    return result


# --- part 2: reading the examples topic ---------------------------------------------------


def kafka_reachable(settings: KafkaSettings, timeout_s: float = 2.0) -> str | None:
    """None when the first bootstrap server accepts a connection, else why not."""
    servers = settings.client_kwargs()["bootstrap_servers"]
    host, _, port = str(servers[0]).rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return None
    except (OSError, ValueError) as exc:
        return f"{servers[0]}: {exc}"


@dataclass
class ReadResult:
    examples: int
    payload_bytes: int
    publish_s: float
    read_s: float
    topic: str
    partitions: int
    skipped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "payload_bytes": self.payload_bytes,
            "bytes_per_example": round(self.payload_bytes / self.examples, 1),
            "partitions": self.partitions,
            "publish_s": round(self.publish_s, 3),
            "publish_examples_per_s": round(self.examples / self.publish_s, 1),
            "read_s": round(self.read_s, 3),
            "read_examples_per_s": round(self.examples / self.read_s, 1),
            "read_mb_per_s": round(self.payload_bytes / self.read_s / 1e6, 2),
            "skipped": self.skipped,
        }


def bench_read(console: Console, examples: Sequence[Any]) -> ReadResult:
    """Publish ``examples`` to a topic of the run's own, then time ``read_examples`` on it."""
    prefix = f"bench{uuid.uuid4().hex[:10]}."
    kafka = KafkaSettings(topic_prefix=prefix)
    spec = TOPICS[Topics.EXAMPLES]
    topic = prefix + spec.name
    console.print(f"reading: publishing {len(examples):,} examples to {topic}")
    provision(kafka, [spec], name_prefix=prefix, timeout_s=30)
    try:
        values = [encode_event(e) for e in examples]
        producer = KafkaProducer(**PRODUCER_DEFAULTS, **kafka.client_kwargs())
        try:
            start = time.perf_counter()
            for e, value in zip(examples, values, strict=True):
                producer.send(topic, value=value, key=e.frame_id.encode())
            producer.flush()
            publish_s = time.perf_counter() - start
        finally:
            producer.close()
        console.print(f"  published in {publish_s:.1f} s; timing read_examples")
        task = TrainingSettings().task
        start = time.perf_counter()
        table = read_examples(
            kafka,
            shape=(task.image_height, task.image_width, 3),
            classes=task.classes,
            timeout_s=300,
        )
        read_s = time.perf_counter() - start
        if len(table) != len(examples):
            raise RuntimeError(
                f"read_examples returned {len(table)} of {len(examples)} examples "
                f"(skipped: {table.skipped})"
            )
        result = ReadResult(
            examples=len(table),
            payload_bytes=sum(map(len, values)),
            publish_s=publish_s,
            read_s=read_s,
            topic=topic,
            partitions=len(table.end_offsets),
            skipped=dict(table.skipped),
        )
        console.print(
            f"  read {result.examples:,} examples in {read_s:.2f} s "
            f"({result.examples / read_s:,.0f} examples/s, "
            f"{result.payload_bytes / read_s / 1e6:.1f} MB/s)"
        )
        return result
    finally:
        try:
            with KafkaAdmin(KafkaSettings()) as admin:
                admin.delete_topics([topic])
        except (KafkaError, OSError) as exc:  # cleanup must not hide the result
            console.print(f"warning: could not delete {topic}: {exc}")


# --- part 3: evaluation -------------------------------------------------------------------


def champion_registry(trained: ModelTrained) -> MemoryRegistry:
    """A registry whose champion is ``trained``."""
    version = VersionView(
        model_name=trained.model_name,
        version=trained.model_version,
        number=1,
        registered_at=datetime.now(UTC),
        status="blessed",
        aliases=["champion"],
        was_champion=True,
        rolled_back=False,
        artifact_uri=trained.artifact_uri,
        sha256=trained.sha256,
        dataset=trained.dataset,
        hyperparameters=trained.hyperparameters,
        training_metrics=trained.metrics,
        parent_version=trained.parent_version,
        code_version=trained.code_version,
        seed=trained.seed,
        duration_s=trained.duration_s,
        idempotency_key=trained.idempotency_key,
        tags={},
    )
    registry = MemoryRegistry()
    registry.replace(
        RegistryView(
            model_name=trained.model_name,
            versions=[version],
            aliases={"champion": version.version},
            history=[],
            offset=0,
        )
    )
    return registry


class NullPublisher:
    def publish(self, topic: str, event: Event, *, key: str | None = None) -> object:
        return None

    def flush(self, timeout_s: float | None = None) -> None:
        return None


def bench_evaluation(
    console: Console,
    examples: Sequence[Any],
    artifacts: Path,
    candidate: ModelTrained,
    champion: ModelTrained | None,
    rounds: int,
) -> dict[str, Any]:
    settings = EvaluationSettings()
    torch.set_num_threads(settings.torch_threads)
    table = table_of(examples)
    evaluator = Evaluator(
        settings,
        load_examples=lambda: table,
        store=ArtifactStore(artifacts),
        registry=champion_registry(champion) if champion is not None else MemoryRegistry(),
        publisher=NullPublisher(),
    )
    console.print(
        f"evaluation: candidate {candidate.model_version} vs champion "
        f"{champion.model_version if champion else 'none'} on {len(table):,} examples, "
        f"1 cold + {rounds} timed calls"
    )
    seconds: list[float] = []
    last: ModelEvaluated | None = None
    for r in range(rounds + 1):
        start = time.perf_counter()
        evaluated = evaluator.handle(candidate)
        elapsed = time.perf_counter() - start
        if evaluated is None:
            raise RuntimeError("the evaluator ignored the candidate")
        seconds.append(elapsed)
        last = evaluated
        console.print(f"  call {r + 1} ({'cold' if r == 0 else 'timed'}): {elapsed:.2f} s")
    assert last is not None
    holdouts = last.metrics["holdouts"]
    scored = sum(int(h["n"]) for h in holdouts.values())
    if scored == 0:
        raise RuntimeError("both holdouts are empty: nothing was evaluated")
    models = 2 if last.champion_version is not None else 1
    warm = statistics.median(seconds[1:]) if rounds else seconds[0]
    latency = last.metrics.get("latency", {})
    return {
        "table_examples": len(table),
        "candidate": candidate.model_version,
        "champion": last.champion_version,
        "models_scored": models,
        "fresh_examples": int(holdouts["fresh"]["n"]),
        "reference_examples": int(holdouts["reference"]["n"]),
        "examples_scored": scored,
        "cold_handle_s": round(seconds[0], 3),
        "handle_s": [round(s, 3) for s in seconds[1:]],
        "median_handle_s": round(warm, 3),
        "s_per_1000_examples": round(warm * 1000 / scored, 3),
        "cold_s_per_1000_examples": round(seconds[0] * 1000 / scored, 3),
        "verdict": last.verdict,
        "latency_per_batch": latency,
    }


# --- report -------------------------------------------------------------------------------


def fmt_acc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(
    training: list[dict[str, Any]],
    reading: dict[str, Any] | None,
    reading_skipped: str | None,
    evaluation: dict[str, Any],
    cost: dict[str, int],
) -> str:
    settings = training[0]["settings"] if training else {}
    lines = [
        f"### Training (Trainer.handle; {settings.get('epochs')} epochs max, "
        f"batch {settings.get('batch_size')}, budget {settings.get('time_budget_s'):g} s, "
        f"{settings.get('torch_threads')} torch threads)",
        "",
        "| examples | trained on | holdout | epochs | stopped by budget | render s | fit s "
        "| handle s | peak RSS MiB | train acc | holdout acc |",
        "|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in training:
        lines.append(
            f"| {t['examples']:,} | {t['train_examples']:,} | {t['holdout_examples']:,} "
            f"| {t['epochs_completed']}/{t['epochs']} "
            f"| {'yes' if t['stopped_by_budget'] else 'no'} "
            f"| {t['render_s'] + t['table_s']:.1f} | {t['fit_s']:.1f} | {t['handle_s']:.1f} "
            f"| {t['peak_rss_mib']:,.0f} | {fmt_acc(t['train_accuracy'])} "
            f"| {fmt_acc(t['holdout_accuracy'])} |"
        )
    lines += ["", "### Reading the examples topic (read_examples, local Kafka)", ""]
    if reading is None:
        lines.append(f"skipped: {reading_skipped}")
    else:
        lines += [
            "| examples | partitions | KiB/example | read s | examples/s | MB/s |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {reading['examples']:,} | {reading['partitions']} "
            f"| {reading['bytes_per_example'] / 1024:.1f} | {reading['read_s']:.2f} "
            f"| {reading['read_examples_per_s']:,.0f} | {reading['read_mb_per_s']:.1f} |",
        ]
    lat = evaluation["latency_per_batch"]
    lines += [
        "",
        "### Evaluation (Evaluator.handle)",
        "",
        "| table | models | fresh + reference scored | handle s (median) | s per 1,000 examples "
        "| cold s per 1,000 | latency batch | median ms | p95 ms | ms per image |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {evaluation['table_examples']:,} | {evaluation['models_scored']} "
        f"| {evaluation['fresh_examples']:,} + {evaluation['reference_examples']:,} "
        f"| {evaluation['median_handle_s']:.2f} | {evaluation['s_per_1000_examples']:.2f} "
        f"| {evaluation['cold_s_per_1000_examples']:.2f} | {lat.get('batch_size', 'n/a')} "
        f"| {lat.get('median_ms', 0.0):.1f} | {lat.get('p95_ms', 0.0):.1f} "
        f"| {lat.get('per_item_ms', 0.0):.3f} |",
        "",
        "### Model (model_cost)",
        "",
        "| parameters | FLOPs per image |",
        "|---:|---:|",
        f"| {cost['parameters']:,} | {cost['flops_per_image']:,} "
        f"({cost['flops_per_image'] / 1e6:.1f} M) |",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
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

    task = TrainingSettings().task
    spec = ModelSpec(
        classes=task.classes, image_height=task.image_height, image_width=task.image_width
    )
    cost = model_cost(spec).model_dump()
    console.print(
        f"model: {cost['parameters']:,} parameters, "
        f"{cost['flops_per_image'] / 1e6:.1f} MFLOPs per {spec.image_width}x"
        f"{spec.image_height} image"
    )

    artifacts = Path(tempfile.mkdtemp(prefix="bench-training-artifacts-"))
    try:
        sizes = list(dict.fromkeys(args.sizes))
        training = [run_child(console, n, artifacts) for n in sizes]

        # The same seed as the children: these frames are the first ones each child trained
        # on (or held out), so the smallest model's fresh holdout lies inside this table.
        shared_n = max(min(sizes), args.kafka_examples, MIN_EVAL_EXAMPLES)
        console.print(f"rendering {shared_n:,} examples for the reading and evaluation parts")
        examples = render_examples(shared_n, seed=SEED, condition=condition_of)

        reading: dict[str, Any] | None = None
        kafka = KafkaSettings()
        reading_skipped = kafka_reachable(kafka)
        if reading_skipped is None:
            reading = bench_read(console, examples[: args.kafka_examples]).as_dict()
        else:
            reading_skipped = f"Kafka not reachable ({reading_skipped})"
            console.print(f"reading: skipped, {reading_skipped}")

        by_size = sorted(training, key=lambda t: t["examples"])
        candidate = ModelTrained.model_validate(by_size[0]["event"])
        champion = ModelTrained.model_validate(by_size[-1]["event"]) if len(by_size) > 1 else None
        evaluation = bench_evaluation(
            console, examples, artifacts, candidate, champion, args.eval_rounds
        )
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)

    wall_s = time.perf_counter() - wall_start
    target_run = next((t for t in training if t["examples"] == TARGET_EXAMPLES), None)
    met: bool | None = None if target_run is None else target_run["handle_s"] <= TARGET_SECONDS

    console.print("")
    console.out(markdown(training, reading, reading_skipped, evaluation, cost), highlight=False)
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
        "training": training,
        "reading": reading,
        "reading_skipped": reading_skipped,
        "evaluation": evaluation,
        "model": cost,
        "target": {
            "examples": TARGET_EXAMPLES,
            "seconds": TARGET_SECONDS,
            "measure": "Trainer.handle seconds (rendering excluded)",
            "met": met,
        },
    }
    out = default_var_dir() / "bench" / "training.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    console.print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
