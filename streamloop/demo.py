"""``streamloop demo``: the loop so far, started from nothing and narrated.

Starts ingest, labelling, registry, evaluation, training and serving as child processes (logs
under ``var/logs/``), plays a camera fleet into ``frames.raw`` and waits, with a live panel,
until the training service's bootstrap has turned enough labelled frames into a first
champion and serving has predicted the frames that waited for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from shared.events import (
    Event,
    ModelEvaluated,
    ModelLifecycle,
    ModelTrained,
    RetrainRequest,
    TrainingProgress,
    decode,
)
from shared.kafka_admin import wait_for_kafka
from shared.redis_store import connect
from shared.registry import DEFAULT_MODEL_NAME, RedisRegistry
from shared.settings import KafkaSettings, RedisSettings, default_var_dir
from shared.topics import Topics, provision

__all__ = ["run_demo"]

SERVICES = ("ingest", "labelling", "registry", "evaluation", "training", "serving")
READY = {"labelling": "Worker ready"}
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class _Story:
    lines: list[str] = field(default_factory=list)
    frames: int = 0
    examples: int = 0
    predictions: int = 0
    epoch: str = ""
    done: bool = False

    def say(self, text: str) -> None:
        self.lines.append(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")


def _start(name: str, logs: Path) -> subprocess.Popen[bytes]:
    log = (logs / f"{name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", f"services.{name}"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "STREAMLOOP_TELEMETRY_SAMPLE_RATIO": "0.05"},
    )


def _ready(name: str, logs: Path) -> bool:
    text = (logs / f"{name}.log").read_text(errors="replace")
    return READY.get(name, '"consumer started"') in text


def _watch(kafka: KafkaSettings, story: _Story, stop: threading.Event) -> None:
    """Narrate the lifecycle topics and count examples until ``stop``."""
    consumer = KafkaConsumer(enable_auto_commit=False, **kafka.client_kwargs())
    names = [
        Topics.RETRAIN_REQUESTS,
        Topics.TRAINING_PROGRESS,
        Topics.MODELS_TRAINED,
        Topics.MODELS_EVALUATED,
        Topics.MODELS_LIFECYCLE,
    ]
    tps = [
        TopicPartition(kafka.topic_prefix + t, p)
        for t in names
        for p in sorted(consumer.partitions_for_topic(kafka.topic_prefix + t) or ())
    ]
    counted = {
        topic: [
            TopicPartition(kafka.topic_prefix + topic, p)
            for p in sorted(consumer.partitions_for_topic(kafka.topic_prefix + topic) or ())
        ]
        for topic in (Topics.FRAMES_RAW, Topics.EXAMPLES, Topics.PREDICTIONS)
    }
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    for tp in tps:
        consumer.position(tp)
    try:
        while not stop.is_set():
            for topic, parts in counted.items():
                ends, starts = consumer.end_offsets(parts), consumer.beginning_offsets(parts)
                n = sum(ends[tp] - starts[tp] for tp in parts)
                if topic == Topics.EXAMPLES:
                    story.examples = n
                elif topic == Topics.PREDICTIONS:
                    story.predictions = n
                else:
                    story.frames = n
            for batch in consumer.poll(timeout_ms=500).values():
                for rec in batch:
                    try:
                        ev: Event = decode(rec.value, Event)
                    except ValueError:
                        continue
                    _narrate(ev, story)
    finally:
        consumer.close()


def _narrate(ev: Event, story: _Story) -> None:
    if isinstance(ev, RetrainRequest):
        story.say(f"retrain requested ([bold]{ev.trigger}[/]): {ev.reason}")
    elif isinstance(ev, TrainingProgress):
        story.epoch = (
            f"epoch {ev.epoch}/{ev.epochs}: loss {ev.loss:.3f}, "
            f"train accuracy {100 * ev.accuracy:.1f}%"
        )
    elif isinstance(ev, ModelTrained):
        story.epoch = ""
        story.say(
            f"trained [bold]{ev.model_version}[/] on {ev.dataset.size} examples "
            f"({ev.dataset.per_condition}) in {ev.duration_s:.0f}s"
        )
    elif isinstance(ev, ModelEvaluated):
        colour = "green" if ev.verdict == "blessed" else "red"
        story.say(
            f"gate: [{colour}]{ev.verdict}[/] {ev.model_version}: {'; '.join(ev.reasons[:2])}"
        )
    elif isinstance(ev, ModelLifecycle) and ev.action in ("alias_set", "rolled_back"):
        story.say(f"registry: [bold]{ev.alias}[/] -> {ev.model_version} ({ev.reason})")
        if ev.alias == "champion" and ev.model_version:
            story.done = True


def _panel(story: _Story, procs: dict[str, subprocess.Popen[bytes]]) -> Group:
    status = Table.grid(padding=(0, 2))
    status.add_row(
        "services: "
        + " ".join(f"[{'green' if p.poll() is None else 'dim'}]{n}[/]" for n, p in procs.items()),
        f"frames: {story.frames}",
        f"examples: {story.examples}",
        f"predictions: {story.predictions}",
        story.epoch,
    )
    return Group(status, *story.lines[-12:])


def run_demo(console: Console, *, scenario: str, duration_s: float, timeout_s: float) -> int:
    """The lifecycle demo; returns the exit status."""
    kafka = KafkaSettings()
    var = default_var_dir()
    logs = var / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]StreamLoop demo: from camera frames to a registered champion")
    wait_for_kafka(kafka, timeout_s=60)
    provision(kafka)
    registry = RedisRegistry(connect(RedisSettings()))
    existing = registry.champion(DEFAULT_MODEL_NAME)
    if existing is not None:
        console.print(
            f"a champion already exists ({existing.version}); the demo adds frames, and "
            "[bold]streamloop retrain[/] trains a new candidate on them"
        )
    procs = {name: _start(name, logs) for name in SERVICES}
    story = _Story()
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 120
        while not all(_ready(n, logs) for n in SERVICES):
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                console.print(f"[red]services did not start: {dead or 'timeout'}; see {logs}[/]")
                return 1
            time.sleep(0.5)
        story.say(f"services up: {', '.join(SERVICES)} (logs in {logs})")
        watcher = threading.Thread(target=_watch, args=(kafka, story, stop), daemon=True)
        watcher.start()
        story.say(f"simulator: scenario [bold]{scenario}[/], {duration_s:.0f} scenario seconds")
        simulator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamloop",
                "simulate",
                "--scenario",
                scenario,
                "--rate",
                "0",
                "--duration",
                str(duration_s),
            ],
            cwd=ROOT,
            stdout=(logs / "simulator.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        procs["simulator"] = simulator
        end = time.monotonic() + timeout_s
        with Live(_panel(story, procs), console=console, refresh_per_second=4) as live:
            served_since = 0.0
            while time.monotonic() < end:
                sim_done = simulator.poll() is not None
                if sim_done and (story.done or existing is not None):
                    # Then serving works through the frames that waited for a champion.
                    served_since = served_since or time.monotonic()
                    caught_up = story.predictions >= story.frames
                    if caught_up or time.monotonic() - served_since > 120:
                        break
                live.update(_panel(story, procs))
                time.sleep(0.25)
            live.update(_panel(story, procs))
        champion = registry.champion(DEFAULT_MODEL_NAME)
        if champion is None:
            console.print(f"[red]no champion within {timeout_s:.0f}s; see the logs in {logs}[/]")
            return 1
        from streamloop.models_cli import print_versions

        print_versions(registry.view(DEFAULT_MODEL_NAME))
        console.print(
            "\nNext: [bold]streamloop models show "
            f"{champion.version}[/] (lineage, per-class and per-slice metrics), "
            "[bold]streamloop tail predictions[/], "
            "[bold]streamloop retrain --reason 'more data'[/], "
            "[bold]streamloop simulate --scenario day-to-night[/] (drift), "
            "[bold]streamloop tail dlq[/]."
        )
        return 0
    finally:
        stop.set()
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
