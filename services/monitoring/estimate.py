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

3. **Recalibration by the labels already in** (``LabelledBias``). A temperature fitted on
   the reference holdout describes the frames of that holdout; at night a day model is more
   sure of itself than it is right, and no label-free fact says by how much. Labels arrive
   late but they do arrive: each camera keeps how far the chances it counted were from the
   outcomes of its recent labelled predictions (an exponentially weighted mean of
   ``correct - chance``, shrunk towards the version's while few labels stand behind it;
   labels that answer a request are left out, being of the frames the model is least sure
   of, as they are from the class prior of point 2),
   and a prediction counts its chance plus its camera's correction. A window counts the
   corrections as they were when the window before it closed, so its estimate never uses
   the labels the window itself counts (``WindowBook.window_bias``); the trigger's estimate
   blocks take the latest. The estimate thus follows a drift one window late, per camera.

The interval is the estimate plus or minus ``z`` standard errors, clipped to [0, 1]: the
sampling noise of the frames counted, plus the uncertainty of the corrections (counted as
if every camera's correction erred the same way, so the interval errs wide). It does not
state the error of the assumptions above, which ``WindowMetrics.estimate_error`` measures
once labels arrive.

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
    "Chance",
    "EstimateAccumulator",
    "EstimateBlock",
    "EstimatePolicy",
    "FullBlock",
    "LabelPrior",
    "LabelledBias",
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

    recalibrate: bool = True
    """Correct each camera's chances by its recent labelled predictions (``LabelledBias``)."""

    bias_half_life: int = Field(default=40, ge=1)
    """Labels of the version after which an old one weighs half in the corrections."""

    bias_prior_labels: float = Field(default=10.0, ge=0.0)
    """Pseudo-labels of no correction behind the version's correction."""

    bias_camera_prior_labels: float = Field(default=3.0, ge=0.0)
    """Pseudo-labels of the version's correction behind a camera's."""

    error_min_labels: int = Field(default=30, ge=1)
    """Labels nobody asked for that a window needs for its estimate's error to be measured
    on them alone (``WindowMetrics.estimate_error``); with fewer, on all its labels."""


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
    bias_sd_sum: float = 0.0
    """Sum of the standard errors of the corrections the chances carry."""

    def add(self, predicted: str, calibrated: float, bias_sd: float = 0.0) -> None:
        p = min(max(calibrated, 0.0), 1.0)
        self.n += 1
        self.p_sum += p
        self.var_sum += p * (1.0 - p)
        self.bias_sd_sum += bias_sd
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
        # Corrections are shared by a camera's predictions: their errors add up instead of
        # averaging out (taken as shared by all, the bound on the sum).
        se = math.sqrt(self.var_sum / n**2 + (self.bias_sd_sum / n) ** 2)
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


class Chance(BaseModel):
    """What a prediction counts in an estimate: the chance it is right, and the standard
    error of the correction in it."""

    model_config = ConfigDict(frozen=True)

    p: float
    sd: float = 0.0


class _Residuals(BaseModel):
    """Exponentially weighted sums of ``correct - chance`` over labelled predictions."""

    s: float = 0.0
    s2: float = 0.0
    w: float = 0.0
    n: int = 0
    """Labels counted, undecayed."""
    tick: int = 0
    """The version's label count when last decayed."""

    def decayed(self, tick: int, keep: float) -> _Residuals:
        f = keep ** (tick - self.tick)
        return _Residuals(s=self.s * f, s2=self.s2 * f, w=self.w * f, n=self.n, tick=tick)

    def plus(self, r: float) -> _Residuals:
        return _Residuals(
            s=self.s + r, s2=self.s2 + r * r, w=self.w + 1.0, n=self.n + 1, tick=self.tick
        )


class LabelledBias(BaseModel):
    """How far counted chances were from the outcomes of recent labelled predictions: point
    3 of the module docstring. One per version and stream.

    The version's own correction is the weighted mean residual, shrunk towards none by
    ``bias_prior_labels`` pseudo-labels while few labels were seen. A camera's correction is
    its own weighted mean residual shrunk towards the version's by
    ``bias_camera_prior_labels``: a drift on every camera is followed at the pace of all
    the labels, a drift on one camera (fog reaching it) by that camera's labels. Old labels
    weigh half after ``bias_half_life`` labels of the version, in both."""

    labels: int = 0
    total: _Residuals = Field(default_factory=_Residuals)
    cameras: dict[str, _Residuals] = Field(default_factory=dict)

    def add(self, camera_id: str, chance: float, correct: bool, policy: EstimatePolicy) -> None:
        """Count one labelled prediction: ``chance`` is its calibrated confidence (without
        any correction), ``correct`` whether the label agreed."""
        keep = 0.5 ** (1.0 / policy.bias_half_life)
        self.labels += 1
        r = float(correct) - min(max(chance, 0.0), 1.0)
        self.total = self.total.decayed(self.labels, keep).plus(r)
        own = self.cameras.get(camera_id, _Residuals(tick=self.labels))
        self.cameras[camera_id] = own.decayed(self.labels, keep).plus(r)

    def correction(self, camera_id: str, policy: EstimatePolicy) -> Chance:
        """The camera's correction now (``p``) and its standard error (``sd``)."""
        if not policy.recalibrate or self.total.n == 0:
            return Chance(p=0.0)
        keep = 0.5 ** (1.0 / policy.bias_half_life)
        k = policy.bias_prior_labels
        g = self.total
        shrink = g.n / (g.n + k)
        version = (g.s / g.w) * shrink if g.w > 0 else 0.0
        spread = g.s2 / g.w if g.w > 1.0 else 0.25
        version_sd = math.sqrt(spread / (g.w + k))
        own = self.cameras.get(camera_id)
        if own is None or own.w <= 0:
            return Chance(p=version, sd=version_sd)
        c = own.decayed(self.labels, keep)
        k_own = policy.bias_camera_prior_labels
        p = version + (c.s / c.w - version) * c.w / (c.w + k_own)
        own_sd = math.sqrt(spread / (c.w + k_own))
        return Chance(p=p, sd=min(max(own_sd, version_sd), 0.5))

    def chance(self, camera_id: str, calibrated: float, policy: EstimatePolicy) -> Chance:
        """A prediction's corrected chance of being right, clipped to [0, 1]."""
        c = self.correction(camera_id, policy)
        return Chance(p=min(max(calibrated + c.p, 0.0), 1.0), sd=c.sd)


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
        self, camera_id: str, predicted: str, chance: Chance, served_at: datetime, size: int
    ) -> FullBlock | None:
        """Count one prediction; the block it filled, if any."""
        if self.started_at is None or served_at < self.started_at:
            self.started_at = served_at
        self.total.add(predicted, chance.p, chance.sd)
        self.cameras.setdefault(camera_id, EstimateAccumulator()).add(
            predicted, chance.p, chance.sd
        )
        if self.total.n < size:
            return None
        self.closed += 1
        full = FullBlock(f"est-{self.closed}", self.started_at, self.total, self.cameras)
        self.total, self.cameras, self.started_at = EstimateAccumulator(), {}, None
        return full
