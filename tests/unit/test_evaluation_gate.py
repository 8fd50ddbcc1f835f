"""The evaluation gate's rules on hand-built holdout reports."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from services.evaluation.gate import GateResult, GateThresholds, gate
from services.evaluation.metrics import Report, classification_report
from shared.events import ClassMetrics

T = GateThresholds()


def report(n: int, accuracy: float, recalls: dict[str, tuple[float, int]] | None = None) -> Report:
    """A report with the given size, accuracy and per-class ``(recall, support)``."""
    recalls = recalls if recalls is not None else {"car": (accuracy, n)}
    return Report(
        n=n,
        accuracy=accuracy,
        macro_f1=accuracy,
        per_class={
            name: ClassMetrics(precision=r, recall=r, f1=r, support=s)
            for name, (r, s) in recalls.items()
        },
        per_slice={},
        ece=0.0,
        confusion=[],
        mean_confidence=accuracy,
    )


def names(result: GateResult) -> list[str]:
    return [c.name for c in result.checks]


def failed(result: GateResult) -> list[str]:
    return [c.name for c in result.checks if not c.passed]


def skipped(result: GateResult) -> list[str]:
    return [c.name for c in result.checks if c.skipped]


# --- no champion: the floor only ---------------------------------------------------------


def test_without_a_champion_only_the_floor_applies_and_says_so() -> None:
    result = gate({"fresh": report(100, 0.70), "reference": report(200, 0.65)}, None, T)
    assert result.verdict == "blessed"
    assert names(result) == ["evaluable", "champion", "floor:fresh", "floor:reference"]
    assert skipped(result) == ["champion"]
    assert "no champion to compare against: only the accuracy floor applies" in result.reasons
    assert "fresh accuracy 0.700 meets the floor 0.600" in result.reasons


def test_below_the_floor_is_rejected_without_a_champion() -> None:
    result = gate({"fresh": report(100, 0.412), "reference": report(200, 0.9)}, None, T)
    assert result.verdict == "rejected"
    assert result.reasons == ["fresh accuracy 0.412 is below the floor 0.600"]


def test_the_floor_applies_even_when_the_champion_is_worse() -> None:
    result = gate({"fresh": report(100, 0.55)}, {"fresh": report(100, 0.40)}, T)
    assert result.verdict == "rejected"
    assert failed(result) == ["floor:fresh"]


# --- accuracy against the champion ------------------------------------------------------


def test_accuracy_drop_beyond_tolerance_is_rejected_naming_holdout_and_numbers() -> None:
    candidate = {"fresh": report(100, 0.91), "reference": report(200, 0.85)}
    champion = {"fresh": report(100, 0.90), "reference": report(200, 0.90)}
    result = gate(candidate, champion, T)
    assert result.verdict == "rejected"
    assert failed(result) == ["accuracy_drop:reference"]
    assert result.reasons == [
        "reference accuracy 0.850 is 0.050 below the champion's 0.900, more than the allowed 0.020"
    ]


@pytest.mark.parametrize("candidate_accuracy", [0.885, 0.88, 0.95])
def test_accuracy_within_tolerance_or_better_is_blessed(candidate_accuracy: float) -> None:
    # 0.88 is exactly the tolerance below 0.90 (0.9 - 0.88 > 0.02 in floating point).
    result = gate(
        {"reference": report(200, candidate_accuracy)}, {"reference": report(200, 0.90)}, T
    )
    assert result.verdict == "blessed", result.reasons
    check = next(c for c in result.checks if c.name == "accuracy_drop:reference")
    assert check.passed
    assert not check.skipped


def test_tolerance_comes_from_the_thresholds() -> None:
    strict = GateThresholds(max_accuracy_drop=0.0)
    result = gate({"fresh": report(100, 0.89)}, {"fresh": report(100, 0.90)}, strict)
    assert result.verdict == "rejected"
    assert "more than the allowed 0.000" in result.reasons[0]


# --- per-class recall -------------------------------------------------------------------


def test_recall_regression_on_one_class_is_rejected_while_accuracy_improves() -> None:
    candidate = report(200, 0.92, {"car": (0.98, 120), "truck": (0.90, 40), "bus": (0.45, 40)})
    champion = report(200, 0.90, {"car": (0.93, 120), "truck": (0.88, 40), "bus": (0.80, 40)})
    result = gate({"reference": candidate}, {"reference": champion}, T)
    assert result.verdict == "rejected"
    assert failed(result) == ["recall_drop:reference:bus"]
    # allowed = 0.100 + 1.645 * sqrt(0.45 * 0.55 / 40 + 0.80 * 0.20 / 40) = 0.100 + 0.166
    assert result.reasons == [
        "reference recall of bus 0.450 is 0.350 below the champion's 0.800, "
        "more than the allowed 0.266 (noise 0.166 at support 40)"
    ]
    accuracy = next(c for c in result.checks if c.name == "accuracy_drop:reference")
    assert accuracy.passed and not accuracy.skipped


def test_a_recall_drop_is_judged_against_the_noise_of_its_support() -> None:
    # Five buses of 45 missed that the champion got right: within the noise at 45 examples.
    candidate = report(300, 0.95, {"car": (0.97, 200), "bus": (40 / 45, 45)})
    champion = report(300, 0.94, {"car": (0.95, 200), "bus": (1.0, 45)})
    result = gate({"reference": candidate}, {"reference": champion}, T)
    assert result.verdict == "blessed", result.reasons
    bus = next(c for c in result.checks if c.name == "recall_drop:reference:bus")
    assert "0.111 below the champion's 1.000, within the allowed 0.177" in bus.detail
    # The same drop as a plain tolerance (z = 0) blocks.
    plain = gate(
        {"reference": candidate},
        {"reference": champion},
        T.model_copy(update={"recall_noise_z": 0.0}),
    )
    assert failed(plain) == ["recall_drop:reference:bus"]
    # 0.80 to 0.60 is noise-sized at 40 examples and a regression at 400.
    small = gate(
        {"reference": report(200, 0.9, {"bus": (0.6, 40)})},
        {"reference": report(200, 0.9, {"bus": (0.8, 40)})},
        T,
    )
    large = gate(
        {"reference": report(2000, 0.9, {"bus": (0.6, 400)})},
        {"reference": report(2000, 0.9, {"bus": (0.8, 400)})},
        T,
    )
    assert small.verdict == "blessed" and large.verdict == "rejected"


def test_recall_regression_on_a_small_support_class_is_skipped() -> None:
    candidate = report(200, 0.92, {"car": (0.95, 190), "bus": (0.20, 10)})
    champion = report(200, 0.90, {"car": (0.92, 190), "bus": (0.90, 10)})
    result = gate({"reference": candidate}, {"reference": champion}, T)
    assert result.verdict == "blessed"
    bus = next(c for c in result.checks if c.name == "recall_drop:reference:bus")
    assert bus.skipped and bus.passed
    assert bus.detail == "reference recall of bus not compared: support 10 is below 20"
    assert bus.detail in result.reasons


def test_recall_checks_follow_the_candidate_class_order() -> None:
    recalls = {"truck": (0.9, 50), "car": (0.9, 50), "bus": (0.9, 50)}
    result = gate({"fresh": report(150, 0.9, recalls)}, {"fresh": report(150, 0.9, recalls)}, T)
    assert [n for n in names(result) if n.startswith("recall_drop")] == [
        "recall_drop:fresh:truck",
        "recall_drop:fresh:car",
        "recall_drop:fresh:bus",
    ]


def test_a_class_missing_from_one_report_is_skipped_not_failed() -> None:
    candidate = report(100, 0.9, {"car": (0.9, 60), "van": (0.9, 40)})
    champion = report(100, 0.9, {"car": (0.9, 60), "bus": (0.9, 40)})
    result = gate({"fresh": candidate}, {"fresh": champion}, T)
    assert result.verdict == "blessed"
    assert skipped(result) == ["recall_drop:fresh:van", "recall_drop:fresh:bus"]


# --- holdouts that cannot be evaluated --------------------------------------------------


def test_small_holdout_is_skipped_and_says_so() -> None:
    candidate = {"fresh": report(30, 0.20), "reference": report(200, 0.90)}
    champion = {"fresh": report(30, 0.95), "reference": report(200, 0.90)}
    result = gate(candidate, champion, T)
    assert result.verdict == "blessed"
    assert skipped(result) == ["floor:fresh", "accuracy_drop:fresh", "recall_drop:fresh"]
    assert (
        "fresh floor not checked: the candidate's fresh holdout has 30 examples, fewer than 50"
        in result.reasons
    )


def test_champion_without_an_evaluable_holdout_skips_only_the_comparison() -> None:
    candidate = {"fresh": report(100, 0.70), "reference": report(200, 0.70)}
    champion = {"fresh": None, "reference": report(10, 0.99)}
    result = gate(candidate, champion, T)
    assert result.verdict == "blessed"
    assert names(result) == [
        "evaluable",
        "floor:fresh",
        "accuracy_drop:fresh",
        "recall_drop:fresh",
        "floor:reference",
        "accuracy_drop:reference",
        "recall_drop:reference",
    ]
    assert skipped(result) == [n for n in names(result) if not n.startswith(("floor", "eval"))]
    assert "fresh accuracy drop not checked: the champion has no fresh report" in result.reasons


@pytest.mark.parametrize(
    "candidate",
    [
        {"fresh": None, "reference": None},
        {"fresh": report(49, 0.9), "reference": report(3, 0.9)},
        {},
    ],
)
def test_nothing_evaluable_is_rejected(candidate: dict[str, Report | None]) -> None:
    result = gate(candidate, {"fresh": report(100, 0.5)}, T)
    assert result.verdict == "rejected"
    assert result.reasons == ["no holdout has at least 50 examples"]


def test_holdout_size_threshold_is_inclusive() -> None:
    result = gate({"fresh": report(50, 0.9)}, None, T)
    assert result.verdict == "blessed"
    assert result.checks[0].detail == "evaluable holdouts: fresh (50 examples)"


# --- several failures ---------------------------------------------------------------------


def test_every_failure_is_listed_in_check_order() -> None:
    candidate = {
        "fresh": report(100, 0.50),
        "reference": report(200, 0.80, {"car": (0.9, 100), "truck": (0.5, 50), "bus": (0.4, 50)}),
    }
    champion = {
        "fresh": report(100, 0.51),
        "reference": report(200, 0.90, {"car": (0.9, 100), "truck": (0.9, 50), "bus": (0.9, 50)}),
    }
    result = gate(candidate, champion, T)
    assert result.verdict == "rejected"
    assert failed(result) == [
        "floor:fresh",
        "accuracy_drop:reference",
        "recall_drop:reference:truck",
        "recall_drop:reference:bus",
    ]
    assert result.reasons == [c.detail for c in result.checks if not c.passed]
    assert result.reasons[0] == "fresh accuracy 0.500 is below the floor 0.600"


def test_order_does_not_depend_on_mapping_order() -> None:
    a, b = report(100, 0.8), report(100, 0.7)
    one = gate({"fresh": a, "reference": b}, {"reference": b, "fresh": a}, T)
    two = gate({"reference": b, "fresh": a}, {"fresh": a, "reference": b}, T)
    assert one == two


# --- end to end with real reports -------------------------------------------------------


def test_gate_on_reports_from_classification_report() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, size=100)
    perfect = np.eye(2)[labels]
    # The candidate misses every second example of class 1: recall 0.5 instead of 1.0.
    worse = perfect.copy()
    ones = np.flatnonzero(labels == 1)
    worse[ones[::2]] = [1.0, 0.0]
    classes = ("car", "bus")
    champion = {"fresh": classification_report(labels, perfect, classes)}
    candidate = {"fresh": classification_report(labels, worse, classes)}
    result = gate(candidate, champion, GateThresholds(max_accuracy_drop=1.0, min_accuracy=0.0))
    assert failed(result) == ["recall_drop:fresh:bus"]


# --- thresholds -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"min_accuracy": 1.5},
        {"max_accuracy_drop": -0.1},
        {"max_recall_drop": -0.1},
        {"min_class_support": 0},
        {"min_holdout_size": 0},
    ],
)
def test_nonsense_thresholds_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        GateThresholds(**bad)


def test_threshold_fields_are_documented_and_frozen() -> None:
    for name, field in GateThresholds.model_fields.items():
        assert field.description, name
    with pytest.raises(ValidationError):
        T.min_accuracy = 0.0  # type: ignore[misc]
