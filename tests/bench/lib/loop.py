"""The closed-loop benchmark's figures that need no broker (``tests.bench.bench_loop``)."""

from __future__ import annotations

import statistics
from collections import defaultdict

from shared.events import WindowMetrics

__all__ = ["estimate_mae"]


def estimate_mae(windows: list[WindowMetrics]) -> dict[str, dict[str, float]]:
    """Mean absolute error of the estimate over windows whose labels are all of one
    condition, per condition, with the number of windows."""
    errors: dict[str, list[float]] = defaultdict(list)
    for w in windows:
        conditions = [
            k.split("=", 1)[1] for k in w.per_slice_accuracy if k.startswith("condition=")
        ]
        if len(conditions) == 1 and w.estimate_error is not None:
            errors[conditions[0]].append(abs(w.estimate_error))
    return {
        c: {"mae": round(statistics.fmean(e), 4), "windows": len(e)}
        for c, e in sorted(errors.items())
    }
