"""Offline classification metrics for the evaluation gate, on plain numpy arrays.

``classification_report`` turns the labels of a holdout and a model's predicted
probabilities into a ``Report``: accuracy, per-class precision/recall/F1, macro-F1, accuracy
per slice (camera, condition, ...), expected calibration error, the confusion matrix and the
mean confidence. ``calibrate`` fits a version's temperature (``shared.calibration``) on one
holdout and says what it did to the likelihood and the ECE. ``latency_per_batch`` times a
model call on one batch.

Conventions, chosen so that a report never contains NaN and always has the same keys:

- the predicted class is the argmax of a row (ties go to the lowest class index);
- precision of a class that is never predicted is 0.0, recall of a class with no support is
  0.0, and F1 is 0.0 when precision + recall is 0;
- macro-F1 averages F1 over the classes with support > 0 only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from shared.calibration import Calibration, calibrated_probabilities, fit_temperature
from shared.events import ClassMetrics

__all__ = [
    "UNKNOWN_SLICE",
    "LatencyStats",
    "Report",
    "SliceMetrics",
    "calibrate",
    "classification_report",
    "expected_calibration_error",
    "latency_per_batch",
]

UNKNOWN_SLICE = "unknown"
"""The slice value reported for a missing (None or empty) attribute."""

# A probability a hair outside [0, 1] is float rounding in the model's softmax, not a bug
# worth refusing a whole holdout for.
_PROBABILITY_SLACK = 1e-6


class SliceMetrics(BaseModel):
    """Size and accuracy of one slice of a holdout (e.g. one camera)."""

    model_config = ConfigDict(frozen=True)

    n: int
    accuracy: float


class Report(BaseModel):
    """Everything ``classification_report`` measures on one holdout."""

    model_config = ConfigDict(frozen=True)

    n: int
    """Number of examples scored (always > 0)."""
    accuracy: float
    macro_f1: float
    """Mean F1 over the classes with support > 0 (0.0 if there are none)."""
    per_class: dict[str, ClassMetrics]
    """Every configured class, in the configured order, even with support 0."""
    per_slice: dict[str, SliceMetrics]
    """Keyed ``"<dimension>=<value>"``, e.g. ``"camera=cam-01"``; a missing value is
    ``"unknown"``."""
    ece: float
    """Expected calibration error over equal-width confidence bins."""
    confusion: list[list[int]]
    """``confusion[true][predicted]``; indices follow the order of ``per_class``."""
    mean_confidence: float
    """Mean of the highest probability of each row."""


class LatencyStats(BaseModel):
    """Wall-clock time of one model call on one batch, over several repeats."""

    model_config = ConfigDict(frozen=True)

    median_ms: float
    p95_ms: float
    batch_size: int
    per_item_ms: float
    """``median_ms / batch_size``."""


def classification_report(
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    slices: Mapping[str, Sequence[str | None]] | None = None,
    n_bins: int = 15,
) -> Report:
    """Score predicted ``probabilities`` against true ``labels``.

    Args:
        labels: integer class indices into ``classes``, shape ``(N,)``.
        probabilities: one row per example, one column per class, shape ``(N, K)`` with
            ``K == len(classes)``; values in [0, 1] (rows are used as given, not
            renormalised).
        classes: the configured class names, in column order; names must be unique.
        slices: optional slice dimensions (e.g. ``{"camera": [...], "condition": [...]}``),
            each a sequence of ``N`` values; None or ``""`` counts as ``"unknown"``.
        n_bins: number of equal-width confidence bins for the ECE.

    Returns:
        A ``Report``. ``macro_f1`` is the mean F1 over classes with support > 0 only, so a
        class absent from the holdout neither drags the mean down nor props it up (0.0 if no
        class has support, which cannot happen with ``N > 0`` and valid labels).

    Raises:
        ValueError: ``N == 0`` (callers skip empty holdouts), a shape mismatch, ``K !=
            len(classes)``, duplicate class names, non-integer or out-of-range labels,
            probabilities that are not finite or outside [0, 1], a slice of the wrong
            length, or ``n_bins < 1``.
    """
    y, p = _validated(labels, probabilities, classes, n_bins)
    n, k = p.shape

    predicted = np.argmax(p, axis=1)
    confidence = np.clip(p[np.arange(n), predicted], 0.0, 1.0)
    correct = predicted == y

    # One bincount over the flattened (true, predicted) pair fills the whole matrix.
    confusion = np.bincount(y * k + predicted, minlength=k * k).reshape(k, k)
    true_pos = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)

    per_class: dict[str, ClassMetrics] = {}
    f1_with_support: list[float] = []
    for i, name in enumerate(classes):
        precision = _ratio(int(true_pos[i]), int(predicted_count[i]))
        recall = _ratio(int(true_pos[i]), int(support[i]))
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        per_class[name] = ClassMetrics(
            precision=precision, recall=recall, f1=f1, support=int(support[i])
        )
        if support[i] > 0:
            f1_with_support.append(f1)

    return Report(
        n=n,
        accuracy=float(correct.mean()),
        macro_f1=float(np.mean(f1_with_support)) if f1_with_support else 0.0,
        per_class=per_class,
        per_slice=_per_slice(slices or {}, correct),
        ece=expected_calibration_error(confidence, correct, n_bins),
        confusion=confusion.tolist(),
        mean_confidence=float(confidence.mean()),
    )


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15
) -> float:
    """Expected calibration error of predictions with the given ``confidence`` (shape
    ``(N,)``, in [0, 1]) and whether each was ``correct`` (bool, shape ``(N,)``).

    [0, 1] is cut into ``n_bins`` equal-width bins ``(i/n_bins, (i+1)/n_bins]`` (the first
    also holds 0); the result is ``sum over bins of (bin count / N) * |accuracy in bin - mean
    confidence in bin|``. Empty bins contribute nothing. Returns 0.0 when ``N == 0``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape or conf.ndim != 1:
        raise ValueError(
            f"confidence and correct must be 1-D of the same length, got {conf.shape} "
            f"and {hit.shape}"
        )
    n = conf.shape[0]
    if n == 0:
        return 0.0
    # Edges as i / n_bins (correctly rounded) rather than cumulative steps, so that a
    # confidence written as a round decimal such as 0.7 lands in the bin it names.
    inner_edges = np.arange(1, n_bins) / n_bins
    bins = np.digitize(conf, inner_edges, right=True)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(bins, weights=hit, minlength=n_bins)
    # |hits - confidences| summed per bin equals count * |accuracy - mean confidence|.
    return float(np.abs(hit_sum - conf_sum).sum() / n)


def calibrate(
    probabilities: np.ndarray, labels: np.ndarray, fitted_on: str, n_bins: int = 15
) -> Calibration:
    """Fit a model's temperature on one holdout (named ``fitted_on``) from its predicted
    ``probabilities`` (``(N, K)``) and the true ``labels`` (class indices, ``(N,)``), and
    measure the mean negative log-likelihood and the ECE before and after. The ECE uses
    ``n_bins`` bins and the rows as given, as ``classification_report`` does, so
    ``ece_before`` is that report's ``ece``.

    Raises:
        ValueError: ``N == 0`` (callers skip empty holdouts), or what ``fit_temperature``
            refuses (a shape mismatch, labels out of range).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("cannot calibrate on an empty holdout (N == 0)")
    temperature = fit_temperature(p, y)
    after = calibrated_probabilities(p, temperature)
    return Calibration(
        temperature=temperature,
        fitted_on=fitted_on,
        n=len(y),
        nll_before=_mean_nll(p, y),
        nll_after=_mean_nll(after, y),
        ece_before=_ece_of(p, y, n_bins),
        ece_after=_ece_of(after, y, n_bins),
    )


def latency_per_batch(
    fn: Callable[[np.ndarray], object],
    batch: np.ndarray,
    repeats: int = 5,
    warmup: int = 1,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> LatencyStats:
    """Time ``fn(batch)``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    ``p95_ms`` is numpy's linearly interpolated 95th percentile of the repeats, so with few
    repeats it lies close to the slowest. ``clock`` returns seconds (tests pass a fake one).

    Raises:
        ValueError: ``repeats < 1``, ``warmup < 0`` or an empty or 0-d ``batch``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must not be negative, got {warmup}")
    if np.ndim(batch) == 0 or len(batch) == 0:
        raise ValueError("batch must hold at least one item along its first axis")
    batch_size = len(batch)

    # Warm-up calls absorb one-off costs (lazy initialisation, caches) that serving pays once.
    for _ in range(warmup):
        fn(batch)
    samples_ms: list[float] = []
    for _ in range(repeats):
        start = clock()
        fn(batch)
        samples_ms.append((clock() - start) * 1000.0)

    median_ms = float(np.median(samples_ms))
    return LatencyStats(
        median_ms=median_ms,
        p95_ms=float(np.percentile(samples_ms, 95)),
        batch_size=batch_size,
        per_item_ms=median_ms / batch_size,
    )


def _validated(
    labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be unique, got {list(classes)}")
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {y.shape}")
    if p.ndim != 2:
        raise ValueError(f"probabilities must be 2-D (N, K), got shape {p.shape}")
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"labels has {y.shape[0]} rows but probabilities has {p.shape[0]}")
    if p.shape[1] != len(classes):
        raise ValueError(
            f"probabilities has {p.shape[1]} columns but there are {len(classes)} classes"
        )
    if y.shape[0] == 0:
        raise ValueError("cannot score an empty holdout (N == 0)")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    bad = (y < 0) | (y >= len(classes))
    if bad.any():
        raise ValueError(
            f"label {int(y[bad][0])} is out of range for {len(classes)} classes "
            f"({int(bad.sum())} labels out of range)"
        )
    if not np.isfinite(p).all():
        raise ValueError("probabilities contain NaN or infinite values")
    if p.min() < -_PROBABILITY_SLACK or p.max() > 1.0 + _PROBABILITY_SLACK:
        raise ValueError(
            f"probabilities must lie in [0, 1], got values in [{p.min():.6g}, {p.max():.6g}]"
        )
    return y.astype(np.int64, copy=False), p


def _mean_nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def _ece_of(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    predicted = np.argmax(p, axis=1)
    confidence = np.clip(p[np.arange(len(y)), predicted], 0.0, 1.0)
    return expected_calibration_error(confidence, predicted == y, n_bins)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def _per_slice(
    slices: Mapping[str, Sequence[str | None]], correct: np.ndarray
) -> dict[str, SliceMetrics]:
    n = correct.shape[0]
    out: dict[str, SliceMetrics] = {}
    for dimension, values in slices.items():
        if len(values) != n:
            raise ValueError(f"slice {dimension!r} has {len(values)} values for {n} examples")
        keys = np.array(
            [UNKNOWN_SLICE if v is None or v == "" else str(v) for v in values], dtype=object
        )
        # Sorted values make the report's key order independent of arrival order.
        for value in sorted(set(keys.tolist())):
            mask = keys == value
            out[f"{dimension}={value}"] = SliceMetrics(
                n=int(mask.sum()), accuracy=float(correct[mask].mean())
            )
    return out
