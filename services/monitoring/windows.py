"""Monitoring windows: labelled predictions of one model version, summarised.

A window collects observations (a prediction, with its ground truth once the label arrived,
or without when it never did) of one model version on one stream (champion or shadow). It
closes when it holds ``labelled_per_window`` labelled observations, or, as a fallback for
quiet periods, when its oldest observation is ``max_window_s`` old and it has at least
``min_labelled_time_window`` labels. Window ids count per version and stream, so replaying
the same observations after a restart gives the same ids (the retrain trigger's idempotency
keys are built from them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from services.monitoring.drift import psi
from shared.events import ClassMetrics, WindowMetrics

__all__ = ["Observation", "WindowBook", "WindowPolicy", "summarise"]


class WindowPolicy(BaseModel):
    """When a window closes."""

    model_config = ConfigDict(frozen=True)

    labelled_per_window: int = Field(default=200, gt=0)
    """Labelled predictions per count window."""

    max_window_s: float = Field(default=600.0, gt=0)
    """A window older than this closes early (time fallback) ..."""

    min_labelled_time_window: int = Field(default=50, gt=0)
    """... if it has at least this many labels; otherwise it stays open."""


@dataclass(frozen=True)
class Observation:
    """One prediction and, when it arrived, its label."""

    frame_id: str
    camera_id: str
    condition: str | None
    predicted: str
    confidence: float
    served_at: datetime
    label: str | None = None


def summarise(
    observations: Sequence[Observation],
    classes: Sequence[str],
    *,
    model_name: str,
    model_version: str,
    window_id: str,
    kind: str,
    shadow: bool,
    reference_mix: dict[str, float] | None = None,
) -> WindowMetrics:
    """The metrics of one closed window. Accuracy, per-class and per-slice figures come from
    the labelled observations; confidence, class mix and PSI from all of them."""
    labelled = [o for o in observations if o.label is not None]
    n = len(observations)
    per_class: dict[str, ClassMetrics] = {}
    f1s = []
    for c in classes:
        tp = sum(1 for o in labelled if o.predicted == c and o.label == c)
        predicted = sum(1 for o in labelled if o.predicted == c)
        support = sum(1 for o in labelled if o.label == c)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = ClassMetrics(precision=precision, recall=recall, f1=f1, support=support)
        if support:
            f1s.append(f1)
    slices: dict[str, list[bool]] = {}
    for o in labelled:
        hit = o.predicted == o.label
        slices.setdefault(f"camera={o.camera_id}", []).append(hit)
        slices.setdefault(f"condition={o.condition or 'unknown'}", []).append(hit)
    mix_counts = Counter(o.predicted for o in observations)
    mix = {c: mix_counts.get(c, 0) / n for c in classes} if n else {}
    return WindowMetrics(
        source="monitoring",
        model_name=model_name,
        model_version=model_version,
        window_id=window_id,
        window_kind="count" if kind == "count" else "time",
        window_start=min(o.served_at for o in observations),
        window_end=max(o.served_at for o in observations),
        shadow=shadow,
        sample_count=n,
        labelled_count=len(labelled),
        label_coverage=len(labelled) / n if n else 0.0,
        accuracy=sum(o.predicted == o.label for o in labelled) / len(labelled)
        if labelled
        else None,
        macro_f1=sum(f1s) / len(f1s) if f1s else None,
        per_class=per_class,
        per_slice_accuracy={k: sum(v) / len(v) for k, v in sorted(slices.items())},
        mean_confidence=sum(o.confidence for o in observations) / n if n else None,
        class_mix=mix,
        psi=psi(reference_mix, mix) if reference_mix and mix else None,
    )


@dataclass
class WindowBook:
    """The open window of one model version and stream; emits each window as it closes.

    The first closed window's class mix becomes the reference that later windows' PSI is
    measured against (what the model saw when it was new)."""

    model_name: str
    model_version: str
    shadow: bool
    classes: tuple[str, ...]
    policy: WindowPolicy = field(default_factory=WindowPolicy)
    reference_mix: dict[str, float] | None = None
    closed: int = 0
    _open: list[Observation] = field(default_factory=list)
    _labelled: int = 0

    def add(self, obs: Observation) -> WindowMetrics | None:
        """Add one observation; the window it closed, if any."""
        self._open.append(obs)
        if obs.label is not None:
            self._labelled += 1
        if self._labelled >= self.policy.labelled_per_window:
            return self._close("count")
        return None

    def tick(self, now: datetime) -> WindowMetrics | None:
        """Close the window by time when it is old enough and labelled enough."""
        if not self._open or self._labelled < self.policy.min_labelled_time_window:
            return None
        age = (now - min(o.served_at for o in self._open)).total_seconds()
        return self._close("time") if age >= self.policy.max_window_s else None

    def _close(self, kind: str) -> WindowMetrics:
        self.closed += 1
        stream = "shadow" if self.shadow else "live"
        window = summarise(
            self._open,
            self.classes,
            model_name=self.model_name,
            model_version=self.model_version,
            window_id=f"{self.model_version}:{stream}:{self.closed}",
            kind=kind,
            shadow=self.shadow,
            reference_mix=self.reference_mix,
        )
        if self.reference_mix is None:
            self.reference_mix = dict(window.class_mix)
        self._open, self._labelled = [], 0
        return window
