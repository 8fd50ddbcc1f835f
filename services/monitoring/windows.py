"""Monitoring windows: what one model version did on one stream, summarised as it happened.

A window of one model version on one stream (``live``: the champion's predictions; ``shadow``:
the challenger's) counts, in the order the monitor sees them,

- every prediction that arrives (sample count, mean confidence, predicted class mix, per-camera
  confidence, and the least confident frames: the label-free signals), and
- every prediction whose label arrives (accuracy, per-class precision/recall/F1, macro-F1,
  per-slice accuracy).

Labels come late, so a labelled prediction is counted in the window that is open when its
label arrives, not in the one that saw the prediction: windows close promptly and no window
is ever reopened. Coverage is labelled predictions over predictions of the same window.

A window closes when it holds ``labelled_per_window`` labelled predictions (count window) or,
as a fallback for quiet periods, when it has been open for ``max_window_s`` and has at least
``min_labelled_time_window`` labels (time window). Window ids count per version and stream
(``<version>:<stream>:<n>``); the book's state is plain JSON, kept in the monitor's table, so
a restarted monitor continues the same numbering (the retrain trigger's idempotency keys are
built from these ids).

Everything here is pure: no Kafka, no clock of its own.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.monitoring.drift import psi
from services.monitoring.estimate import (
    Chance,
    EstimateAccumulator,
    EstimateBlock,
    EstimatePolicy,
    LabelledBias,
    LabelPrior,
)
from shared.events import ClassMetrics, WindowMetrics

__all__ = [
    "Observation",
    "Reference",
    "Stream",
    "WindowAccumulator",
    "WindowBook",
    "WindowPolicy",
]

Stream = Literal["live", "shadow"]


class WindowPolicy(BaseModel):
    """When a window closes."""

    model_config = ConfigDict(frozen=True)

    labelled_per_window: int = Field(default=100, gt=0)
    """Labelled predictions per count window. At the simulator's 20 frames/s and 30 % label
    coverage, one window every 17 s or so; 100 labels put the standard error of an accuracy
    near 0.9 at 0.03, and a recovery is seen about 20 s sooner than with windows of 200."""

    reference_samples: int = Field(default=400, gt=0)
    """Predictions the drift reference (``Reference``) holds before windows are compared with
    it: the version's first windows until they add up to this. With windows of 100 labels, a
    reference of one window (about 170 predictions at the test's rate) was too noisy a
    baseline: later steady-day windows crossed the drift threshold."""

    max_window_s: float = Field(default=300.0, gt=0)
    """A window open this long closes early (time fallback) ..."""

    min_labelled_time_window: int = Field(default=50, gt=0)
    """... if it has at least this many labels; otherwise it stays open."""

    uncertain_per_camera: int = Field(default=20, ge=0)
    """Least confident frames remembered per camera (candidates for label requests)."""

    estimate: EstimatePolicy = EstimatePolicy()
    """How a window's accuracy is estimated from its predictions before labels arrive."""


@dataclass(frozen=True)
class Observation:
    """One prediction as the monitor sees it; ``label`` once the ground truth arrived."""

    frame_id: str
    camera_id: str
    condition: str | None
    predicted: str
    confidence: float
    served_at: datetime
    label: str | None = None
    calibrated: float | None = None
    """The calibrated confidence (the version's temperature applied); None when unknown,
    and the raw confidence stands in."""
    requested: bool = False
    """Its label answers a label request (``Label.requested``): the frame was chosen, not
    sampled at random, so it stays out of what needs a random sample of the frames
    (``WindowMetrics.sampled_accuracy``, the estimate's corrections and class prior)."""

    @property
    def chance_correct(self) -> float:
        return self.confidence if self.calibrated is None else self.calibrated

    def to_json(self) -> dict[str, Any]:
        return {
            "frame_id": self.frame_id,
            "camera_id": self.camera_id,
            "condition": self.condition,
            "predicted": self.predicted,
            "confidence": self.confidence,
            "served_at": self.served_at.isoformat(),
            "label": self.label,
            "calibrated": self.calibrated,
            "requested": self.requested,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Observation:
        return cls(
            frame_id=str(data["frame_id"]),
            camera_id=str(data["camera_id"]),
            condition=data.get("condition"),
            predicted=str(data["predicted"]),
            confidence=float(data["confidence"]),
            served_at=datetime.fromisoformat(data["served_at"]),
            label=data.get("label"),
            calibrated=data.get("calibrated"),
            requested=bool(data.get("requested", False)),
        )


class WindowAccumulator(BaseModel):
    """Sufficient statistics of one open window (small, whatever the window's size)."""

    samples: int = 0
    labelled: int = 0
    confidence_sum: float = 0.0
    mix: dict[str, int] = Field(default_factory=dict)
    """Predicted class -> predictions."""
    confusion: dict[str, dict[str, int]] = Field(default_factory=dict)
    """True class -> predicted class -> labelled predictions."""
    slices: dict[str, list[int]] = Field(default_factory=dict)
    """``camera=…`` / ``condition=…`` -> [correct, labelled]."""
    sampled: list[int] = Field(default_factory=lambda: [0, 0])
    """[correct, labelled] of the labels nobody asked for (``Observation.requested``)."""
    cameras: dict[str, list[float]] = Field(default_factory=dict)
    """Camera -> [predictions, confidence sum]."""
    uncertain: dict[str, list[tuple[float, str]]] = Field(default_factory=dict)
    """Camera -> the least confident (confidence, frame_id) seen, at most a few."""
    estimate: EstimateAccumulator = Field(default_factory=EstimateAccumulator)
    """Every prediction's calibrated confidence and class: the label-free accuracy estimate."""
    camera_estimates: dict[str, EstimateAccumulator] = Field(default_factory=dict)
    first_at: datetime | None = None
    """Serving time of the earliest prediction or label counted."""
    last_at: datetime | None = None
    opened_at: datetime | None = None
    """Monitor clock when the window got its first observation (for the time fallback)."""

    def _touch(self, at: datetime, now: datetime) -> None:
        self.first_at = at if self.first_at is None or at < self.first_at else self.first_at
        self.last_at = at if self.last_at is None or at > self.last_at else self.last_at
        if self.opened_at is None:
            self.opened_at = now

    def add_prediction(
        self, obs: Observation, now: datetime, keep_uncertain: int, chance: Chance | None = None
    ) -> None:
        """Count one prediction; ``chance`` is what it counts in the estimate (default: its
        calibrated confidence, uncorrected)."""
        self._touch(obs.served_at, now)
        self.samples += 1
        self.confidence_sum += obs.confidence
        self.mix[obs.predicted] = self.mix.get(obs.predicted, 0) + 1
        cam = self.cameras.setdefault(obs.camera_id, [0.0, 0.0])
        cam[0] += 1
        cam[1] += obs.confidence
        c = chance or Chance(p=obs.chance_correct)
        self.estimate.add(obs.predicted, c.p, c.sd)
        self.camera_estimates.setdefault(obs.camera_id, EstimateAccumulator()).add(
            obs.predicted, c.p, c.sd
        )
        if keep_uncertain:
            # A max-heap on confidence (negated) of the ``keep_uncertain`` least confident.
            heap = [(-c, f) for c, f in self.uncertain.get(obs.camera_id, [])]
            heapq.heapify(heap)
            item = (-obs.confidence, obs.frame_id)
            if len(heap) < keep_uncertain:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
            self.uncertain[obs.camera_id] = sorted((-c, f) for c, f in heap)

    def add_label(self, obs: Observation, now: datetime) -> None:
        if obs.label is None:
            raise ValueError("add_label needs a labelled observation")
        self._touch(obs.served_at, now)
        self.labelled += 1
        row = self.confusion.setdefault(obs.label, {})
        row[obs.predicted] = row.get(obs.predicted, 0) + 1
        hit = int(obs.predicted == obs.label)
        if not obs.requested:
            self.sampled[0] += hit
            self.sampled[1] += 1
        for key in (f"camera={obs.camera_id}", f"condition={obs.condition or 'unknown'}"):
            cell = self.slices.setdefault(key, [0, 0])
            cell[0] += hit
            cell[1] += 1

    def is_empty(self) -> bool:
        return self.samples == 0 and self.labelled == 0

    def class_mix(self, classes: Sequence[str]) -> dict[str, float]:
        n = sum(self.mix.values())
        return {c: self.mix.get(c, 0) / n for c in classes} if n else {}

    def camera_confidence(self) -> dict[str, float]:
        return {cam: s / n for cam, (n, s) in sorted(self.cameras.items()) if n}

    def camera_samples(self) -> dict[str, int]:
        return {cam: int(n) for cam, (n, _) in sorted(self.cameras.items()) if n}

    def metrics(
        self,
        classes: Sequence[str],
        *,
        model_name: str,
        model_version: str,
        window_id: str,
        kind: Literal["count", "time"],
        shadow: bool,
        reference: Reference | None,
        estimate_policy: EstimatePolicy | None = None,
        prior: LabelPrior | None = None,
    ) -> WindowMetrics:
        """The window's ``WindowMetrics``; PSI against ``reference``'s class mix when given;
        the estimated accuracy with ``estimate_policy`` and the label ``prior``."""
        per_class: dict[str, ClassMetrics] = {}
        f1s = []
        for c in classes:
            tp = self.confusion.get(c, {}).get(c, 0)
            predicted = sum(row.get(c, 0) for row in self.confusion.values())
            support = sum(self.confusion.get(c, {}).values())
            precision = tp / predicted if predicted else 0.0
            recall = tp / support if support else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            per_class[c] = ClassMetrics(precision=precision, recall=recall, f1=f1, support=support)
            if support:
                f1s.append(f1)
        correct = sum(row.get(label, 0) for label, row in self.confusion.items())
        mix = self.class_mix(classes)
        at = self.first_at or self.opened_at
        assert at is not None, "an empty window has no metrics"
        accuracy = correct / self.labelled if self.labelled else None
        hits, sampled = self.sampled
        sampled_accuracy = hits / sampled if sampled else None
        ep = estimate_policy or EstimatePolicy()
        estimate = self.estimate.estimate(classes, prior, ep)
        # The estimate is of every frame; asked-for labels are the least confident frames or
        # disagreements, whose accuracy is lower than the window's. Its error is measured on
        # the labels nobody asked for (a random sample), all labels while those are too few.
        truth = sampled_accuracy if sampled >= ep.error_min_labels else accuracy
        return WindowMetrics(
            source="monitoring",
            model_name=model_name,
            model_version=model_version,
            window_id=window_id,
            window_kind=kind,
            window_start=at,
            window_end=self.last_at or at,
            shadow=shadow,
            sample_count=self.samples,
            labelled_count=self.labelled,
            label_coverage=min(1.0, self.labelled / self.samples) if self.samples else 0.0,
            accuracy=accuracy,
            sampled_accuracy=sampled_accuracy,
            sampled_count=sampled,
            macro_f1=sum(f1s) / len(f1s) if f1s else None,
            per_class=per_class,
            per_slice_accuracy={k: c / n for k, (c, n) in sorted(self.slices.items()) if n},
            mean_confidence=self.confidence_sum / self.samples if self.samples else None,
            class_mix=mix,
            psi=psi(reference.mix, mix)
            if reference is not None and reference.mix and mix
            else None,
            estimate=estimate,
            per_camera_estimate={
                cam: e
                for cam, acc in sorted(self.camera_estimates.items())
                if (e := acc.estimate(classes, prior, ep, camera=True)) is not None
            },
            estimate_error=estimate.value - truth
            if estimate is not None and truth is not None
            else None,
        )


class Reference(BaseModel):
    """What a version looked like in its first windows: the baseline of label-free drift.

    It grows window by window until it holds ``WindowPolicy.reference_samples`` predictions,
    so that small windows do not make a noisy baseline; windows compared with it are the
    ones after that."""

    window_id: str
    """The last window it holds."""
    mix: dict[str, float]
    mean_confidence: float | None
    camera_confidence: dict[str, float]
    camera_samples: dict[str, int] | None = None
    """Predictions behind each camera's confidence (None in references kept before counts)."""
    samples: int | None = None
    """Predictions it holds (None in references kept before it grew: complete)."""

    @classmethod
    def of(cls, acc: WindowAccumulator, window_id: str, classes: Sequence[str]) -> Reference:
        return cls(
            window_id=window_id,
            mix=acc.class_mix(classes),
            mean_confidence=acc.confidence_sum / acc.samples if acc.samples else None,
            camera_confidence=acc.camera_confidence(),
            camera_samples=acc.camera_samples(),
            samples=acc.samples,
        )

    def complete(self, policy: WindowPolicy) -> bool:
        return self.samples is None or self.samples >= policy.reference_samples

    def grown(self, other: Reference) -> Reference:
        """This reference with ``other`` (the next window's) added, weighted by predictions."""
        n, m = self.samples or 0, other.samples or 0
        if n + m == 0:
            return other

        def mean(a: float | None, b: float | None, wa: int, wb: int) -> float | None:
            if a is None or wa == 0:
                return b
            if b is None or wb == 0:
                return a
            return (a * wa + b * wb) / (wa + wb)

        cams_a, cams_b = self.camera_samples or {}, other.camera_samples or {}
        cameras = sorted(set(self.camera_confidence) | set(other.camera_confidence))
        return Reference(
            window_id=other.window_id,
            mix={
                c: (self.mix.get(c, 0.0) * n + other.mix.get(c, 0.0) * m) / (n + m)
                for c in sorted(set(self.mix) | set(other.mix))
            },
            mean_confidence=mean(self.mean_confidence, other.mean_confidence, n, m),
            camera_confidence={
                cam: v
                for cam in cameras
                if (
                    v := mean(
                        self.camera_confidence.get(cam),
                        other.camera_confidence.get(cam),
                        cams_a.get(cam, 0),
                        cams_b.get(cam, 0),
                    )
                )
                is not None
            },
            camera_samples={cam: cams_a.get(cam, 0) + cams_b.get(cam, 0) for cam in cameras},
            samples=n + m,
        )


@dataclass
class Closed:
    """A window that just closed: its metrics and the accumulator behind them."""

    metrics: WindowMetrics
    accumulator: WindowAccumulator


class WindowBook(BaseModel):
    """The windows of one model version on one stream: the open one, how many closed, and
    the reference (its first closed windows, ``Reference``)."""

    model_name: str
    model_version: str
    stream: Stream
    closed: int = 0
    open: WindowAccumulator = Field(default_factory=WindowAccumulator)
    reference: Reference | None = None
    block: EstimateBlock = Field(default_factory=EstimateBlock)
    """The estimate block being filled (live stream only)."""
    bias: LabelledBias = Field(default_factory=LabelledBias)
    """Each camera's correction of the chances, from this version's labelled predictions."""
    window_bias: LabelledBias | None = None
    """The corrections as they were when the window before closed (or when the first one got
    its first prediction): the open window counts these, so its estimate never leans on the
    labels it is judged by."""

    @property
    def shadow(self) -> bool:
        return self.stream == "shadow"

    def add_prediction(self, obs: Observation, now: datetime, policy: WindowPolicy) -> Chance:
        """Count one prediction; its chance of being right now: the calibrated confidence
        corrected by the labels in so far (the window counts the corrections it opened
        with, ``window_bias``)."""
        if self.window_bias is None:
            self.window_bias = self.bias.model_copy(deep=True)
        self.open.add_prediction(
            obs,
            now,
            policy.uncertain_per_camera,
            self.window_bias.chance(obs.camera_id, obs.chance_correct, policy.estimate),
        )
        return self.bias.chance(obs.camera_id, obs.chance_correct, policy.estimate)

    def add_label(
        self,
        obs: Observation,
        now: datetime,
        policy: WindowPolicy,
        classes: Sequence[str],
        prior: LabelPrior | None = None,
    ) -> Closed | None:
        """Count one labelled prediction; the window it closed, if any."""
        self.open.add_label(obs, now)
        # The corrections are a mean over the frames: asked-for labels would lean them to
        # the frames the model is least sure of.
        if obs.label is not None and not obs.requested:
            self.bias.add(
                obs.camera_id, obs.chance_correct, obs.predicted == obs.label, policy.estimate
            )
        if self.open.labelled >= policy.labelled_per_window:
            return self._close("count", classes, policy, prior)
        return None

    def tick(
        self,
        now: datetime,
        policy: WindowPolicy,
        classes: Sequence[str],
        prior: LabelPrior | None = None,
    ) -> Closed | None:
        """Close the window by time when it is old enough and labelled enough."""
        acc = self.open
        if acc.opened_at is None or acc.labelled < policy.min_labelled_time_window:
            return None
        if (now - acc.opened_at).total_seconds() < policy.max_window_s:
            return None
        return self._close("time", classes, policy, prior)

    def _close(
        self,
        kind: Literal["count", "time"],
        classes: Sequence[str],
        policy: WindowPolicy,
        prior: LabelPrior | None,
    ) -> Closed:
        self.closed += 1
        acc = self.open
        metrics = acc.metrics(
            classes,
            model_name=self.model_name,
            model_version=self.model_version,
            window_id=f"{self.model_version}:{self.stream}:{self.closed}",
            kind=kind,
            shadow=self.shadow,
            reference=self.reference,
            estimate_policy=policy.estimate,
            prior=prior,
        )
        if self.reference is None or not self.reference.complete(policy):
            window = Reference.of(acc, metrics.window_id, classes)
            self.reference = window if self.reference is None else self.reference.grown(window)
        self.open = WindowAccumulator()
        # Every label counted so far belongs to a closed window: the next counts them all.
        self.window_bias = self.bias.model_copy(deep=True)
        return Closed(metrics, acc)
