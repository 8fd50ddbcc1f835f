"""The evaluation handler on in-memory ports: the candidate's calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import services.evaluation.service as service
from services.evaluation.service import Evaluator
from services.evaluation.settings import EvaluationSettings
from shared.artifacts import ArtifactStore
from shared.calibration import Calibration, temperature_of
from shared.datasets import ExampleTable, split_of
from shared.events import Event, ModelEvaluated, ModelTrained
from shared.model import ModelSpec, build_model
from shared.registry import MemoryRegistry
from shared.topics import Topics
from tests.synthetic import CLASSES, render_examples, table_of

SPEC = ModelSpec(classes=CLASSES, image_height=64, image_width=64)
MODEL = "vehicle-classifier"
HOLDOUT_SHARE = 0.15
REFERENCE_SHARE = 0.10


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Event, str | None]] = []

    def publish(self, topic: str, event: Event, *, key: str | None = None) -> object:
        self.sent.append((topic, event, key))
        return None

    def flush(self, timeout_s: float | None = None) -> None:
        return None


@pytest.fixture(scope="module")
def table() -> ExampleTable:
    return table_of(render_examples(400, seed=11))


def candidate(
    store: ArtifactStore, table: ExampleTable, holdout_share: float, reference_share: float
) -> ModelTrained:
    """An untrained network whose logits are scaled up, so it is sure of every answer and
    right about a quarter of the time: over-confident by construction. Its fresh holdout is
    every holdout-split frame of ``table``."""
    torch.manual_seed(0)
    model = build_model(SPEC)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        head.weight.mul_(50.0)
        head.bias.mul_(50.0)
    weights = store.put_weights(model.state_dict(), SPEC.to_metadata())
    fresh = [
        [r.frame_id]
        for r in table.records
        if split_of(r.frame_id, holdout_share, reference_share) == "holdout"
    ]
    manifest = store.put_json({"holdout": fresh}, "manifests")
    policy = {"holdout_share": holdout_share, "reference_share": reference_share}
    return ModelTrained(
        model_name=MODEL,
        model_version=weights.sha256[:12],
        idempotency_key="k1",
        artifact_uri=weights.uri,
        sha256=weights.sha256,
        dataset={
            "snapshot_id": "s1",
            "frame_ids_sha256": "0" * 64,
            "size": len(table),
            "per_class": {},
            "per_condition": {},
            "topic_offsets": {},
            "holdout_size": len(fresh),
            "manifest_uri": manifest.uri,
            "manifest_sha256": manifest.sha256,
            "policy": policy,
        },
        hyperparameters={},
        metrics={},
        code_version="test",
        seed=0,
        duration_s=0.0,
    )


def evaluate(
    tmp_path: Path,
    table: ExampleTable,
    holdout_share: float = HOLDOUT_SHARE,
    reference_share: float = REFERENCE_SHARE,
) -> ModelEvaluated:
    store = ArtifactStore(tmp_path / "artifacts")
    publisher = FakePublisher()
    evaluator = Evaluator(
        EvaluationSettings(model_name=MODEL, latency_batch=8),
        load_examples=lambda: table,
        store=store,
        registry=MemoryRegistry(),
        publisher=publisher,
    )
    evaluated = evaluator.handle(candidate(store, table, holdout_share, reference_share))
    assert evaluated is not None
    assert [(t, e) for t, e, _ in publisher.sent] == [(Topics.MODELS_EVALUATED, evaluated)]
    return evaluated


def test_the_candidate_is_calibrated_on_the_reference_holdout(
    tmp_path: Path, table: ExampleTable
) -> None:
    metrics = evaluate(tmp_path, table).metrics
    reference = metrics["holdouts"]["reference"]
    assert reference["n"] > 0 and metrics["holdouts"]["fresh"]["n"] > 0
    cal = Calibration.model_validate(metrics["calibration"])
    assert cal.fitted_on == "reference"
    assert cal.n == reference["n"]
    # The same probabilities as the report, not a second run of the model.
    assert cal.ece_before == pytest.approx(reference["candidate"]["ece"])
    assert cal.temperature > 1.0
    assert cal.ece_after <= cal.ece_before + 0.01
    assert cal.nll_after <= cal.nll_before
    assert temperature_of(metrics) == cal.temperature


def test_without_a_reference_holdout_the_fresh_one_is_used(
    tmp_path: Path, table: ExampleTable
) -> None:
    metrics = evaluate(tmp_path, table, reference_share=0.0).metrics
    assert metrics["holdouts"]["reference"]["n"] == 0
    cal = Calibration.model_validate(metrics["calibration"])
    assert cal.fitted_on == "fresh"
    assert cal.n == metrics["holdouts"]["fresh"]["n"] > 0
    assert cal.temperature > 0


def test_with_no_holdout_there_is_no_calibration(tmp_path: Path) -> None:
    # Every frame trains (no share is held out), so there is nothing to fit on.
    table = table_of(render_examples(20, seed=12))
    metrics = evaluate(tmp_path, table, holdout_share=0.0, reference_share=0.0).metrics
    assert metrics["holdouts"]["fresh"]["n"] == 0
    assert metrics["holdouts"]["reference"]["n"] == 0
    assert "calibration" not in metrics
    assert temperature_of(metrics) is None


def test_the_verdict_does_not_depend_on_the_calibration(
    tmp_path: Path, table: ExampleTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = evaluate(tmp_path / "a", table)

    def absurd(probabilities: np.ndarray, labels: np.ndarray, fitted_on: str) -> Calibration:
        return Calibration(
            temperature=19.0,
            fitted_on=fitted_on,
            n=0,
            nll_before=0.0,
            nll_after=99.0,
            ece_before=0.0,
            ece_after=1.0,
        )

    monkeypatch.setattr(service, "calibrate", absurd)
    other = evaluate(tmp_path / "b", table)
    assert other.metrics["calibration"]["temperature"] == 19.0
    assert honest.metrics["calibration"]["temperature"] != 19.0
    assert (other.verdict, other.reasons) == (honest.verdict, honest.reasons)
    assert other.metrics["checks"] == honest.metrics["checks"]
