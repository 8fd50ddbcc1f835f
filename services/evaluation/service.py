"""The evaluation handler: score a candidate and the champion on the same holdouts, then gate.

Holdouts (both built from the current examples, never trained on by any version because the
split is a hash of the frame id, see ``shared.datasets.split_of``):

- ``fresh``: the holdout-split examples of the candidate's recency window, named in its
  dataset manifest: how each model does on the world as it is now;
- ``reference``: the reference split across the whole history, class-balanced and capped:
  a fixed yardstick that catches a candidate forgetting older conditions.

The candidate's temperature (``shared.calibration``) is fitted on its reference-holdout
probabilities (the fresh holdout when the reference one is empty) and kept in
``metrics["calibration"]``; the gate does not look at it.

The verdict event's id derives from the ``models.trained`` event it answers, so a redelivered
candidate yields the same event and the registry records it once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from services.evaluation.gate import Check, GateResult, gate
from services.evaluation.metrics import (
    Report,
    calibrate,
    classification_report,
    latency_per_batch,
)
from services.evaluation.settings import EvaluationSettings
from shared.artifacts import ArtifactError, ArtifactStore
from shared.calibration import Calibration
from shared.datasets import ExampleRecord, ExampleTable, split_of
from shared.events import ModelEvaluated, ModelTrained, derived_id
from shared.model import load_model, predict_proba
from shared.ports import Publisher
from shared.registry import RegistryReader
from shared.topics import Topics

__all__ = ["Evaluator", "reference_holdout"]

log = logging.getLogger("streamloop.evaluation")

HOLDOUTS = ("fresh", "reference")
CALIBRATION_HOLDOUTS = ("reference", "fresh")
"""Where the candidate's temperature is fitted, in order of preference: the reference holdout
is class-balanced and spans the whole history; the fresh one holds the newest window only."""


def reference_holdout(
    records: Sequence[ExampleRecord],
    holdout_share: float,
    reference_share: float,
    limit: int,
) -> list[ExampleRecord]:
    """The reference split of ``records``, at most ``limit``, balanced over classes and taken
    in frame-id hash order (so adding examples changes the selection as little as possible)."""
    pool = [
        r for r in records if split_of(r.frame_id, holdout_share, reference_share) == "reference"
    ]
    by_class: dict[str, list[ExampleRecord]] = {}
    for r in sorted(pool, key=lambda r: hashlib.sha256(r.frame_id.encode()).digest()):
        by_class.setdefault(r.label, []).append(r)
    chosen: list[ExampleRecord] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(v) for v in by_class.values()):
        for label in sorted(by_class):
            if depth < len(by_class[label]) and len(chosen) < limit:
                chosen.append(by_class[label][depth])
        depth += 1
    return chosen


def _candidate_calibration(
    scored: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> Calibration | None:
    """The candidate's calibration, fitted on the first holdout of ``CALIBRATION_HOLDOUTS``
    in ``scored`` (holdout name -> the candidate's probabilities and the labels, for the
    holdouts that had examples); None when neither was scored."""
    for name in CALIBRATION_HOLDOUTS:
        if name in scored:
            probabilities, labels = scored[name]
            return calibrate(probabilities, labels, name)
    return None


class Evaluator:
    """Evaluates candidates of ``settings.model_name`` (see the module docstring)."""

    def __init__(
        self,
        settings: EvaluationSettings,
        *,
        load_examples: Callable[[], ExampleTable],
        store: ArtifactStore,
        registry: RegistryReader,
        publisher: Publisher,
    ) -> None:
        self.settings = settings
        self.classes = tuple(settings.task.classes)
        self._load_examples = load_examples
        self._store = store
        self._registry = registry
        self._publisher = publisher

    def handle(self, trained: ModelTrained) -> ModelEvaluated | None:
        """Evaluate, publish ``models.evaluated`` (acknowledged) and return it; None for a
        model this service does not evaluate. A candidate whose artifact or manifest fails
        verification is rejected with that reason, never loaded."""
        s = self.settings
        if trained.model_name != s.model_name:
            return None
        champion_view = self._registry.champion(s.model_name)
        champion_version = champion_view.version if champion_view else None
        try:
            candidate, spec = load_model(self._store, trained.artifact_uri, trained.sha256)
            if tuple(spec.classes) != self.classes:
                raise ArtifactError(
                    f"candidate predicts {list(spec.classes)}, "
                    f"this deployment has {list(self.classes)}"
                )
            task = s.task
            if (spec.image_width, spec.image_height) != (task.image_width, task.image_height):
                raise ArtifactError(
                    f"candidate takes {spec.image_width}x{spec.image_height} images, frames "
                    f"here are fitted to {task.image_width}x{task.image_height}"
                )
            manifest = self._store.load_json(
                trained.dataset.manifest_uri, trained.dataset.manifest_sha256
            )
        except ArtifactError as exc:
            return self._publish(
                trained,
                champion_version,
                GateResult(
                    verdict="rejected",
                    reasons=[f"candidate refused: {exc}"],
                    checks=[Check(name="artifact", passed=False, detail=str(exc))],
                ),
                {"error": getattr(exc, "reason", "artifact_error")},
            )
        notes: list[str] = []
        champion: nn.Module | None = None
        if champion_view is not None and champion_view.version != trained.model_version:
            try:
                champion, _ = load_model(
                    self._store, champion_view.artifact_uri, champion_view.sha256
                )
            except ArtifactError as exc:
                notes.append(
                    f"champion {champion_view.version} could not be loaded ({exc}); floor only"
                )
                log.error("champion artifact unusable", extra={"version": champion_view.version})

        table = self._load_examples()
        holdouts = self._holdouts(table, trained, manifest)
        cand_reports: dict[str, Report | None] = {}
        champ_reports: dict[str, Report | None] = {}
        # The candidate's probabilities and labels per scored holdout, for its calibration.
        scored: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        metrics: dict[str, Any] = {"classes": list(self.classes), "holdouts": {}}
        for name in HOLDOUTS:
            records = holdouts[name]
            entry: dict[str, Any] = {"n": len(records)}
            if records:
                pixels = table.select(records)
                labels = np.asarray([self.classes.index(r.label) for r in records])
                slices: dict[str, list[str | None]] = {
                    "camera": [r.camera_id for r in records],
                    "condition": [r.condition for r in records],
                }
                probabilities = predict_proba(candidate, pixels)
                scored[name] = (probabilities, labels)
                rep = classification_report(labels, probabilities, self.classes, slices)
                cand_reports[name] = rep
                entry["candidate"] = rep.model_dump(mode="json")
                if champion is not None:
                    crep = classification_report(
                        labels, predict_proba(champion, pixels), self.classes, slices
                    )
                    champ_reports[name] = crep
                    entry["champion"] = crep.model_dump(mode="json")
            else:
                cand_reports[name] = None
                champ_reports[name] = None
            metrics["holdouts"][name] = entry
        calibration = _candidate_calibration(scored)
        if calibration is not None:
            metrics["calibration"] = calibration.model_dump()
        sample = holdouts["reference"] or holdouts["fresh"]
        if sample:
            batch = table.select(sample[: s.latency_batch])
            metrics["latency"] = latency_per_batch(
                lambda b: predict_proba(candidate, b), batch
            ).model_dump()
        result = gate(cand_reports, champ_reports if champion is not None else None, s.thresholds)
        if notes:
            result = result.model_copy(update={"reasons": [*result.reasons, *notes]})
        metrics["thresholds"] = s.thresholds.model_dump()
        return self._publish(
            trained, champion_version if champion is not None else None, result, metrics
        )

    def _holdouts(
        self, table: ExampleTable, trained: ModelTrained, manifest: Any
    ) -> dict[str, list[ExampleRecord]]:
        by_id = {r.frame_id: r for r in table.records}
        fresh_ids = [row[0] for row in manifest.get("holdout", [])]
        # Labels come from the current table: a label corrected since training counts.
        fresh = [by_id[f] for f in fresh_ids if f in by_id]
        policy = trained.dataset.policy
        reference = reference_holdout(
            table.records,
            float(policy.get("holdout_share", 0.15)),
            float(policy.get("reference_share", 0.10)),
            self.settings.reference_max,
        )
        return {"fresh": fresh, "reference": reference}

    def _publish(
        self,
        trained: ModelTrained,
        champion_version: str | None,
        result: GateResult,
        metrics: dict[str, Any],
    ) -> ModelEvaluated:
        event = ModelEvaluated(
            event_id=derived_id("model.evaluated", trained.event_id),
            source="evaluation",
            model_name=trained.model_name,
            model_version=trained.model_version,
            champion_version=champion_version,
            verdict=result.verdict,
            reasons=result.reasons,
            metrics={**metrics, "checks": [c.model_dump() for c in result.checks]},
        )
        self._publisher.publish(Topics.MODELS_EVALUATED, event, key=trained.model_version)
        self._publisher.flush()
        log.info(
            "model evaluated",
            extra={
                "version": trained.model_version,
                "verdict": result.verdict,
                "champion": champion_version,
                "reasons": result.reasons,
            },
        )
        return event
