"""Temperature scaling: a model version's confidences made to mean what they say.

A classifier's top probability is often not the chance that it is right. Temperature scaling
divides the logits by one number ``T`` fitted on labelled frames the model did not train on
(the evaluation gate's reference holdout), by minimising the negative log-likelihood; the
predicted class never changes, only how sure the model says it is. ``T > 1`` softens an
over-confident model.

Only probabilities travel on the bus (``Prediction.probabilities``), not logits; that is
enough, because ``softmax(log p / T)`` equals ``softmax(z / T)`` for logits ``z`` with
``p = softmax(z)`` (the log-sum-exp constant cancels).

The monitor uses the calibrated top probability of each prediction as the chance it is correct
(confidence-based performance estimation; ``services.monitoring.estimate``), reading the
version's temperature from its evaluation with ``temperature_of``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "Calibration",
    "calibrated_confidence",
    "calibrated_probabilities",
    "fit_temperature",
    "temperature_of",
]

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
_EPS = 1e-12


class Calibration(BaseModel):
    """A version's fitted temperature and what it did on the frames it was fitted on; kept
    in its evaluation (``ModelEvaluated.metrics["calibration"]``)."""

    model_config = ConfigDict(frozen=True)

    temperature: float = Field(gt=0)
    fitted_on: str
    """The holdout the temperature was fitted on (``reference`` or ``fresh``)."""
    n: int = Field(ge=0)
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float


def _log_probs(probabilities: npt.ArrayLike) -> npt.NDArray[np.float64]:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(f"probabilities must be (N, K) with K > 0, got shape {p.shape}")
    return np.log(np.clip(p, _EPS, 1.0))


def calibrated_probabilities(
    probabilities: npt.ArrayLike, temperature: float
) -> npt.NDArray[np.float64]:
    """``softmax(log p / T)`` row by row, for ``(N, K)`` probabilities."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = _log_probs(probabilities) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def calibrated_confidence(probabilities: Iterable[float], temperature: float) -> float:
    """The calibrated top probability of one prediction's class probabilities. Raises
    ValueError for no probabilities or a temperature that is not positive."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logs = [math.log(min(max(p, _EPS), 1.0)) / temperature for p in probabilities]
    if not logs:
        raise ValueError("no probabilities")
    top = max(logs)
    return 1.0 / sum(math.exp(v - top) for v in logs)


def _nll(log_p: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], t: float) -> float:
    z = log_p / t
    z -= z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float((log_norm - z[np.arange(len(labels)), labels]).mean())


def fit_temperature(
    probabilities: npt.ArrayLike, labels: npt.ArrayLike, *, iterations: int = 60
) -> float:
    """The temperature minimising the mean negative log-likelihood of ``labels`` (class
    indices) under ``softmax(log p / T)``: a golden-section search on ``log T`` over
    [``MIN_TEMPERATURE``, ``MAX_TEMPERATURE``] (the likelihood is unimodal in ``T``). 1.0
    for no frames; deterministic."""
    y = np.asarray(labels, dtype=np.int64)
    log_p = _log_probs(probabilities)
    if len(y) != len(log_p):
        raise ValueError(f"{len(log_p)} rows of probabilities but {len(y)} labels")
    if len(y) == 0:
        return 1.0
    if y.min() < 0 or y.max() >= log_p.shape[1]:
        raise ValueError("labels must be class indices of the probabilities' columns")
    lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _nll(log_p, y, math.exp(c)), _nll(log_p, y, math.exp(d))
    for _ in range(iterations):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _nll(log_p, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _nll(log_p, y, math.exp(d))
    return float(math.exp((a + b) / 2.0))


def temperature_of(metrics: Mapping[str, Any] | None) -> float | None:
    """The temperature stored in an evaluation's metrics (``metrics["calibration"]
    ["temperature"]``, e.g. ``VersionView.evaluation.metrics``); None when there is no
    evaluation, no calibration (an older evaluation, or both holdouts empty), or the stored
    value is not a finite positive number. Never raises."""
    if not isinstance(metrics, Mapping):
        return None
    calibration = metrics.get("calibration")
    if not isinstance(calibration, Mapping):
        return None
    t = calibration.get("temperature")
    # bool is an int to Python, but True is no temperature.
    if isinstance(t, bool) or not isinstance(t, int | float):
        return None
    if not math.isfinite(t) or t <= 0:
        return None
    return float(t)
