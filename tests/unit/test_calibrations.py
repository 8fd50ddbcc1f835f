"""The monitor's view of each version's temperature (``services.monitoring.calibrations``)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from services.monitoring.calibrations import Temperatures, calibrated_of
from shared.calibration import calibrated_confidence
from shared.events import Prediction
from shared.registry import RegistryUnavailableError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def prediction(version: str, probabilities: dict[str, float]) -> Prediction:
    top = max(probabilities, key=lambda c: probabilities[c])
    return Prediction(
        frame_id="f1",
        camera_id="cam-1",
        captured_at=T0,
        model_name="m",
        model_version=version,
        predicted_class=top,
        probabilities=probabilities,
        confidence=probabilities[top],
        served_at=T0,
        latency_from_capture_ms=1.0,
        latency_from_ingest_ms=1.0,
    )


class Registry:
    """A registry read model holding evaluations by version (a fake of the port's one call
    this module makes); ``down`` makes it unreadable."""

    def __init__(self, temperatures: dict[str, float | None]) -> None:
        self.temperatures = temperatures
        self.calls = 0
        self.down = False

    def get_version(self, model_name: str, version: str) -> Any:
        self.calls += 1
        if self.down:
            raise RegistryUnavailableError("down")
        if version not in self.temperatures:
            return None
        t = self.temperatures[version]
        metrics = {"calibration": {"temperature": t}} if t is not None else {}
        return SimpleNamespace(evaluation=SimpleNamespace(metrics=metrics))


def test_a_known_version_is_read_once_and_calibrates() -> None:
    registry = Registry({"v1": 2.0})
    temps = Temperatures(registry, "m")  # type: ignore[arg-type]
    p = prediction("v1", {"car": 0.9, "truck": 0.06, "bus": 0.04})
    assert temps.calibrated(p) == pytest.approx(calibrated_confidence([0.9, 0.06, 0.04], 2.0))
    assert temps.calibrated(p) < 0.9  # an over-confident version is softened
    temps.calibrated(p)
    assert registry.calls == 1


def test_an_unknown_version_counts_raw_and_is_asked_again_after_the_retry() -> None:
    now = [0.0]
    registry = Registry({})
    temps = Temperatures(registry, "m", retry_s=10, clock=lambda: now[0])  # type: ignore[arg-type]
    assert temps.of("v2") is None
    now[0] = 5.0
    assert temps.of("v2") is None and registry.calls == 1
    registry.temperatures["v2"] = 1.5
    now[0] = 10.5
    assert temps.of("v2") == 1.5 and registry.calls == 2


def test_an_unreadable_registry_or_an_evaluation_without_temperature_is_no_temperature() -> None:
    registry = Registry({"v1": None})
    temps = Temperatures(registry, "m", retry_s=0)  # type: ignore[arg-type]
    assert temps.of("v1") is None
    registry.down = True
    assert temps.of("v1") is None
    assert Temperatures(None, "m").of("v1") is None


def test_probabilities_that_leave_some_out_get_the_rest_as_one_more_class() -> None:
    partial = prediction("v1", {"car": 0.7, "truck": 0.1})
    full = prediction("v1", {"car": 0.7, "truck": 0.1, "other": 0.2})
    assert calibrated_of(partial, 1.7) == pytest.approx(calibrated_of(full, 1.7))
    assert calibrated_of(full, 1.0) == pytest.approx(0.7)
