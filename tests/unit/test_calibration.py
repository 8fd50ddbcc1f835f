"""Temperature scaling (``shared.calibration``): the fit, the calibrated probabilities and
the reader of a stored temperature."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from services.evaluation.metrics import expected_calibration_error
from shared.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    Calibration,
    calibrated_confidence,
    calibrated_probabilities,
    fit_temperature,
    temperature_of,
)

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def softmax(z: Floats) -> Floats:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: Floats = e / e.sum(axis=1, keepdims=True)
    return out


def sampled(
    temperature: float, n: int = 3000, k: int = 4, seed: int = 0, scale: float = 3.0
) -> tuple[Floats, Ints]:
    """A model's probabilities ``softmax(z)`` and labels drawn from ``softmax(z / T)``: the
    temperature that makes this model's confidences true is ``T`` exactly."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, (n, k))
    truth = softmax(z / temperature)
    u = rng.random(n)
    labels = np.minimum((truth.cumsum(axis=1) < u[:, None]).sum(axis=1), k - 1)
    return softmax(z), labels.astype(np.int64)


def top_ece(probabilities: Floats, labels: Ints) -> float:
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(labels)), predicted]
    return expected_calibration_error(confidence, predicted == labels)


# --- fitting -------------------------------------------------------------------------------


@pytest.mark.parametrize("true_temperature", [0.5, 2.0, 3.0])
def test_the_fit_recovers_the_temperature_the_labels_were_drawn_with(
    true_temperature: float,
) -> None:
    probabilities, labels = sampled(true_temperature)
    fitted = fit_temperature(probabilities, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.10)


def test_an_over_confident_model_gets_a_temperature_above_one() -> None:
    # Says 95 % for its top class and is right 60 % of the time.
    rng = np.random.default_rng(1)
    n, k = 2000, 4
    predicted = rng.integers(k, size=n)
    probabilities = np.full((n, k), 0.05 / (k - 1))
    probabilities[np.arange(n), predicted] = 0.95
    right = rng.random(n) < 0.6
    wrong = (predicted + rng.integers(1, k, size=n)) % k
    labels = np.where(right, predicted, wrong)
    assert fit_temperature(probabilities, labels) > 1.5


def test_an_under_confident_model_gets_a_temperature_below_one() -> None:
    probabilities, labels = sampled(0.5, seed=2)
    assert fit_temperature(probabilities, labels) < 1.0


def test_the_fit_stays_within_its_bounds() -> None:
    # Labels that always agree with the top class push T towards 0, labels that never do
    # push it up: the search stops at its bounds instead of running off.
    probabilities, _ = sampled(1.0, n=500, seed=3)
    top = probabilities.argmax(axis=1)
    assert fit_temperature(probabilities, top) == pytest.approx(MIN_TEMPERATURE, rel=0.01)
    never = (top + 1) % probabilities.shape[1]
    assert fit_temperature(probabilities, never) == pytest.approx(MAX_TEMPERATURE, rel=0.01)


def test_the_fit_is_deterministic() -> None:
    probabilities, labels = sampled(2.0, n=500, seed=4)
    assert fit_temperature(probabilities, labels) == fit_temperature(probabilities, labels)


def test_no_frames_give_temperature_one() -> None:
    assert fit_temperature(np.zeros((0, 4)), np.zeros(0, dtype=np.int64)) == 1.0
    assert fit_temperature(np.zeros((0, 4)), []) == 1.0


# --- calibrated probabilities --------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.05, 0.3, 1.0, 2.5, 20.0])
def test_the_predicted_class_never_changes(temperature: float) -> None:
    probabilities, _ = sampled(1.0, n=1000, seed=5)
    after = calibrated_probabilities(probabilities, temperature)
    np.testing.assert_array_equal(after.argmax(axis=1), probabilities.argmax(axis=1))
    np.testing.assert_allclose(after.sum(axis=1), 1.0, rtol=1e-12)


def test_a_temperature_above_one_softens_and_below_one_sharpens() -> None:
    probabilities, _ = sampled(1.0, n=200, seed=6)
    top = probabilities.max(axis=1)
    assert (calibrated_probabilities(probabilities, 2.0).max(axis=1) < top).all()
    assert (calibrated_probabilities(probabilities, 0.5).max(axis=1) > top).all()


@pytest.mark.parametrize("temperature", [0.2, 1.0, 1.7, 6.0])
def test_calibrated_confidence_is_the_row_maximum_of_the_calibrated_probabilities(
    temperature: float,
) -> None:
    probabilities, _ = sampled(1.0, n=50, seed=7)
    expected = calibrated_probabilities(probabilities, temperature).max(axis=1)
    got = [calibrated_confidence(row.tolist(), temperature) for row in probabilities]
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_temperature_one_is_the_identity() -> None:
    probabilities, _ = sampled(1.0, n=100, seed=8)
    np.testing.assert_allclose(calibrated_probabilities(probabilities, 1.0), probabilities)
    for row in probabilities[:10]:
        assert calibrated_confidence(row.tolist(), 1.0) == pytest.approx(row.max(), rel=1e-9)


def test_calibration_lowers_the_ece_of_an_over_confident_model() -> None:
    probabilities, labels = sampled(2.5, seed=9)
    temperature = fit_temperature(probabilities, labels)
    before = top_ece(probabilities, labels)
    after = top_ece(calibrated_probabilities(probabilities, temperature), labels)
    assert before > 0.05  # over-confident to begin with, or the comparison shows nothing
    assert after < before / 2


# --- refused input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "probabilities",
    [np.full(4, 0.25), np.zeros((3, 0)), np.full((2, 2, 2), 0.5)],
    ids=["1-d", "no-columns", "3-d"],
)
def test_probabilities_of_the_wrong_shape_are_refused(probabilities: Floats) -> None:
    with pytest.raises(ValueError, match="shape"):
        calibrated_probabilities(probabilities, 1.0)
    with pytest.raises(ValueError, match="shape"):
        fit_temperature(probabilities, [0])


def test_labels_that_do_not_match_the_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="3 rows of probabilities but 2 labels"):
        fit_temperature(np.full((3, 2), 0.5), [0, 1])


@pytest.mark.parametrize("bad", [-1, 2])
def test_labels_out_of_range_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="class indices"):
        fit_temperature(np.full((3, 2), 0.5), [0, 1, bad])


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan])
def test_a_temperature_that_is_not_positive_is_refused(temperature: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        calibrated_probabilities(np.full((1, 2), 0.5), temperature)
    with pytest.raises(ValueError, match="positive"):
        calibrated_confidence([0.5, 0.5], temperature)


def test_no_probabilities_have_no_confidence() -> None:
    with pytest.raises(ValueError, match="no probabilities"):
        calibrated_confidence([], 1.0)


# --- the stored temperature ----------------------------------------------------------------


def stored(temperature: float) -> dict[str, Any]:
    cal = Calibration(
        temperature=temperature,
        fitted_on="reference",
        n=10,
        nll_before=1.0,
        nll_after=0.9,
        ece_before=0.2,
        ece_after=0.05,
    )
    return {"classes": ["a", "b"], "calibration": cal.model_dump()}


def test_the_stored_temperature_is_read_back() -> None:
    assert temperature_of(stored(1.75)) == 1.75
    assert temperature_of({"calibration": {"temperature": 2}}) == 2.0


@pytest.mark.parametrize(
    "metrics",
    [
        None,
        {},
        {"calibration": None},
        {"calibration": "1.5"},
        {"calibration": {}},
        {"calibration": {"temperature": "1.5"}},
        {"calibration": {"temperature": True}},
        {"calibration": {"temperature": 0.0}},
        {"calibration": {"temperature": -2.0}},
        {"calibration": {"temperature": math.nan}},
        {"calibration": {"temperature": math.inf}},
    ],
)
def test_no_temperature_is_read_from_missing_or_invalid_metrics(
    metrics: dict[str, Any] | None,
) -> None:
    assert temperature_of(metrics) is None


def test_a_calibration_refuses_a_temperature_that_is_not_positive() -> None:
    with pytest.raises(ValueError):
        stored(0.0)
