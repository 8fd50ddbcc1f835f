"""Estimated accuracy without labels: what a window's accuracy probably is before its labels
arrive.

Two label-free facts about a set of predictions, and the estimate is the lower of them:

1. **Confidence** (confidence-based performance estimation). With a calibrated model
   (``shared.calibration``: the version's temperature, fitted at evaluation), the calibrated
   top probability of a prediction is the chance it is right; the expected accuracy of ``n``
   predictions is the mean of those chances, and the number right is a sum of independent
   Bernoulli draws, so its standard error is ``sqrt(sum p (1 - p)) / n``. This holds while
   the frames look like the ones the temperature was fitted on.
2. **Class mix.** A drifted input (night, fog) often leaves the model confidently wrong:
   calibration fitted by day says 0.99 and the truth is 0.2. What gives it away is the
   predicted class mix: at most ``min(q_c, pi_c)`` of the frames can be right about class
   ``c``, where ``q`` is the predicted mix and ``pi`` the true class prior, so accuracy is at
   most ``sum_c min(q_c, pi_c)``. The prior comes from recent labels (``LabelPrior``),
   assuming the classes' frequencies did not change with the drift (covariate shift, not
   label shift). The bound replaces the confidence estimate only when the predicted mix
   differs from the prior by more than chance (a two-sample chi-square test at
   ``mix_alpha``): by day the predicted mix matches the prior and the estimate is the
   calibrated confidence.

The interval is the estimate plus or minus ``z`` standard errors, clipped to [0, 1]: it
states the sampling noise of the frames counted, not the error of the assumptions above,
which ``WindowMetrics.estimate_error`` measures once labels arrive.

Pure: no Kafka, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.events import AccuracyEstimate

__all__ = [
    "EstimateAccumulator",
    "EstimateBlock",
    "EstimatePolicy",
    "FullBlock",
    "LabelPrior",
    "chi_square_critical",
    "normal_quantile",
]


class EstimatePolicy(BaseModel):
    """How estimates are made."""

    model_config = ConfigDict(frozen=True)

    z: float = Field(default=1.96, gt=0)
    """Half-width of the interval in standard errors (1.96: 95 %)."""

    mix_alpha: float = Field(default=0.01, gt=0, lt=0.5)
    """Significance of the class-mix test: below it, the mix bound caps the estimate."""

    min_frames: int = Field(default=50, ge=1)
    """Predictions an estimate needs; fewer give none."""

    min_camera_frames: int = Field(default=20, ge=1)
    """Predictions a camera's own estimate needs."""

    prior_half_life: int = Field(default=1000, ge=10)
    """Labels after which an old label weighs half in the class prior."""


def normal_quantile(p: float) -> float:
    """The standard normal quantile (Acklam's rational approximation, error < 1.2e-9 after
    one Newton step)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    a = (-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269,
         -30.66479806614716, 2.506628277459239)  # fmt: skip
    b = (-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972,
         -13.28068155288572)  # fmt: skip
    c = (-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734,
         4.374664141464968, 2.938163982698783)  # fmt: skip
    d = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
    low = 0.02425
    if p < low:
        q = math.sqrt(-2 * math.log(p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
    elif p > 1 - low:
        return -normal_quantile(1 - p)
    else:
        q = p - 0.5
        r = q * q
        x = (
            (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
            * q
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
        )
    e = 0.5 * math.erfc(-x / math.sqrt(2)) - p
    return x - e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)


def chi_square_critical(df: int, alpha: float) -> float:
    """The upper ``alpha`` quantile of chi-square with ``df`` degrees of freedom
    (Wilson-Hilferty; within a few per cent for df >= 1 at the usual alphas)."""
    if df < 1:
        raise ValueError(f"df must be at least 1, got {df}")
    z = normal_quantile(1 - alpha)
    k = 2.0 / (9.0 * df)
    return float(df * (1 - k + z * math.sqrt(k)) ** 3)


class LabelPrior(BaseModel):
    """The true classes' frequencies in recent labels, old ones decaying (half-life in
    labels): the prior the class-mix bound compares predictions with."""

    counts: dict[str, float] = Field(default_factory=dict)

    def add(self, label: str, half_life: int) -> None:
        keep = 0.5 ** (1.0 / half_life)
        for c in self.counts:
            self.counts[c] *= keep
        self.counts[label] = self.counts.get(label, 0.0) + 1.0

    @property
    def weight(self) -> float:
        """The effective number of labels behind the prior."""
        return sum(self.counts.values())


class EstimateAccumulator(BaseModel):
    """Sufficient statistics of an estimate over some predictions."""

    n: int = 0
    p_sum: float = 0.0
    """Sum of the calibrated top probabilities."""
    var_sum: float = 0.0
    """Sum of ``p (1 - p)``."""
    mix: dict[str, int] = Field(default_factory=dict)
    """Predicted class -> predictions."""

    def add(self, predicted: str, calibrated: float) -> None:
        p = min(max(calibrated, 0.0), 1.0)
        self.n += 1
        self.p_sum += p
        self.var_sum += p * (1.0 - p)
        self.mix[predicted] = self.mix.get(predicted, 0) + 1

    def mix_differs(self, prior: Mapping[str, float], classes: Sequence[str], alpha: float) -> bool:
        """Whether the predicted mix differs from the prior's by more than chance: a
        two-sample chi-square test of the predicted counts against the prior's (weighted)
        label counts."""
        m = sum(prior.get(c, 0.0) for c in classes)
        n = self.n
        if m <= 0 or n <= 0:
            return False
        stat, cells = 0.0, 0
        for c in classes:
            q, pi = self.mix.get(c, 0) / n, prior.get(c, 0.0) / m
            pooled = (self.mix.get(c, 0) + prior.get(c, 0.0)) / (n + m)
            if pooled <= 0:
                continue
            cells += 1
            stat += (q - pi) ** 2 / (pooled * (1 - pooled) * (1 / n + 1 / m) or 1e-12)
        if cells < 2:
            return False
        return stat > chi_square_critical(cells - 1, alpha)

    def estimate(
        self,
        classes: Sequence[str],
        prior: LabelPrior | None,
        policy: EstimatePolicy,
        *,
        camera: bool = False,
    ) -> AccuracyEstimate | None:
        """The estimated accuracy of the predictions counted (see the module docstring), or
        None with fewer than ``policy.min_frames`` (``min_camera_frames`` for one camera's)."""
        n = self.n
        if n < (policy.min_camera_frames if camera else policy.min_frames):
            return None
        value = self.p_sum / n
        se = math.sqrt(self.var_sum) / n
        method: Literal["confidence", "class-mix"] = "confidence"
        if (
            prior is not None
            and prior.weight > 0
            and self.mix_differs(prior.counts, classes, policy.mix_alpha)
        ):
            m = prior.weight
            bound = sum(min(self.mix.get(c, 0) / n, prior.counts.get(c, 0.0) / m) for c in classes)
            if bound < value:
                value, method = bound, "class-mix"
                se = math.sqrt(max(bound * (1 - bound), 1.0 / n) / n)
        half = policy.z * se
        return AccuracyEstimate(
            value=value,
            low=max(0.0, value - half),
            high=min(1.0, value + half),
            frames=n,
            method=method,
        )


@dataclass(frozen=True)
class FullBlock:
    """A block of predictions that just filled up."""

    block_id: str
    started_at: datetime
    """Serving time of its earliest prediction."""
    total: EstimateAccumulator
    cameras: dict[str, EstimateAccumulator]


class EstimateBlock(BaseModel):
    """Consecutive blocks of a fixed number of one version's predictions (tumbling by count),
    each estimated as it fills: the estimated-accuracy trigger's evidence, ten seconds of
    frames rather than a labelled window's half minute."""

    closed: int = 0
    total: EstimateAccumulator = Field(default_factory=EstimateAccumulator)
    cameras: dict[str, EstimateAccumulator] = Field(default_factory=dict)
    started_at: datetime | None = None

    def add(
        self, camera_id: str, predicted: str, chance: float, served_at: datetime, size: int
    ) -> FullBlock | None:
        """Count one prediction; the block it filled, if any."""
        if self.started_at is None or served_at < self.started_at:
            self.started_at = served_at
        self.total.add(predicted, chance)
        self.cameras.setdefault(camera_id, EstimateAccumulator()).add(predicted, chance)
        if self.total.n < size:
            return None
        self.closed += 1
        full = FullBlock(f"est-{self.closed}", self.started_at, self.total, self.cameras)
        self.total, self.cameras, self.started_at = EstimateAccumulator(), {}, None
        return full
