"""``streamloop models show`` on a registry view in memory: what it prints of an evaluation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from shared.calibration import Calibration
from shared.events import DatasetSnapshot
from shared.registry import EvaluationView, RegistryView, VersionView
from streamloop import models_cli

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def version(metrics: dict[str, Any]) -> VersionView:
    return VersionView(
        model_name="m",
        version="v1",
        number=1,
        registered_at=NOW,
        status="blessed",
        aliases=["champion"],
        was_champion=True,
        rolled_back=False,
        artifact_uri="models/ab/ab.safetensors",
        sha256="ab" * 32,
        dataset=DatasetSnapshot(
            snapshot_id="s1",
            frame_ids_sha256="0" * 64,
            size=10,
            per_class={},
            per_condition={},
            topic_offsets={},
            holdout_size=0,
        ),
        hyperparameters={},
        training_metrics={},
        parent_version=None,
        code_version="test",
        seed=0,
        duration_s=1.0,
        idempotency_key="k1",
        tags={},
        evaluation=EvaluationView(
            verdict="blessed",
            reasons=[],
            champion_version=None,
            metrics=metrics,
            evaluated_at=NOW,
            event_id="e1",
        ),
    )


def shown(metrics: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> str:
    console = Console(record=True, width=200)
    monkeypatch.setattr(models_cli, "console", console)
    v = version(metrics)
    view = RegistryView(
        model_name="m", versions=[v], aliases={"champion": "v1"}, history=[], offset=0
    )
    models_cli._show_version(view, v)
    return console.export_text()


CALIBRATION = Calibration(
    temperature=1.8374,
    fitted_on="reference",
    n=412,
    nll_before=0.9123,
    nll_after=0.5432,
    ece_before=0.2051,
    ece_after=0.0312,
)


def test_show_prints_the_temperature_and_the_ece_before_and_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = shown(
        {"classes": [], "holdouts": {}, "calibration": CALIBRATION.model_dump()}, monkeypatch
    )
    assert "temperature 1.837" in out
    assert "reference holdout (412 examples)" in out
    assert "ECE 0.205 -> 0.031" in out
    assert "NLL 0.912 -> 0.543" in out


@pytest.mark.parametrize(
    "calibration",
    [None, {"temperature": -1.0}, {"temperature": 2.0}],
    ids=["absent", "invalid", "incomplete"],
)
def test_show_says_nothing_of_a_calibration_it_does_not_have(
    calibration: dict[str, Any] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics: dict[str, Any] = {"classes": [], "holdouts": {}}
    if calibration is not None:
        metrics["calibration"] = calibration
    out = shown(metrics, monkeypatch)
    assert "blessed" in out  # the rest still shows
    assert "calibration" not in out
