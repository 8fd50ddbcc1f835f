"""``streamloop demo``: the whole loop, started from nothing and narrated.

1. Starts every service (ingest, labelling, registry, evaluation, training, serving,
   monitoring) as child processes, logs under ``var/logs/``.
2. Bootstraps a first model: plays a steady day into ``frames.raw`` as fast as it goes until
   the training service's bootstrap has made a champion (skipped when one exists).
3. Plays the drift scenario (``day-to-night``) at its own pace and narrates what the loop
   does: windows, drift, label requests, the retrain request, training, the gate's verdict,
   shadowing, promotion, recovery.
4. Stops when the live accuracy of a champion promoted after the drift is back to at least
   ``recovery_ratio`` of its value before the drift (or at the deadline), and prints the
   summary table: accuracy before the drift, the lowest, after recovery, and the times.

Ctrl-C stops the services and prints the summary so far.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from services.simulator.scenario import Scenario
from services.simulator.scenario import load as load_scenario
from shared.events import (
    Alert,
    Event,
    LiveComparison,
    ModelEvaluated,
    ModelLifecycle,
    ModelTrained,
    RetrainRequest,
    TrainingProgress,
    WindowMetrics,
    decode,
)
from shared.kafka_admin import wait_for_kafka
from shared.reader import TopicReader
from shared.redis_registry import RedisRegistry
from shared.redis_store import connect
from shared.registry import DEFAULT_MODEL_NAME
from shared.settings import KafkaSettings, RedisSettings, default_var_dir
from shared.topics import Topics, provision

__all__ = ["DemoReport", "LoopStory", "drift_complete_s", "drift_onset_s", "run_demo"]

SERVICES = ("ingest", "labelling", "registry", "evaluation", "training", "serving", "monitoring")
READY = {"labelling": "Worker ready", "monitoring": "Worker ready"}
ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_URL = "http://127.0.0.1:8720/"


def drift_onset_s(scenario: Scenario) -> float | None:
    """Scenario seconds at which the first schedule entry without any daylight starts; a
    darkness ramp counts from its start unless it stays at full daylight."""
    starts = [
        e.at_s
        for e in scenario.schedule
        if (
            max(e.darkness.start, e.darkness.end) > 0.0
            if e.darkness is not None
            else e.weights().get("day", 0.0) == 0.0
        )
    ]
    return min(starts) if starts else None


def drift_complete_s(scenario: Scenario) -> float | None:
    """Scenario seconds at which the drift that starts at ``drift_onset_s`` is complete: the
    end of its darkness ramp, or its start for a sudden change."""
    onset = drift_onset_s(scenario)
    if onset is None:
        return None
    ramps = [
        e.at_s + e.darkness.over_s
        for e in scenario.schedule
        if e.at_s == onset and e.darkness is not None
    ]
    return max(ramps, default=onset)


@dataclass
class LoopStory:
    """What the demo saw on the topics, in order: the narration and the figures of the
    summary. Pure bookkeeping; ``observe`` takes one event."""

    model_name: str
    lines: list[str] = field(default_factory=list)
    frames: int = 0
    examples: int = 0
    predictions: int = 0
    label_requests: int = 0
    epoch: str = ""
    champion: str | None = None
    challenger: str | None = None
    windows: list[WindowMetrics] = field(default_factory=list)
    retrains: list[RetrainRequest] = field(default_factory=list)
    milestones: dict[str, datetime] = field(default_factory=dict)
    """First time of each step of the loop after the drift (``drift_alert``, ``retrain``…)."""
    promotions: list[tuple[datetime, str]] = field(default_factory=list)
    onset: datetime | None = None
    complete: datetime | None = None
    """When the drift is complete (the end of a gradual one's ramp; else the onset)."""
    compared: dict[tuple[str, str], int] = field(default_factory=dict)
    """Shared labelled frames of the last comparison told, per (champion, challenger)."""

    def say(self, text: str, at: datetime | None = None) -> None:
        stamp = (at or datetime.now(UTC)).astimezone().strftime("%H:%M:%S")
        self.lines.append(f"[dim]{stamp}[/] {text}")

    def _mark(self, step: str, at: datetime) -> None:
        if self.onset is not None and at >= self.onset:
            self.milestones.setdefault(step, at)

    def observe(self, ev: Event) -> None:
        at = ev.produced_at
        if isinstance(ev, WindowMetrics):
            if ev.model_name != self.model_name or ev.accuracy is None:
                return
            self.windows.append(ev)
            stream = "shadow" if ev.shadow else "live"
            colour = "green" if ev.accuracy >= 0.75 else "red"
            psi = f", PSI {ev.psi:.2f}" if ev.psi is not None else ""
            est = f" (estimated {100 * ev.estimate.value:.1f}%)" if ev.estimate else ""
            self.say(
                f"window {ev.window_id}: {stream} accuracy [{colour}]{100 * ev.accuracy:.1f}%[/]"
                f"{est} on {ev.labelled_count} labels, coverage {100 * ev.label_coverage:.0f}%, "
                f"confidence {ev.mean_confidence or 0:.2f}{psi}",
                at,
            )
            if not ev.shadow and ev.accuracy < 0.75:
                self._mark("accuracy_drop", at)
        elif isinstance(ev, Alert):
            if ev.kind == "drift_detected":
                self._mark("drift_alert", at)
            elif ev.kind in ("accuracy_drop_estimated", "accuracy_drop_suspected"):
                self._mark("suspected", at)
            elif ev.kind in ("estimate_confirmed", "drop_confirmed"):
                self._mark("confirmed", at)
            colour = {"critical": "red", "warning": "yellow"}.get(ev.severity, "cyan")
            self.say(f"[{colour}]alert {ev.kind}[/]: {ev.message}", at)
        elif isinstance(ev, RetrainRequest):
            if ev.model_name != self.model_name:
                return
            self.retrains.append(ev)
            self._mark("retrain", at)
            self.say(f"[bold]retrain requested[/] ({ev.trigger}): {ev.reason}", at)
        elif isinstance(ev, TrainingProgress):
            self.epoch = (
                f"training epoch {ev.epoch}/{ev.epochs}: loss {ev.loss:.3f}, "
                f"accuracy {100 * ev.accuracy:.1f}%"
            )
        elif isinstance(ev, ModelTrained):
            if ev.model_name != self.model_name:
                return
            self.epoch = ""
            self._mark("trained", at)
            cond = ", ".join(f"{k} {v}" for k, v in sorted(ev.dataset.per_condition.items()))
            self.say(
                f"trained [bold]{ev.model_version}[/] on {ev.dataset.size} examples ({cond}) "
                f"in {ev.duration_s:.0f}s",
                at,
            )
        elif isinstance(ev, ModelEvaluated):
            if ev.model_name != self.model_name:
                return
            self._mark("evaluated", at)
            colour = "green" if ev.verdict == "blessed" else "red"
            reasons = "; ".join(ev.reasons[:2])
            self.say(f"gate: [{colour}]{ev.verdict}[/] {ev.model_version}: {reasons}", at)
        elif isinstance(ev, LiveComparison):
            if ev.model_name != self.model_name:
                return
            # A young pair is compared on every discordant frame: tell the first comparison
            # and then one per 50 labels (the registry's reason tells the deciding one).
            pair = (ev.champion_version, ev.challenger_version)
            told = self.compared.get(pair)
            if told is not None and ev.labelled // 50 <= told // 50:
                return
            self.compared[pair] = ev.labelled
            self.say(
                f"live comparison on {ev.labelled} shared labelled frames: champion "
                f"{ev.champion_version} {100 * (ev.champion_accuracy or 0):.1f}%, "
                f"challenger {ev.challenger_version} {100 * (ev.challenger_accuracy or 0):.1f}%",
                at,
            )
        elif isinstance(ev, ModelLifecycle):
            self._lifecycle(ev)

    def _lifecycle(self, ev: ModelLifecycle) -> None:
        if ev.model_name != self.model_name:
            return
        at = ev.produced_at
        if ev.action == "alias_set" and ev.alias == "champion" and ev.model_version:
            first = self.champion is None
            self.champion = ev.model_version
            self.promotions.append((at, ev.model_version))
            self._mark("promoted", at)
            what = "first champion" if first else "promoted to champion"
            self.say(f"registry: [bold green]{what}[/] {ev.model_version} ({ev.reason})", at)
        elif ev.action == "alias_set" and ev.alias == "challenger":
            self.challenger = ev.model_version
            if ev.model_version:
                self._mark("shadow", at)
                self.say(f"registry: challenger {ev.model_version} shadows ({ev.reason})", at)
            else:
                self.say(f"registry: challenger cleared ({ev.reason})", at)
        elif ev.action == "rolled_back":
            self.champion = ev.model_version
            self.promotions.append((at, ev.model_version or ""))
            self.say(f"registry: [bold red]rolled back[/] to {ev.model_version} ({ev.reason})", at)

    # --- the summary ---------------------------------------------------------------------

    def live(self) -> list[WindowMetrics]:
        return [w for w in self.windows if not w.shadow]

    def unaffected(self, threshold: float = 0.75, windows: int = 3) -> bool:
        """True when ``windows`` live windows after the drift was complete all stayed above
        ``threshold`` and nothing was retrained since the onset: the champion already
        handles the new conditions (a second ``make demo`` on a champion that has seen the
        night). A gradual drift is judged only once its light stopped falling: the first
        minutes of a dusk look like day to any model."""
        onset = self.onset
        if onset is None:
            return False
        complete = max(onset, self.complete or onset)
        after = [w for w in self.live() if w.window_start >= complete]
        return (
            len(after) >= windows
            and all((w.accuracy or 0) >= threshold for w in after)
            and not any(r.produced_at >= onset for r in self.retrains)
        )

    def report(self, recovery_ratio: float) -> DemoReport:
        """The summary figures so far."""
        onset = self.onset
        live = self.live()
        before = [w for w in live if onset is None or w.window_end < onset]
        # Every window that counted a prediction served after the onset: labels come late,
        # so the first windows of the night also count day frames served before it.
        after = [w for w in live if onset is not None and w.window_end >= onset]
        pre = before[-3:]
        pre_acc = sum(w.accuracy or 0 for w in pre) / len(pre) if pre else None
        lowest = min((w.accuracy or 0 for w in after), default=None)
        promoted_after = [(t, v) for t, v in self.promotions if onset is not None and t >= onset]
        recovered: WindowMetrics | None = None
        if pre_acc is not None and promoted_after:
            t_promo, version = promoted_after[-1]
            for w in after:
                if (
                    w.model_version == version
                    and w.window_start >= t_promo
                    and (w.accuracy or 0) >= recovery_ratio * pre_acc
                ):
                    recovered = w
                    break
        latest = after[-1].accuracy if after else None
        worst = min(after, key=lambda w: w.accuracy or 0, default=None)
        errors = [abs(w.estimate_error) for w in live if w.estimate_error is not None]

        def estimated(windows: list[WindowMetrics]) -> float | None:
            values = [w.estimate.value for w in windows if w.estimate is not None]
            return sum(values) / len(values) if values else None

        return DemoReport(
            before=pre_acc,
            lowest=lowest,
            after=recovered.accuracy if recovered else latest,
            recovered=recovered is not None,
            recovered_version=recovered.model_version if recovered else None,
            drift_to_recovery_s=(
                (recovered.produced_at - onset).total_seconds() if recovered and onset else None
            ),
            milestones_s={
                k: round((v - onset).total_seconds(), 1)
                for k, v in sorted(self.milestones.items(), key=lambda kv: kv[1])
                if onset is not None
            },
            retrain_requests=[r.idempotency_key for r in self.retrains if r.trigger == "monitor"],
            champions=[v for _, v in self.promotions],
            onset=onset,
            estimated_before=estimated(pre),
            estimated_lowest=estimated([worst]) if worst is not None else None,
            estimated_after=estimated([recovered or after[-1]]) if after else None,
            estimate_mae=sum(errors) / len(errors) if errors else None,
        )


@dataclass(frozen=True)
class DemoReport:
    before: float | None
    """Mean live accuracy of the last (up to) three windows before the drift."""
    lowest: float | None
    after: float | None
    """Accuracy of the window that counts as recovered (or the latest one)."""
    recovered: bool
    recovered_version: str | None
    drift_to_recovery_s: float | None
    milestones_s: dict[str, float]
    retrain_requests: list[str]
    champions: list[str]
    onset: datetime | None = None
    estimated_before: float | None = None
    """The same windows' accuracy estimated from predictions alone (before labels)."""
    estimated_lowest: float | None = None
    estimated_after: float | None = None
    estimate_mae: float | None = None
    """Mean absolute error of the estimate over the live windows."""

    def to_json(self) -> dict[str, Any]:
        doc = dict(self.__dict__)
        doc["onset"] = self.onset.isoformat() if self.onset else None
        return doc

    def table(self) -> Table:
        def pct(x: float | None) -> str:
            return f"{100 * x:.1f} %" if x is not None else "-"

        t = Table(title="day to night: the loop's summary", show_header=True)
        t.add_column("measure")
        t.add_column("value", justify="right")
        t.add_row("accuracy before the drift", pct(self.before))
        t.add_row("lowest accuracy after the drift", pct(self.lowest))
        t.add_row(
            "accuracy after recovery" if self.recovered else "latest accuracy (not recovered)",
            pct(self.after),
        )
        t.add_row(
            "estimated before labels: before / lowest / after",
            " / ".join(
                pct(x) for x in (self.estimated_before, self.estimated_lowest, self.estimated_after)
            ),
        )
        if self.estimate_mae is not None:
            t.add_row("estimate's mean absolute error", f"{100 * self.estimate_mae:.1f} pts")
        labels = {
            "suspected": "drop suspected (estimate or labels)",
            "confirmed": "drop confirmed (labels)",
            "accuracy_drop": "first window below the threshold",
            "drift_alert": "drift alert (label-free)",
            "retrain": "retrain requested",
            "trained": "candidate trained",
            "evaluated": "gate verdict",
            "shadow": "challenger in shadow",
            "promoted": "challenger promoted",
        }
        for key, seconds in self.milestones_s.items():
            if key in labels:
                t.add_row(labels[key], f"+{seconds:.0f} s")
        t.add_row(
            "drift onset to recovery",
            f"{self.drift_to_recovery_s:.0f} s" if self.drift_to_recovery_s else "-",
        )
        t.add_row("retrain requests by the monitor", str(len(self.retrain_requests)))
        return t


def _start(name: str, logs: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = (logs / f"{name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", f"services.{name}"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "STREAMLOOP_TELEMETRY_SAMPLE_RATIO": "0.05", **env},
    )


def _ready(name: str, logs: Path) -> bool:
    text = (logs / f"{name}.log").read_text(errors="replace")
    return READY.get(name, '"consumer started"') in text


def _simulate(
    scenario: str, logs: Path, *, rate: float | None, duration: float | None, run_id: str
) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "streamloop", "simulate", "--scenario", scenario]
    if rate is not None:
        args += ["--rate", str(rate)]
    if duration is not None:
        args += ["--duration", str(duration)]
    args += ["--run-id", run_id]
    return subprocess.Popen(
        args,
        cwd=ROOT,
        stdout=(logs / "simulator.log").open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def _watch(kafka: KafkaSettings, story: LoopStory, stop: threading.Event) -> None:
    """Feed the loop's topics to ``story`` and count frames, examples, predictions."""
    names = [
        Topics.METRICS,
        Topics.ALERTS,
        Topics.RETRAIN_REQUESTS,
        Topics.TRAINING_PROGRESS,
        Topics.MODELS_TRAINED,
        Topics.MODELS_EVALUATED,
        Topics.MODELS_LIFECYCLE,
    ]
    counted = [Topics.FRAMES_RAW, Topics.EXAMPLES, Topics.PREDICTIONS, Topics.LABELS_REQUESTS]
    with (
        TopicReader(kafka, names, start="end") as reader,
        TopicReader(kafka, counted, start="end") as counter,
    ):
        counted_at = 0.0
        for rec in reader.follow(stop=stop):
            if time.monotonic() - counted_at >= 0.5:
                counted_at = time.monotonic()
                story.frames = counter.count(Topics.FRAMES_RAW)
                story.examples = counter.count(Topics.EXAMPLES)
                story.predictions = counter.count(Topics.PREDICTIONS)
                story.label_requests = counter.count(Topics.LABELS_REQUESTS)
            if rec is None or rec.value is None:
                continue
            try:
                story.observe(decode(rec.value, Event))
            except ValueError:
                continue


def _panel(story: LoopStory, procs: dict[str, subprocess.Popen[bytes]], phase: str) -> Group:
    status = Table.grid(padding=(0, 2))
    status.add_row(
        f"[bold]{phase}[/]",
        "services: "
        + " ".join(f"[{'green' if p.poll() is None else 'red'}]{n}[/]" for n, p in procs.items()),
    )
    status.add_row(
        f"frames {story.frames}",
        f"examples {story.examples}  predictions {story.predictions}  "
        f"label requests {story.label_requests}  champion {story.champion or '-'}  "
        f"challenger {story.challenger or '-'}",
    )
    if story.epoch:
        status.add_row("", story.epoch)
    return Group(status, *story.lines[-14:])


def run_demo(
    console: Console,
    *,
    scenario: str = "day-to-night",
    bootstrap_scenario: str = "labelled-day",
    bootstrap_s: float = 150.0,
    rate: float | None = None,
    timeout_s: float = 1500.0,
    recovery_ratio: float = 0.9,
    summary_path: Path | None = None,
    model_name: str = DEFAULT_MODEL_NAME,
    linger_s: float = 0.0,
) -> int:
    """The closed-loop demo; returns the exit status (0 when the loop recovered).
    ``linger_s``: after the recovery, the loop runs on this long before the services stop
    (more windows of the new world for the summary's figures)."""
    # The narration owns the terminal; the Kafka client's own warnings go nowhere.
    logging.getLogger("kafka").setLevel(logging.ERROR)
    kafka = KafkaSettings()
    var = default_var_dir()
    logs = var / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    drift = load_scenario(scenario)
    onset_s = drift_onset_s(drift)
    complete_s = drift_complete_s(drift)
    pace = rate if rate is not None else drift.rate
    console.rule(f"[bold]StreamLoop demo: {drift.name}, watched, retrained and recovered")
    wait_for_kafka(kafka, timeout_s=60)
    provision(kafka)
    registry = RedisRegistry(connect(RedisSettings()))
    env = {f"STREAMLOOP_{s.upper()}_MODEL_NAME": model_name for s in SERVICES}
    procs = {name: _start(name, logs, env) for name in SERVICES}
    story = LoopStory(model_name)
    stop = threading.Event()
    run = f"demo{int(time.time()) % 100000}"
    phase = "starting services"
    interrupted = False
    unaffected = False
    try:
        deadline = time.monotonic() + 180
        while not all(_ready(n, logs) for n in SERVICES):
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                console.print(f"[red]services did not start: {dead or 'timeout'}; see {logs}[/]")
                return 1
            time.sleep(0.5)
        console.print(
            f"services up: {', '.join(SERVICES)} (logs in {logs})\n"
            f"dashboard: [bold link={DASHBOARD_URL}]{DASHBOARD_URL}[/]   "
            "traces: [bold]streamloop trace <id>[/]   status: [bold]streamloop status[/]"
        )
        watcher = threading.Thread(target=_watch, args=(kafka, story, stop), daemon=True)
        watcher.start()
        end = time.monotonic() + timeout_s
        with Live(_panel(story, procs, phase), console=console, refresh_per_second=4) as live:
            existing = registry.champion(model_name)
            if existing is not None:
                story.champion = existing.version
                story.say(f"champion {existing.version} already serving; no bootstrap needed")
            else:
                phase = "bootstrapping a first model"
                story.say(
                    f"bootstrap: {bootstrap_scenario} frames as fast as they go "
                    f"({bootstrap_s:.0f} scenario seconds) until training makes a first model"
                )
                procs["bootstrap"] = _simulate(
                    bootstrap_scenario, logs, rate=0, duration=bootstrap_s, run_id=f"{run}b"
                )
                while story.champion is None and time.monotonic() < end:
                    live.update(_panel(story, procs, phase))
                    time.sleep(0.25)
                if story.champion is None:
                    console.print(f"[red]no first model within {timeout_s:.0f}s; see {logs}[/]")
                    return 1
            phase = f"scenario {drift.name}"
            frames_before = story.frames
            procs["simulator"] = _simulate(scenario, logs, rate=rate, duration=None, run_id=run)
            # Scenario time starts with the first frame on the topic, not with the process.
            started = time.monotonic()
            while story.frames <= frames_before and time.monotonic() - started < 60:
                live.update(_panel(story, procs, phase))
                time.sleep(0.1)
            t0 = datetime.now(UTC)
            if onset_s is not None:
                scale = drift.rate / (pace or drift.rate)
                story.onset = datetime.fromtimestamp(t0.timestamp() + onset_s * scale, UTC)
                story.complete = datetime.fromtimestamp(
                    t0.timestamp() + (complete_s or onset_s) * scale, UTC
                )
            story.say(
                f"scenario [bold]{drift.name}[/]: {drift.description} "
                f"({pace:g} frames/s; the drift starts in {onset_s or 0:.0f} s)"
            )
            lingering = False
            while time.monotonic() < end:
                if not lingering and story.report(recovery_ratio).recovered:
                    story.say("[bold green]recovered[/]: live accuracy is back")
                    if linger_s <= 0:
                        break
                    story.say(f"running on for {linger_s:.0f} s")
                    lingering, end = True, min(end, time.monotonic() + linger_s)
                if not lingering and story.unaffected():
                    story.say(
                        f"[bold green]champion {story.champion} already handles this "
                        "scenario[/]: no window fell below the threshold (clean up with "
                        "[bold]make clean[/] to watch the loop from scratch)"
                    )
                    unaffected = True
                    break
                if procs["simulator"].poll() is not None:
                    story.say("[red]the simulator stopped[/]")
                    break
                exited = {n: procs[n].returncode for n in SERVICES if procs[n].poll() is not None}
                if exited:
                    story.say(f"[red]a service exited: {exited}; see {logs}[/]")
                    break
                live.update(_panel(story, procs, phase))
                time.sleep(0.25)
            live.update(_panel(story, procs, phase))
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: stopping the services[/]")
    finally:
        stop.set()
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    report = story.report(recovery_ratio)
    console.print(report.table())
    if summary_path is not None:
        summary_path.write_text(json.dumps(report.to_json(), indent=2))
    try:
        from streamloop.models_cli import print_versions

        print_versions(registry.view(model_name))
    except Exception as exc:  # noqa: BLE001 - the summary above is what matters
        console.print(f"[dim]models table unavailable: {exc}[/]")
    console.print(
        "\nNext: [bold]make demo[/] again (it continues from this champion), "
        "[bold]streamloop tail metrics[/], [bold]streamloop tail alerts[/], "
        "[bold]streamloop models list[/], [bold]streamloop trace <retrain key>[/], "
        "[bold]streamloop status[/]."
    )
    if interrupted:
        return 130
    return 0 if report.recovered or unaffected else 1
