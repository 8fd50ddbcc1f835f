"""Classification metrics on tiny hand-computed examples, and the latency helper."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from services.evaluation.metrics import (
    Report,
    calibrate,
    classification_report,
    expected_calibration_error,
    latency_per_batch,
)

CLASSES = ("car", "truck", "bus", "motorcycle")


def probs_for(predicted: Sequence[int], k: int, confidence: float = 0.7) -> np.ndarray:
    """Rows whose argmax is ``predicted`` with the given top probability."""
    rest = (1.0 - confidence) / (k - 1)
    p = np.full((len(predicted), k), rest)
    p[np.arange(len(predicted)), list(predicted)] = confidence
    return p


def binary(confidences: Sequence[float], correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Two-class rows predicting class 0 with each confidence; the label is 0 when correct."""
    c = np.asarray(confidences)
    p = np.stack([c, 1.0 - c], axis=1)
    labels = np.array([0 if ok else 1 for ok in correct])
    return labels, p


# --- per-class metrics --------------------------------------------------------------------

# true:      car car car truck truck bus bus
# predicted: car car truck truck car motorcycle bus
LABELS = np.array([0, 0, 0, 1, 1, 2, 2])
PREDICTED = [0, 0, 1, 1, 0, 3, 2]


def tiny_report() -> Report:
    return classification_report(LABELS, probs_for(PREDICTED, 4), CLASSES)


def test_confusion_matrix_has_true_rows_and_predicted_columns() -> None:
    assert tiny_report().confusion == [
        [2, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 1, 1],
        [0, 0, 0, 0],
    ]


def test_precision_recall_f1_match_hand_computation() -> None:
    r = tiny_report()
    assert r.n == 7
    assert r.accuracy == pytest.approx(4 / 7)
    car, truck, bus = r.per_class["car"], r.per_class["truck"], r.per_class["bus"]
    # car: 2 of 3 predicted cars are cars, 2 of 3 cars found.
    assert (car.precision, car.recall, car.f1, car.support) == pytest.approx(
        (2 / 3, 2 / 3, 2 / 3, 3)
    )
    assert (truck.precision, truck.recall, truck.f1, truck.support) == pytest.approx(
        (1 / 2, 1 / 2, 1 / 2, 2)
    )
    # bus: the one bus predicted is right (P=1), one of two buses found (R=1/2), F1 = 2/3.
    assert (bus.precision, bus.recall, bus.f1, bus.support) == pytest.approx((1.0, 0.5, 2 / 3, 2))


def test_zero_support_class_is_reported_but_left_out_of_macro_f1() -> None:
    r = tiny_report()
    assert list(r.per_class) == list(CLASSES)
    moto = r.per_class["motorcycle"]
    # Predicted once, never true: no true positive, no support.
    assert (moto.precision, moto.recall, moto.f1, moto.support) == (0.0, 0.0, 0.0, 0)
    # Mean over car, truck, bus only; including motorcycle would give 11/24.
    assert r.macro_f1 == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert r.macro_f1 == pytest.approx(11 / 18)


def test_class_never_predicted_has_precision_zero_and_counts_in_macro_f1() -> None:
    r = classification_report(np.array([0, 1]), probs_for([0, 0], 2), ("a", "b"))
    a, b = r.per_class["a"], r.per_class["b"]
    assert (a.precision, a.recall, a.f1) == pytest.approx((0.5, 1.0, 2 / 3))
    assert (b.precision, b.recall, b.f1, b.support) == (0.0, 0.0, 0.0, 1)
    assert r.macro_f1 == pytest.approx(1 / 3)


def test_argmax_tie_goes_to_the_lowest_class_index() -> None:
    r = classification_report(np.array([1]), np.array([[0.5, 0.5]]), ("a", "b"))
    assert r.confusion == [[0, 0], [1, 0]]
    assert r.accuracy == 0.0


# --- calibration --------------------------------------------------------------------------


def test_perfectly_calibrated_predictions_have_zero_ece() -> None:
    # Five predictions at 0.8, four right: accuracy equals confidence in the only bin used.
    labels, p = binary([0.8] * 5, [True, True, True, True, False])
    r = classification_report(labels, p, ("a", "b"))
    assert r.ece == pytest.approx(0.0, abs=1e-12)
    assert r.mean_confidence == pytest.approx(0.8)


def test_over_confident_predictions_have_ece_equal_to_the_gap() -> None:
    # Claims 0.9, right half the time: |0.5 - 0.9| = 0.4.
    labels, p = binary([0.9] * 4, [True, False, True, False])
    r = classification_report(labels, p, ("a", "b"))
    assert r.ece == pytest.approx(0.4)
    assert r.accuracy == 0.5
    assert r.mean_confidence == pytest.approx(0.9)


def test_ece_weights_each_bin_by_its_count() -> None:
    # 4 at 0.9 with 2 right (gap 0.4), 6 at 0.6 with 3 right (gap 0.1): 0.4*0.4 + 0.6*0.1.
    labels, p = binary([0.9] * 4 + [0.6] * 6, [True, True, False, False] + [True] * 3 + [False] * 3)
    r = classification_report(labels, p, ("a", "b"), n_bins=10)
    assert r.ece == pytest.approx(0.22)


def test_ece_depends_on_the_bins() -> None:
    conf, correct = np.array([0.55, 0.65]), np.array([False, True])
    # Separate bins: (0.55 + 0.35) / 2. One bin: |0.5 - 0.6|.
    assert expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(0.45)
    assert expected_calibration_error(conf, correct, n_bins=1) == pytest.approx(0.1)


def test_ece_bins_are_closed_on_the_right() -> None:
    # 0.5 falls in (0.0, 0.5], 0.6 in (0.5, 1.0]: separate bins, gaps 0.5 and 0.4.
    conf, correct = np.array([0.5, 0.6]), np.array([False, True])
    assert expected_calibration_error(conf, correct, n_bins=2) == pytest.approx(0.45)


def over_confident(n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Labels and rows that say 95 % for a top class that is right for 3 rows in 5."""
    predicted = np.arange(n) % 4
    labels = np.where(np.arange(n) % 5 < 3, predicted, (predicted + 1) % 4)
    return labels, probs_for(predicted.tolist(), 4, confidence=0.95)


def test_calibrate_softens_an_over_confident_model_and_says_what_it_did() -> None:
    labels, p = over_confident()
    cal = calibrate(p, labels, "reference")
    assert cal.fitted_on == "reference"
    assert cal.n == 1000
    assert cal.temperature > 1.0
    assert cal.ece_before == pytest.approx(classification_report(labels, p, CLASSES).ece)
    assert cal.ece_before == pytest.approx(0.35)
    assert cal.ece_after < 0.05
    assert cal.nll_after < cal.nll_before


def test_calibrate_refuses_an_empty_holdout() -> None:
    with pytest.raises(ValueError, match="empty"):
        calibrate(np.zeros((0, 4)), np.zeros(0, dtype=np.int64), "fresh")


# --- slices -------------------------------------------------------------------------------


def test_slice_accuracy_per_value_with_missing_values_as_unknown() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    predicted = [0, 1, 1, 1, 0, 0]  # right, wrong, right, right, right, wrong
    slices = {
        "camera": ["cam-02", "cam-02", "cam-01", "cam-01", None, "cam-01"],
        "condition": ["night", "night", "day", "", None, "day"],
    }
    r = classification_report(labels, probs_for(predicted, 2), ("a", "b"), slices=slices)
    got = {k: (v.n, v.accuracy) for k, v in r.per_slice.items()}
    assert got == {
        "camera=cam-01": (3, pytest.approx(2 / 3)),
        "camera=cam-02": (2, 0.5),
        "camera=unknown": (1, 1.0),
        "condition=day": (2, 0.5),
        "condition=night": (2, 0.5),
        "condition=unknown": (2, 1.0),
    }


def test_no_slices_gives_an_empty_mapping() -> None:
    assert tiny_report().per_slice == {}


def test_report_survives_a_json_round_trip() -> None:
    r = classification_report(
        LABELS, probs_for(PREDICTED, 4), CLASSES, slices={"camera": ["c"] * 7}
    )
    assert Report.model_validate_json(r.model_dump_json()) == r


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "probabilities", "classes", "message"),
    [
        (np.array([[0], [1]]), np.eye(2), ("a", "b"), "labels must be 1-D"),
        (np.array([0, 1]), np.array([0.5, 0.5]), ("a", "b"), "probabilities must be 2-D"),
        (np.array([0, 1, 1]), np.eye(2), ("a", "b"), "labels has 3 rows but probabilities has 2"),
        (np.array([0, 1]), np.eye(2), ("a", "b", "c"), "2 columns but there are 3 classes"),
        (np.array([0, 2]), np.eye(2), ("a", "b"), "label 2 is out of range"),
        (np.array([-1, 0]), np.eye(2), ("a", "b"), "label -1 is out of range"),
        (np.array([0.0, 1.0]), np.eye(2), ("a", "b"), "must be integer"),
        (np.array([], dtype=int), np.zeros((0, 2)), ("a", "b"), "empty holdout"),
        (np.array([0, 1]), np.array([[np.nan, 0.5], [0.5, 0.5]]), ("a", "b"), "NaN"),
        (np.array([0, 1]), np.array([[3.0, -1.0], [0.5, 0.5]]), ("a", "b"), r"\[0, 1\]"),
        (np.array([0, 1]), np.eye(2), ("a", "a"), "unique"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(
    labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        classification_report(labels, probabilities, classes)


def test_slice_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="slice 'camera' has 2 values for 7 examples"):
        classification_report(
            LABELS, probs_for(PREDICTED, 4), CLASSES, slices={"camera": ["a", "b"]}
        )


def test_n_bins_must_be_positive() -> None:
    with pytest.raises(ValueError, match="n_bins"):
        classification_report(LABELS, probs_for(PREDICTED, 4), CLASSES, n_bins=0)


# --- latency ------------------------------------------------------------------------------


def fake_clock(durations_s: Sequence[float]) -> Iterator[float]:
    """start/stop readings: each timed call takes the next duration."""
    now = 100.0
    for d in durations_s:
        yield now
        now += d
        yield now
        now += 1.0  # time between calls must not count


def test_latency_uses_only_timed_repeats() -> None:
    calls: list[int] = []
    readings = fake_clock([0.010, 0.050, 0.020, 0.040, 0.030])
    stats = latency_per_batch(
        lambda b: calls.append(len(b)),
        np.zeros((4, 8)),
        repeats=5,
        warmup=2,
        clock=lambda: next(readings),
    )
    assert calls == [4] * 7
    assert stats.batch_size == 4
    assert stats.median_ms == pytest.approx(30.0)
    # Linear interpolation: 95% of the way through 5 sorted samples is 0.8 between 40 and 50.
    assert stats.p95_ms == pytest.approx(48.0)
    assert stats.per_item_ms == pytest.approx(7.5)


def test_latency_with_the_real_clock_is_non_negative() -> None:
    stats = latency_per_batch(lambda b: b.sum(), np.ones((3, 3)))
    assert stats.batch_size == 3
    assert 0.0 <= stats.median_ms <= stats.p95_ms


@pytest.mark.parametrize(
    ("batch", "repeats", "warmup", "message"),
    [
        (np.zeros((0, 3)), 5, 1, "at least one item"),
        (np.float64(1.0), 5, 1, "at least one item"),
        (np.zeros((2, 3)), 0, 1, "repeats"),
        (np.zeros((2, 3)), 5, -1, "warmup"),
    ],
)
def test_latency_refuses_bad_arguments(
    batch: np.ndarray, repeats: int, warmup: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        latency_per_batch(lambda b: None, batch, repeats=repeats, warmup=warmup)
