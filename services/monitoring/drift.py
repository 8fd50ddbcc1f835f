"""Label-free drift signals."""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["psi"]


def psi(expected: Mapping[str, float], actual: Mapping[str, float], floor: float = 1e-4) -> float:
    """Population stability index of ``actual`` against ``expected`` (shares per category).

    Sum over categories of ``(a - e) * ln(a / e)``; shares are floored at ``floor`` so a
    category missing on one side counts as rare rather than infinite. Rules of thumb: below
    0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a large one."""
    keys = set(expected) | set(actual)
    e_total = sum(expected.values()) or 1.0
    a_total = sum(actual.values()) or 1.0
    total = 0.0
    for k in keys:
        e = max(expected.get(k, 0.0) / e_total, floor)
        a = max(actual.get(k, 0.0) / a_total, floor)
        total += (a - e) * math.log(a / e)
    return total
