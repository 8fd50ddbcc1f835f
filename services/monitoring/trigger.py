"""The retrain trigger: when a drop in live accuracy becomes a retrain request.

A request fires only when

1. windows have at least ``min_labels`` labelled predictions (others neither count nor
   break a run),
2. the champion's accuracy stays below ``threshold`` for ``consecutive`` windows in a row,
3. and no earlier request is cooling down (``cooldown_s``).

The request names the slices (camera, condition) below the threshold in the window that fired
it, for training to weight their examples up. Its idempotency key names the drop: model,
version and the first bad window of the run. Replaying the same windows after a restart
yields the same key, so a drop never trains twice even if the monitor fires again; within
one run of bad windows it fires once.

A drop that outlives its request (the candidate was refused at the gate, or lost the live
comparison) is asked for again, ``retry_after_s`` after the last request and at most
``max_attempts`` times in all; each attempt has its own key (``…:attempt-2``), so the retry
is one training too, however often the monitor restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.events import RetrainRequest, WindowMetrics

__all__ = ["RetrainTrigger", "TriggerPolicy"]


class TriggerPolicy(BaseModel):
    """When a drop is a drop."""

    model_config = ConfigDict(frozen=True)

    threshold: float = Field(default=0.75, ge=0.0, le=1.0)
    """Live accuracy below this is bad. The simulator's day model scores above 0.95 by day and
    under 0.5 at night or in fog, so 0.75 separates them with room for window noise."""

    consecutive: int = Field(default=2, ge=1)
    """Bad windows in a row before a request fires (one bad window may be bad luck)."""

    min_labels: int = Field(default=100, ge=1)
    """Labelled predictions a window needs to count."""

    cooldown_s: float = Field(default=300.0, ge=0)
    """After a request, no other fires for this long: time for training, evaluation and the
    shadow comparison to answer (about two to three minutes on the simulator's stream)."""

    retry_after_s: float = Field(default=600.0, ge=0)
    """A drop still running this long after its last request is asked for again: by then the
    answer (a champion promoted on live evidence) is overdue, and more labels of the new world
    have arrived for the next attempt."""

    max_attempts: int = Field(default=3, ge=1)
    """Requests per drop in all; after that the drop waits for a person (its alert stands)."""


@dataclass
class RetrainTrigger:
    """Watches the champion's windows of one model (see the module docstring)."""

    model_name: str
    policy: TriggerPolicy = field(default_factory=TriggerPolicy)
    _run: list[str] = field(default_factory=list)
    _run_version: str | None = None
    _attempts: dict[str, int] = field(default_factory=dict)
    _last_fired: datetime | None = None

    def state(self) -> dict[str, Any]:
        """The trigger's state as JSON (kept in the monitor's table across restarts)."""
        return {
            "run": list(self._run),
            "run_version": self._run_version,
            "attempts": dict(sorted(self._attempts.items())),
            "last_fired": self._last_fired.isoformat() if self._last_fired else None,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state()`` of an earlier trigger."""
        self._run = [str(w) for w in state.get("run", [])]
        self._run_version = state.get("run_version")
        attempts = state.get("attempts")
        if attempts is None:  # written before retries: every drop named there fired once
            attempts = dict.fromkeys(state.get("fired_for", []), 1)
        self._attempts = {str(w): int(n) for w, n in attempts.items()}
        last = state.get("last_fired")
        self._last_fired = datetime.fromisoformat(last) if last else None

    def observe(self, window: WindowMetrics, now: datetime) -> RetrainRequest | None:
        """The request this window fires, if any."""
        p = self.policy
        if window.shadow or window.model_name != self.model_name:
            return None
        if window.accuracy is None or window.labelled_count < p.min_labels:
            return None
        if window.model_version != self._run_version:
            self._run, self._run_version = [], window.model_version
        if window.accuracy >= p.threshold:
            self._run = []
            return None
        self._run.append(window.window_id)
        if len(self._run) < p.consecutive:
            return None
        drop = self._run[0]
        attempt = self._attempts.get(drop, 0) + 1
        if attempt > p.max_attempts:
            return None
        since = (now - self._last_fired).total_seconds() if self._last_fired else None
        if since is not None and since < (p.cooldown_s if attempt == 1 else p.retry_after_s):
            return None
        self._attempts[drop] = attempt
        self._last_fired = now
        key = f"drop:{self.model_name}:{drop}"
        return RetrainRequest(
            source="monitoring",
            model_name=self.model_name,
            idempotency_key=key if attempt == 1 else f"{key}:attempt-{attempt}",
            reason=(
                f"live accuracy of {window.model_version} below {p.threshold:.2f} for "
                f"{len(self._run)} windows (last {window.accuracy:.3f} on "
                f"{window.labelled_count} labels)"
                + (f"; attempt {attempt} of {p.max_attempts}" if attempt > 1 else "")
            ),
            trigger="monitor",
            window_ids=list(self._run),
            slices=sorted(k for k, a in window.per_slice_accuracy.items() if a < p.threshold),
        )
