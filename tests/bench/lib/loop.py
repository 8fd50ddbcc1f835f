"""The closed-loop benchmark's figures that need no broker (``tests.bench.bench_loop``)."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path

from services.simulator.scenario import BUILTIN_DIR
from services.simulator.scenario import load as load_scenario
from shared.events import WindowMetrics

__all__ = ["estimate_mae", "window_rows", "with_coverage"]


def _conditions(w: WindowMetrics) -> list[str]:
    """The conditions of the labels a window counted."""
    return [k.split("=", 1)[1] for k in w.per_slice_accuracy if k.startswith("condition=")]


def estimate_mae(windows: list[WindowMetrics]) -> dict[str, dict[str, float]]:
    """Mean absolute error of the estimate over windows whose labels are all of one
    condition, per condition, with the number of windows and the error of the first (in
    ``windows``' order): the window that opens a change, whose estimate has no labels of the
    new condition to correct it yet."""
    errors: dict[str, list[float]] = defaultdict(list)
    for w in windows:
        conditions = _conditions(w)
        if len(conditions) == 1 and w.estimate_error is not None:
            errors[conditions[0]].append(abs(w.estimate_error))
    return {
        c: {"mae": round(statistics.fmean(e), 4), "windows": len(e), "first": round(e[0], 4)}
        for c, e in sorted(errors.items())
    }


def window_rows(windows: list[WindowMetrics]) -> list[dict[str, object]]:
    """One row per window, in ``windows``' order: what the estimate said beside what the
    labels said, and the conditions of those labels (the run's ``windows.json``)."""
    rows: list[dict[str, object]] = []
    for w in windows:
        e = w.estimate
        rows.append({
            "window": w.window_id,
            "shadow": w.shadow,
            "start": w.window_start.isoformat(),
            "conditions": sorted(_conditions(w)),
            "frames": w.sample_count,
            "labelled": w.labelled_count,
            "accuracy": None if w.accuracy is None else round(w.accuracy, 4),
            "sampled": w.sampled_count,
            "sampled_accuracy": None
            if w.sampled_accuracy is None
            else round(w.sampled_accuracy, 4),
            "estimate": None if e is None else round(e.value, 4),
            "method": None if e is None else e.method,
            "error": None if w.estimate_error is None else round(w.estimate_error, 4),
        })  # fmt: skip
    return rows


def with_coverage(scenario: str, coverage: float, home: Path) -> Path:
    """A copy of the built-in ``scenario`` whose annotators label ``coverage`` of the frames
    at random; its path."""
    text = (BUILTIN_DIR / f"{scenario}.toml").read_text()
    changed, n = re.subn(
        r"^coverage = .*$", f"coverage = {coverage}", text, count=1, flags=re.MULTILINE
    )
    if n != 1:
        raise ValueError(f"scenario {scenario} sets no label coverage")
    path = home / f"{scenario}.toml"
    path.write_text(changed)
    if load_scenario(path).labels.coverage != coverage:
        raise ValueError(f"coverage {coverage} did not reach {path}")
    return path
