"""``bench_training``'s parts: a retrain in a fresh child process, reading the examples
topic, evaluation, and its table. Memory is in KiB as /proc and ``ru_maxrss`` give it, and
reported in MiB."""

from __future__ import annotations

import gc
import json
import logging
import resource
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
from rich.console import Console

from services.evaluation.service import Evaluator
from services.evaluation.settings import EvaluationSettings
from services.training.service import Trainer
from services.training.settings import SamplingPolicy, TrainingSettings
from shared.artifacts import ArtifactStore
from shared.bus import PRODUCER_DEFAULTS
from shared.datasets import ExampleTable
from shared.events import Event, ModelEvaluated, ModelTrained, RetrainRequest, TrainingProgress
from shared.events import encode as encode_event
from shared.example_log import read_examples
from shared.ports import MemoryLeases
from shared.registry import MemoryRegistry, RegistryView, VersionView
from shared.settings import KafkaSettings
from shared.topics import TOPICS, Topics, provision
from tests.bench.lib.control import REPO, delete_topics
from tests.bench.lib.fixtures import condition_of
from tests.bench.lib.procs import kib_to_mib, status_kib
from tests.synthetic import render_examples, table_of

TARGET_EXAMPLES = 5_000
TARGET_SECONDS = 120.0
"""Target: a retrain on 5,000 examples (the whole handler) within this many seconds."""

SEED = 11
"""Render seed shared by every part, so all sizes draw the same frames in the same order."""

MIN_EVAL_EXAMPLES = 2_000
CHILD_MODULE = "tests.bench.bench_training"
"""The script whose hidden ``--child N --artifacts DIR`` runs ``child``."""


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
    rss_before_kib = status_kib("self", "VmRSS")
    say(f"rendered in {render_s:.1f} s, table built in {table_s:.1f} s; training")
    settings, publisher, event, handle_s = retrain(examples, table, artifacts, label)
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
        "rss_before_handle_mib": (
            round(kib_to_mib(rss_before_kib), 1) if rss_before_kib is not None else None
        ),
        "peak_rss_mib": round(kib_to_mib(peak_kib), 1),
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


def retrain(
    examples: int, table: ExampleTable, artifacts: Path, label: str
) -> tuple[TrainingSettings, ProgressPublisher, ModelTrained, float]:
    """One ``Trainer.handle`` on ``table`` with the default settings (every example in the
    recency window): the settings, the publisher, the model and the handler's seconds.
    RuntimeError when no model came of it."""
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
    return settings, publisher, outcome.event, handle_s


def run_child(console: Console, examples: int, artifacts: Path) -> dict[str, Any]:
    """One training size in a fresh interpreter; its progress passes through on stderr."""
    console.print(f"training on {examples:,} examples (fresh process)")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            CHILD_MODULE,
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
        delete_topics([topic], console.print)


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
