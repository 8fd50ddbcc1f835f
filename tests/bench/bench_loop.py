"""Benchmark: the closed loop's speed, drift onset to recovery, per scenario.

    python -m tests.bench.bench_loop [--scenarios NAME ...] [--runs N] [--selection on off]
                                     [--coverage F] [--linger S] [--timeout S]

Each run is ``streamloop demo`` from nothing, as a user starts it: every service, a fresh
model (its own name, topic prefix, consumer groups, artifacts and logs), the bootstrap of a
first model from simulated day frames, then the scenario (default: ``day-to-night``,
``fog-bank`` and ``gradual-dusk``), until the loop recovers or ``--timeout``. ``--runs``
(default 3) runs of each, and the median of each figure. ``--selection off`` runs the same
with the monitor's label requests turned off (``STREAMLOOP_MONITORING_REQUESTS__
PER_CAMERA_MINUTE=0``, and the drift alert's, ``…_DRIFT__LABEL_REQUESTS_PER_WINDOW=0``):
only the simulator's random coverage labels frames. ``--coverage``
sets that random coverage (the scenario's, 0.3 in the built-ins, by default) for the
random runs: random labels at the label rate the active runs consumed compare the two at
the same budget. ``--linger`` keeps each run going that many seconds after its recovery
(``streamloop demo --linger``), so that the estimate's error is measured over more windows
of the new condition than the few before the recovery.

Per run, from the demo's summary and the run's topics:

- drift onset to recovery (the first window of a champion promoted after the onset at 90 %
  of the accuracy before it), and each step's time (suspected, requested, trained, gate,
  promoted);
- labels consumed until recovery: labels published between the onset and the recovery,
  and of them those the monitor had asked for;
- the estimate's mean absolute error over the live windows of one condition only (day,
  night, fog, dusk), per condition.

A run that does not recover within ``--timeout`` counts as such (no time). Runs take 5 to
15 minutes each on a 2-core machine (the bootstrap about 2); the figures move with whatever
else runs. A measurement, not a test: it exits 0 whatever the figures. Figures go to
``var/bench/loop.json``; what each run printed, and each window's estimate and accuracy
(``windows.json``), to ``var/bench/loop/<run>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from services.simulator.scenario import load as load_scenario
from shared.events import Event, Label, LabelRequest, WindowMetrics, decode
from shared.kafka_admin import KafkaAdmin
from shared.settings import KafkaSettings
from shared.topics import Topics
from tests.bench.lib.control import delete_groups, delete_redis_keys, delete_topics
from tests.bench.lib.loop import estimate_mae, window_rows, with_coverage
from tests.bench.lib.procs import load_average
from tests.bench.lib.report import bench_dir, write_figures
from tests.integration.helpers import DEMO_GROUPS, demo_env, read_all

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("day-to-night", "fog-bank", "gradual-dusk")
STEPS = ("suspected", "retrain", "trained", "evaluated", "promoted")


def run_once(
    console: Console,
    scenario: str,
    selection: bool,
    timeout_s: float,
    coverage: float | None = None,
    linger_s: float = 0.0,
) -> dict[str, Any]:
    """One demo run from nothing; its figures. ``coverage`` replaces the scenario's random
    label coverage; ``linger_s`` runs the loop on after the recovery."""
    tag = uuid.uuid4().hex[:8]
    prefix, model = f"loopbench-{tag}-", f"loop-{tag}"
    home = bench_dir() / "loop" / f"{scenario}-{'active' if selection else 'random'}-{tag}"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COLUMNS": "160", **demo_env(prefix, home)}
    if not selection:
        env["STREAMLOOP_MONITORING_REQUESTS__PER_CAMERA_MINUTE"] = "0"
        env["STREAMLOOP_MONITORING_DRIFT__LABEL_REQUESTS_PER_WINDOW"] = "0"
    played = str(with_coverage(scenario, coverage, home)) if coverage is not None else scenario
    summary_path = home / "summary.json"
    console.print(f"[bold]{scenario}[/] ({'active' if selection else 'random'} labels): {home}")
    started = time.monotonic()
    with (home / "demo.txt").open("w") as out:
        code = subprocess.call(
            [sys.executable, "-m", "streamloop", "demo", "--scenario", played,
             "--model", model, "--summary", str(summary_path), "--timeout", str(int(timeout_s)),
             "--linger", str(linger_s)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            timeout=timeout_s + 600,
        )  # fmt: skip
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    try:
        figures = figures_of(summary, prefix, home)
    finally:
        settings = KafkaSettings()
        delete_topics(
            [t for t in _topics(settings) if t.startswith(prefix)], console.print,
            only_existing=True,
        )  # fmt: skip
        delete_groups(settings, [f"{prefix}{g}" for g in DEMO_GROUPS])
        delete_redis_keys(f"streamloop:registry:{model}:*", console.print)
    rate = load_scenario(played).rate
    if figures.get("labels_to_recover") is not None and figures["recovery_s"]:
        figures["label_rate"] = round(
            figures["labels_to_recover"] / (rate * figures["recovery_s"]), 3
        )
    figures |= {
        "exit": code,
        "wall_s": round(time.monotonic() - started, 1),
        "home": str(home),
        "coverage": coverage,
    }
    console.print(f"  {json.dumps({k: v for k, v in figures.items() if k != 'home'})}")
    return figures


def _topics(settings: KafkaSettings) -> list[str]:
    with KafkaAdmin(settings) as admin:
        return list(admin.list_topics())


def figures_of(summary: dict[str, Any], prefix: str, home: Path) -> dict[str, Any]:
    """What one run measured: the summary's times and the topics' labels and windows; every
    window's estimate and accuracy to ``home``/windows.json."""
    onset = datetime.fromisoformat(summary["onset"]) if summary.get("onset") else None
    recovery = summary.get("drift_to_recovery_s") if summary.get("recovered") else None
    out: dict[str, Any] = {
        "recovered": bool(summary.get("recovered")),
        "recovery_s": recovery,
        "steps_s": {k: v for k, v in summary.get("milestones_s", {}).items() if k in STEPS},
        "retrain_requests": len(summary.get("retrain_requests", [])),
        "before": summary.get("before"),
        "after": summary.get("after"),
    }
    settings = KafkaSettings()
    metrics = _events(settings, prefix + Topics.METRICS)
    windows = [w for w in metrics if isinstance(w, WindowMetrics)]
    out["estimate_mae"] = estimate_mae([w for w in windows if not w.shadow])
    (home / "windows.json").write_text(json.dumps(window_rows(windows), indent=1))
    if onset is not None and recovery is not None:
        end = onset + timedelta(seconds=recovery)
        labels = [e for e in _events(settings, prefix + Topics.LABELS) if isinstance(e, Label)]
        asked = {
            e.frame_id
            for e in _events(settings, prefix + Topics.LABELS_REQUESTS)
            if isinstance(e, LabelRequest)
        }
        during = [lab for lab in labels if onset <= lab.produced_at <= end]
        out["labels_to_recover"] = len(during)
        out["requested_labels_to_recover"] = sum(1 for lab in during if lab.frame_id in asked)
    return out


def _events(settings: KafkaSettings, topic: str) -> list[Event]:
    records = read_all(settings, topic, 10**7, timeout_s=5)
    return [decode(r.value, Event) for r in records if r.value is not None]


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--selection", nargs="+", choices=("on", "off"), default=["on"])
    parser.add_argument("--coverage", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=1500.0)
    parser.add_argument("--linger", type=float, default=0.0)
    args = parser.parse_args(argv)
    console = Console()
    console.rule("[bold]the closed loop: drift onset to recovery")
    results: dict[str, list[dict[str, Any]]] = {}
    for scenario in args.scenarios:
        for selection in args.selection:
            key = f"{scenario} ({'active' if selection == 'on' else 'random'} labels)"
            on = selection == "on"
            coverage = None if on else args.coverage
            if coverage is not None:
                key = f"{scenario} (random labels, coverage {coverage:g})"
            results[key] = [
                run_once(console, scenario, on, args.timeout, coverage, args.linger)
                for _ in range(args.runs)
            ]
    table = Table(
        "scenario", "runs", "recovered", "onset to recovery (median)", "each run",
        "promoted (median)", "labels to recover", "labels per frame", "estimate MAE by condition",
    )  # fmt: skip
    summary: dict[str, Any] = {}
    for key, runs in results.items():
        recovered = [r for r in runs if r["recovered"]]
        promoted = [r["steps_s"].get("promoted") for r in runs]
        mae: dict[str, list[float]] = defaultdict(list)
        for r in runs:
            for c, v in r["estimate_mae"].items():
                mae[c].append(v["mae"])
        row = {
            "runs": len(runs),
            "recovered": len(recovered),
            "recovery_s_median": median_of(recovered, "recovery_s"),
            "recovery_s": [r["recovery_s"] for r in runs],
            "promoted_s_median": statistics.median([p for p in promoted if p is not None])
            if any(p is not None for p in promoted)
            else None,
            "labels_to_recover_median": median_of(recovered, "labels_to_recover"),
            "label_rate_median": median_of(recovered, "label_rate"),
            "estimate_mae_median": {c: round(statistics.median(v), 4) for c, v in mae.items()},
        }
        summary[key] = row
        table.add_row(
            key, str(len(runs)), f"{len(recovered)}/{len(runs)}",
            _s(row["recovery_s_median"]), ", ".join(_s(r) for r in row["recovery_s"]),
            _s(row["promoted_s_median"]), _n(row["labels_to_recover_median"]),
            f"{row['label_rate_median']:.2f}" if row["label_rate_median"] is not None else "-",
            ", ".join(f"{c} {v:.3f}" for c, v in row["estimate_mae_median"].items()),
        )  # fmt: skip
    console.print(table)
    doc = {
        "at": datetime.now(UTC).isoformat(),
        "load_average": load_average(),
        "summary": summary,
        "runs": results,
    }
    console.print(f"figures written to {write_figures('loop', doc)}")
    return 0


def _s(value: float | None) -> str:
    return f"{value:.0f} s" if value is not None else "-"


def _n(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "-"


if __name__ == "__main__":
    raise SystemExit(main())
