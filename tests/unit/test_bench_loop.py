"""The closed-loop benchmark's pure part: the estimate's error per condition, and a
scenario played at another random label coverage."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.simulator.scenario import load as load_scenario
from shared.events import AccuracyEstimate, WindowMetrics
from tests.bench.lib.loop import estimate_mae, window_rows, with_coverage

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def window(slices: dict[str, float], accuracy: float, estimated: float) -> WindowMetrics:
    return WindowMetrics(
        model_name="m",
        model_version="v1",
        window_id="v1:live:1",
        window_kind="count",
        window_start=T0,
        window_end=T0,
        sample_count=300,
        labelled_count=100,
        label_coverage=0.33,
        accuracy=accuracy,
        per_slice_accuracy=slices,
        estimate=AccuracyEstimate(
            value=estimated, low=estimated - 0.05, high=estimated + 0.05, frames=300,
            method="confidence",
        ),
        estimate_error=estimated - accuracy,
    )  # fmt: skip


def test_the_error_counts_windows_of_one_condition_only_per_condition() -> None:
    windows = [
        window({"camera=cam-1": 0.9, "condition=day": 0.95}, 0.95, 0.93),
        window({"condition=day": 0.97}, 0.97, 0.93),
        window({"condition=night": 0.4}, 0.40, 0.50),
        window({"condition=day": 0.9, "condition=night": 0.5}, 0.70, 0.10),  # straddles
    ]
    mae = estimate_mae(windows)
    assert mae.keys() == {"day", "night"}
    assert mae["day"]["windows"] == 2 and abs(mae["day"]["mae"] - 0.03) < 1e-9
    assert mae["day"]["first"] == 0.02  # the first day window's error, in windows' order
    assert mae["night"] == {"mae": 0.1, "windows": 1, "first": 0.1}


def test_random_labels_at_another_coverage_play_the_same_scenario(tmp_path: Path) -> None:
    path = with_coverage("day-to-night", 0.4, tmp_path)
    played, builtin = load_scenario(path), load_scenario("day-to-night")
    assert played.labels.coverage == 0.4 != builtin.labels.coverage
    assert played.model_copy(update={"labels": builtin.labels}) == builtin
    with pytest.raises(FileNotFoundError):
        with_coverage("no-such-scenario", 0.4, tmp_path)


def test_each_window_is_a_row_with_its_conditions_estimate_and_error() -> None:
    rows = window_rows([
        window({"condition=day": 0.9, "condition=night": 0.2}, accuracy=0.55, estimated=0.3),
        window({"condition=night": 0.2}, accuracy=0.2, estimated=0.26),
    ])  # fmt: skip
    assert [r["conditions"] for r in rows] == [["day", "night"], ["night"]]
    assert rows[0]["error"] == -0.25 and rows[1]["error"] == 0.06
    assert rows[1] | {"start": None} == {
        "window": "v1:live:1", "shadow": False, "start": None, "conditions": ["night"],
        "frames": 300, "labelled": 100, "accuracy": 0.2, "sampled": 0, "sampled_accuracy": None,
        "estimate": 0.26,
        "method": "confidence", "error": 0.06,
    }  # fmt: skip
