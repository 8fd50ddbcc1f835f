"""The training handler: one retrain request in, at most one candidate model out.

Order of effects, chosen so a crash never leaves half a version behind:

1. acquire the request's idempotency key (a lease in Redis; ``done`` keys are never rerun);
2. read the examples, build the snapshot, store its manifest;
3. find the starting weights (``settings.init``) and fit, publishing ``training.progress``;
   the lease is renewed after every epoch and export, and in between by a thread
   (``services.training.lease``);
4. store the weights (atomic, content-addressed), and the exports ``settings.exports`` asks
   for, each only once it agrees with the weights on a few holdout images;
5. publish ``models.trained`` and wait for Kafka's acknowledgement;
6. mark the key done.

A crash before 5 leaves at most orphan artifacts, which nothing references; the request's
offset is not committed, so it is redelivered and, once the lease has run out, trained again.
A crash between 5 and 6 retrains on redelivery and publishes a ``models.trained`` with the
same event id (derived from the key), which the registry drops as a duplicate.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from services.training.dataset import Snapshot, build_snapshot, frame_ids_sha256
from services.training.lease import LeaseKeeper, LeaseLostError
from services.training.settings import TrainingSettings
from services.training.trainer import EpochStats, Fitter, fit
from shared.artifacts import ArtifactRef, ArtifactStore
from shared.datasets import ExampleTable
from shared.events import (
    Alert,
    DatasetSnapshot,
    ExportRef,
    ImportedWeights,
    ModelTrained,
    RetrainRequest,
    TrainingProgress,
    derived_id,
    utcnow,
)
from shared.model import ModelSpec, build_model, load_model, predict_proba
from shared.ports import Leases, Publisher
from shared.registry import RegistryReader
from shared.runtimes import (
    EXPORT_KIND,
    EXPORT_SUFFIX,
    ExportFormat,
    compare,
    export_model,
    load_runtime,
)
from shared.topics import Topics

__all__ = [
    "LeaseLostError",
    "Outcome",
    "RequestBusyError",
    "StartingWeightsError",
    "Trainer",
    "code_version",
]

log = logging.getLogger("streamloop.training")

DRIFT_POLL_S = 3.0
"""How often a run waiting for examples of the drifted slices re-reads the examples."""

EXPORT_CHECK_IMAGES = 64
"""Holdout images (training images when there is no holdout) an export is checked on."""

Exporter = Callable[[nn.Module, ModelSpec, ExportFormat], bytes]


class RequestBusyError(RuntimeError):
    """Another live worker holds the request's lease; retry later."""


class StartingWeightsError(ValueError):
    """``STREAMLOOP_TRAINING_INIT`` names weights this service cannot start from."""


@dataclass(frozen=True)
class Start:
    """Where a run's weights start: ``tensors`` (None: from the seed), whether their head
    fits the task's classes, and what the lineage records (``ModelTrained.init``, and the
    parent when the start is the champion)."""

    tensors: dict[str, torch.Tensor] | None
    keep_head: bool
    init: str
    parent: str | None = None

    @property
    def warm(self) -> bool:
        return self.tensors is not None


@dataclass(frozen=True)
class Outcome:
    status: Literal["trained", "duplicate", "skipped", "ignored"]
    version: str | None = None
    detail: str = ""
    event: ModelTrained | None = None


def code_version(package_version: str, files: list[Path]) -> str:
    """``<package version>+<hash of the training code>``: changes whenever the model
    definition or the training code does, even between releases."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return f"{package_version}+{h.hexdigest()[:10]}"


def installed_code_version() -> str:
    """``code_version`` of this installation: the package version and the model and
    training code as they are on disk."""
    try:
        pkg = version("streamloop")
    except PackageNotFoundError:
        pkg = "0+unknown"
    root = Path(__file__).resolve().parent.parent.parent
    files = [
        root / "shared" / "model.py",
        root / "shared" / "zoo.py",
        *sorted((root / "services" / "training").glob("*.py")),
    ]
    return code_version(pkg, [f for f in files if f.exists()])


class Trainer:
    """Handles retrain requests for ``settings.model_name`` (see the module docstring)."""

    def __init__(
        self,
        settings: TrainingSettings,
        *,
        load_examples: Callable[[], ExampleTable],
        store: ArtifactStore,
        leases: Leases,
        registry: RegistryReader,
        publisher: Publisher,
        owner: str,
        code_version: str,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        exporter: Exporter = export_model,
        fitter: Fitter | None = None,
    ) -> None:
        self.settings = settings
        self.spec = ModelSpec.for_architecture(
            settings.model.architecture,
            settings.task.classes,
            image_height=settings.task.image_height,
            image_width=settings.task.image_width,
        )
        self._load_examples = load_examples
        self._store = store
        self._leases = leases
        self._registry = registry
        self._publisher = publisher
        self._owner = owner
        self._code_version = code_version
        self._sleep = sleep
        self._clock = clock
        self._exporter = exporter
        self._fit = fitter if fitter is not None else fit

    def handle(self, request: RetrainRequest) -> Outcome:
        """Train for ``request`` unless its key already trained.

        Raises RequestBusyError when another worker holds the key for longer than a lease,
        LeaseLostError when this run lost its lease, and whatever reading or storing raised
        (the request is then redelivered)."""
        s = self.settings
        if request.model_name != s.model_name:
            return Outcome("ignored", detail=f"this service trains {s.model_name}")
        key = request.idempotency_key
        lease_key = self._lease_key(key)
        deadline = self._clock() + s.lease_s + 5
        while True:
            lease = self._leases.acquire(lease_key, self._owner, s.lease_s)
            if lease.state == "done":
                log.info(
                    "retrain request already trained", extra={"key": key, "version": lease.value}
                )
                return Outcome("duplicate", version=lease.value or None)
            if lease.state == "acquired":
                break
            if self._clock() > deadline:
                raise RequestBusyError(f"request {key} is held by {lease.value}")
            self._sleep(1.0)
        try:
            # Held for the time budget plus reading, exporting and storing: as long as the
            # consumer's poll interval lets the request stay with this worker.
            max_hold_s = s.time_budget_s + s.lease_s + 300
            with LeaseKeeper(
                self._leases, lease_key, self._owner, s.lease_s, max_hold_s=max_hold_s
            ) as keeper:
                outcome = self._train(request, keeper)
        except BaseException:
            self._leases.release(lease_key, self._owner)
            raise
        if outcome.status == "trained":
            self._leases.finish(lease_key, self._owner, outcome.version or "", s.done_ttl_s)
        else:
            self._leases.release(lease_key, self._owner)
        return outcome

    def _snapshot(
        self, request: RetrainRequest, lease: LeaseKeeper
    ) -> tuple[ExampleTable, Snapshot]:
        """The examples and the run's snapshot, once the drifted slices have
        ``policy.min_drift_examples`` training examples or ``drift_wait_s`` has passed."""
        s = self.settings
        waited = 0.0
        while True:
            table = self._load_examples()
            taken_at = utcnow()
            snap = build_snapshot(table, s.policy, s.seed, request.slices)
            if waited >= s.drift_wait_s or not snap.wants_drift_examples(
                s.policy.min_drift_examples
            ):
                break
            lease.check("waiting for examples of the drifted slices")
            self._sleep(DRIFT_POLL_S)
            waited += DRIFT_POLL_S
        if waited:
            log.info(
                "waited for examples of the drifted slices",
                extra={
                    "key": request.idempotency_key,
                    "waited_s": waited,
                    "weighted": snap.weighting()["examples"],
                },
            )
        return table, replace(snap, taken_at=taken_at)

    def _lease_key(self, key: str) -> str:
        # Idempotency keys are unique per model, not across models.
        return f"{self.settings.model_name}/{key}"

    def _train(self, request: RetrainRequest, lease: LeaseKeeper) -> Outcome:
        s = self.settings
        key = request.idempotency_key
        started = time.perf_counter()
        table, snap = self._snapshot(request, lease)
        log.info(
            "dataset snapshot",
            extra={
                "key": key,
                "examples": len(table),
                "train": len(snap.train),
                "holdout": len(snap.holdout),
                "recent": snap.recent_size,
                "weighting": snap.weighting(),
            },
        )
        if request.imported is not None:
            return self._register_import(request, request.imported, table, snap, lease, started)
        if len(snap.train) < s.policy.min_train_examples:
            detail = (
                f"{len(snap.train)} training examples, fewer than "
                f"{s.policy.min_train_examples}; not training"
            )
            self._publisher.publish(
                Topics.ALERTS,
                Alert(
                    source="training",
                    severity="warning",
                    kind="training_skipped",
                    message=detail,
                    details={"idempotency_key": key, "examples": len(table)},
                ),
            )
            self._publisher.flush()
            log.warning("training skipped", extra={"key": key, "detail": detail})
            return Outcome("skipped", detail=detail)
        start = self._starting_weights(key)
        hp = s.hyperparameters
        if start.warm:
            snap = replace(snap, focused=True)
            if s.warm_epochs is not None:
                hp = hp.model_copy(update={"epochs": s.warm_epochs})
        dataset = self._dataset(snap)

        def progress(stats: EpochStats) -> None:
            self._publisher.publish(
                Topics.TRAINING_PROGRESS,
                TrainingProgress(
                    source="training",
                    model_name=s.model_name,
                    idempotency_key=key,
                    epoch=stats.epoch,
                    epochs=stats.epochs,
                    loss=stats.loss,
                    accuracy=stats.accuracy,
                    elapsed_s=stats.elapsed_s,
                ),
                key=key,
            )
            lease.check(f"during epoch {stats.epoch}")
            log.info(
                "epoch",
                extra={
                    "key": key,
                    "epoch": stats.epoch,
                    "loss": round(stats.loss, 4),
                    "accuracy": round(stats.accuracy, 4),
                },
            )

        seen = snap.epoch_examples()
        result = self._fit(
            self.spec,
            table.select(seen),
            snap.labels(self.spec.classes, seen),
            hp,
            seed=s.seed,
            time_budget_s=s.time_budget_s,
            threads=s.torch_threads,
            on_epoch=progress,
            start_from=start.tensors,
            keep_head=start.keep_head,
        )
        metrics = {
            "train_loss": result.final.loss,
            "train_accuracy": result.final.accuracy,
            "epochs_completed": float(len(result.history)),
            "fit_seconds": result.duration_s,
        }
        model = build_model(self.spec)
        model.load_state_dict(result.state_dict)
        weights = self._store.put_weights(
            result.state_dict,
            self.spec.to_metadata({"snapshot": dataset.snapshot_id, "seed": str(s.seed)}),
        )
        return self._publish_candidate(
            request,
            self.spec,
            model,
            weights,
            table,
            snap,
            dataset,
            lease,
            metrics=metrics,
            hyperparameters={
                **hp.model_dump(),
                "time_budget_s": s.time_budget_s,
                "stopped_by_budget": result.stopped_by_budget,
                # A fit on Ray says where it ran; a local one's record is as it always was.
                **({"backend": "ray", "workers": s.ray.workers} if s.backend == "ray" else {}),
            },
            init=start.init,
            parent=start.parent,
            started=started,
        )

    def _register_import(
        self,
        request: RetrainRequest,
        imported: ImportedWeights,
        table: ExampleTable,
        snap: Snapshot,
        lease: LeaseKeeper,
        started: float,
    ) -> Outcome:
        """Make imported weights a candidate without training them: the same snapshot (its
        holdout is what evaluation scores), exports and ``models.trained`` as a trained
        model. The weights were checked against their spec and stored when imported."""
        model, spec = load_model(self._store, imported.artifact_uri, imported.artifact_sha256)
        weights = ArtifactRef(
            uri=imported.artifact_uri,
            sha256=imported.artifact_sha256,
            size=self._store.resolve(imported.artifact_uri).stat().st_size,
        )
        return self._publish_candidate(
            request,
            spec,
            model,
            weights,
            table,
            snap,
            self._dataset(snap),
            lease,
            metrics={"epochs_completed": 0.0},
            hyperparameters={},
            init="imported",
            started=started,
        )

    def _publish_candidate(
        self,
        request: RetrainRequest,
        spec: ModelSpec,
        model: nn.Module,
        weights: ArtifactRef,
        table: ExampleTable,
        snap: Snapshot,
        dataset: DatasetSnapshot,
        lease: LeaseKeeper,
        *,
        metrics: dict[str, float],
        hyperparameters: dict[str, Any],
        init: str,
        started: float,
        parent: str | None = None,
    ) -> Outcome:
        """Score the holdout, export, and publish ``models.trained`` for stored ``weights``.
        Its parent is ``parent`` when given (the version the weights started from), else
        the champion at the time."""
        s = self.settings
        key = request.idempotency_key
        if snap.holdout and tuple(spec.classes) == tuple(self.spec.classes):
            probs = predict_proba(model, table.select(snap.holdout))
            truth = np.asarray([spec.classes.index(r.label) for r in snap.holdout])
            metrics["holdout_accuracy"] = float((probs.argmax(axis=1) == truth).mean())
        checked_on = (snap.holdout or snap.train)[:EXPORT_CHECK_IMAGES]
        # An import into a deployment without examples has nothing to check an export on:
        # it goes without (serving runs eager), and the gate finds no holdout to pass.
        exports = (
            self._exports(model, spec, table.select(checked_on), key, lease) if checked_on else {}
        )
        version = weights.sha256[:12]
        if parent is None:
            champion = self._registry.champion(s.model_name)
            parent = champion.version if champion else None
        event = ModelTrained(
            event_id=derived_id("model.trained", s.model_name, key),
            source="training",
            model_name=s.model_name,
            model_version=version,
            idempotency_key=key,
            artifact_uri=weights.uri,
            sha256=weights.sha256,
            dataset=dataset,
            hyperparameters=hyperparameters,
            metrics=metrics,
            parent_version=parent,
            code_version=self._code_version,
            seed=s.seed,
            duration_s=time.perf_counter() - started,
            trigger=request.trigger,
            reason=request.reason,
            exports=exports,
            init=init,
            imported=request.imported,
        )
        self._publisher.publish(Topics.MODELS_TRAINED, event, key=version)
        self._publisher.flush()
        log.info("model trained", extra={"key": key, "version": version, "init": init, **metrics})
        return Outcome("trained", version=version, event=event)

    def _dataset(self, snap: Snapshot) -> DatasetSnapshot:
        """Store ``snap``'s manifest and describe it for the lineage."""
        s = self.settings
        manifest = self._store.put_json(snap.manifest(), "datasets")
        train_ids = [r.frame_id for r in snap.train]
        return DatasetSnapshot(
            snapshot_id=manifest.sha256[:16],
            frame_ids_sha256=frame_ids_sha256(train_ids),
            size=len(snap.train),
            per_class=snap.per_class(),
            per_condition=snap.per_condition(),
            topic_offsets={
                f"{Topics.EXAMPLES}:{p}": o for p, o in sorted(snap.end_offsets.items())
            },
            holdout_size=len(snap.holdout),
            manifest_uri=manifest.uri,
            manifest_sha256=manifest.sha256,
            recent_size=snap.recent_size,
            taken_at=snap.taken_at,
            policy={
                **s.policy.model_dump(),
                "split": "sha256(frame_id) bucket: reference < reference_share <= holdout "
                "< reference_share + holdout_share <= train",
                "weighting": snap.weighting(),
            },
        )

    def _starting_weights(self, key: str) -> Start:
        """The weights ``settings.init`` names. ``champion`` falls back to scratch (with a
        warning) when there is no champion or it is of another architecture or input size;
        ``imported:VERSION`` raises StartingWeightsError then."""
        s = self.settings
        if s.init == "scratch":
            return Start(None, True, "scratch")
        if s.init == "champion":
            return self._champion_weights(key)
        version = s.init.split(":", 1)[1]
        view = self._registry.get_version(s.model_name, version)
        if view is None:
            raise StartingWeightsError(
                f"STREAMLOOP_TRAINING_INIT={s.init}: {s.model_name} has no version {version}"
            )
        loaded = self._store.load_weights(view.artifact_uri, view.sha256)
        spec = ModelSpec.from_metadata(loaded.metadata)
        if spec.architecture != self.spec.architecture:
            raise StartingWeightsError(
                f"STREAMLOOP_TRAINING_INIT={s.init}: version {version} is a {spec.architecture}, "
                f"this service trains {self.spec.architecture}"
            )
        return Start(loaded.tensors, tuple(spec.classes) == tuple(self.spec.classes), s.init)

    def _champion_weights(self, key: str) -> Start:
        """The champion's weights, or scratch when they cannot be the start (see
        ``_starting_weights``). A champion of other classes keeps all but its head."""
        s = self.settings
        champion = self._registry.champion(s.model_name)
        if champion is None:
            log.warning(
                "no champion to start from; training from scratch",
                extra={"key": key, "init": s.init},
            )
            return Start(None, True, "scratch")
        loaded = self._store.load_weights(champion.artifact_uri, champion.sha256)
        spec = ModelSpec.from_metadata(loaded.metadata)
        mine = self.spec
        why = None
        if spec.architecture != mine.architecture:
            why = f"it is a {spec.architecture}, this service trains {mine.architecture}"
        elif (spec.image_width, spec.image_height) != (mine.image_width, mine.image_height):
            why = (
                f"it takes {spec.image_width}x{spec.image_height} images, this service trains "
                f"for {mine.image_width}x{mine.image_height}"
            )
        if why is not None:
            log.warning(
                "the champion cannot be the start; training from scratch",
                extra={"key": key, "init": s.init, "champion": champion.version, "reason": why},
            )
            return Start(None, True, "scratch")
        keep_head = tuple(spec.classes) == tuple(mine.classes)
        log.info(
            "starting from the champion",
            extra={"key": key, "champion": champion.version, "keep_head": keep_head},
        )
        version = champion.version
        return Start(loaded.tensors, keep_head, f"champion:{version}", parent=version)

    def _exports(
        self,
        model: nn.Module,
        spec: ModelSpec,
        pixels: npt.NDArray[np.uint8],
        key: str,
        lease: LeaseKeeper,
    ) -> dict[str, ExportRef]:
        """Export ``model`` to every format of ``settings.exports`` and store each export
        that agrees with eager on ``pixels``. One that fails or disagrees is left out (with a
        warning): serving then runs that version with eager. Checks the lease after each
        export; raises LeaseLostError when it is gone."""
        out: dict[str, ExportRef] = {}
        if not self.settings.exports:
            return out
        reference = predict_proba(model, pixels)
        for fmt in self.settings.exports:
            started = time.perf_counter()
            context: dict[str, object] = {"key": key, "format": fmt}
            log.info("exporting", extra=context)
            try:
                data = self._exporter(model, spec, fmt)
                runtime = load_runtime(fmt, data, self.settings.torch_threads)
                agreement = compare(reference, runtime.predict_proba(pixels))
            except (RuntimeError, ValueError) as exc:
                log.warning("export failed; not published", extra={**context, "error": str(exc)})
                lease.check(f"while exporting {fmt}")
                continue
            lease.check(f"while exporting {fmt}")
            context |= {
                "images": agreement.images,
                "same_class": agreement.same_class,
                "max_abs_diff": agreement.max_abs_diff,
            }
            if not agreement.agrees:
                log.warning("export disagrees with the weights; not published", extra=context)
                continue
            stored = self._store.put_bytes(data, EXPORT_KIND, EXPORT_SUFFIX[fmt])
            out[fmt] = ExportRef(uri=stored.uri, sha256=stored.sha256)
            log.info(
                "export stored",
                extra={
                    **context,
                    "uri": stored.uri,
                    "bytes": stored.size,
                    "seconds": round(time.perf_counter() - started, 2),
                },
            )
        return out
