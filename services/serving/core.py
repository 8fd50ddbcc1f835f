"""The serving core: preprocess, model, postprocess over a batch. No Ray, no Kafka.

``ServingCore`` turns a batch of pixels into class probabilities with a given model version,
loading (and sha256-verifying) each version once and keeping the last few in memory. The Ray
Serve deployment and the in-process backend both wrap it, so the stream path and the HTTP
path compute the same thing.

A core runs one inference runtime (``shared.runtimes``): ``eager`` from the weights, or the
``onnx`` / ``compiled`` export that training stored beside them. A version whose
``models.trained`` names no such export is served with ``eager``; nothing is ever exported or
compiled here.

``AliasTracker`` folds ``models.lifecycle`` into what serving needs: which version is champion
and which is challenger, and where their weights and exports are.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from shared.artifacts import ArtifactStore, FormatError
from shared.events import ExportRef, FrameValid, ModelLifecycle, ModelTrained, Prediction
from shared.model import ModelSpec, load_model
from shared.runtimes import (
    EagerRuntime,
    ExportError,
    InferenceRuntime,
    RuntimeName,
    compare,
    load_runtime,
    probe_pixels,
)

__all__ = [
    "AliasTracker",
    "ModelRef",
    "ServingCore",
    "WrongSizeError",
    "frame_pixels",
    "to_predictions",
]

log = logging.getLogger("streamloop.serving")


@dataclass(frozen=True)
class ModelRef:
    """A model version, where its weights are, and its exports by runtime name."""

    model_name: str
    version: str
    uri: str
    sha256: str
    exports: tuple[tuple[str, ExportRef], ...] = ()
    data_cut: datetime | None = field(default=None, compare=False)
    """When its training examples were read (``DatasetSnapshot.taken_at``): frames ingested
    later are unseen by it. None when its lineage does not say."""

    def export(self, runtime: str) -> ExportRef | None:
        return dict(self.exports).get(runtime)


class ServingCore:
    """Probabilities for batches of pixels, per model version (thread-safe), on ``runtime``.

    ``threads`` is ONNX Runtime's intra-op thread count; torch's (eager, compiled) is the
    process's, set by whoever builds the core."""

    def __init__(
        self,
        store: ArtifactStore,
        cache_size: int = 3,
        *,
        runtime: RuntimeName = "eager",
        threads: int = 1,
    ) -> None:
        self._store = store
        self._cache: OrderedDict[tuple[str, str], tuple[InferenceRuntime, ModelSpec]] = (
            OrderedDict()
        )
        self._cache_size = cache_size
        self._runtime = runtime
        self._threads = threads
        self._announced: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def model(self, ref: ModelRef) -> tuple[InferenceRuntime, ModelSpec]:
        """The runtime serving ``ref`` and its spec; loads and verifies them on first use.

        Raises the artifact store's errors (a model or export that fails its sha256 is never
        loaded), and FormatError for an export that does not load or does not agree with the
        weights on a probe batch."""
        export = None if self._runtime == "eager" else ref.export(self._runtime)
        key = (ref.sha256, export.sha256 if export else "eager")
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        network, spec = load_model(self._store, ref.uri, ref.sha256)
        eager = EagerRuntime(network)
        runtime: InferenceRuntime = eager
        if export is not None and self._runtime != "eager":
            runtime = self._load_export(ref, export, eager, spec)
        self._announce(ref, key, runtime)
        loaded = (runtime, spec)
        with self._lock:
            self._cache[key] = loaded
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return loaded

    def _load_export(
        self, ref: ModelRef, export: ExportRef, eager: EagerRuntime, spec: ModelSpec
    ) -> InferenceRuntime:
        assert self._runtime != "eager"
        data = self._store.read_verified(export.uri, export.sha256)
        try:
            runtime = load_runtime(self._runtime, data, self._threads)
            # Training checked the export against these weights; this catches a runtime
            # library that computes differently here, or an export of other weights.
            probe = probe_pixels(spec)
            agreement = compare(eager.predict_proba(probe), runtime.predict_proba(probe))
        except (ExportError, ValueError, RuntimeError) as exc:
            raise FormatError(f"{self._runtime} export {export.uri} does not load: {exc}") from exc
        if not agreement.agrees:
            raise FormatError(
                f"{self._runtime} export {export.uri} disagrees with the weights of "
                f"{ref.version} (max |dp| {agreement.max_abs_diff:.2g}, same class: "
                f"{agreement.same_class})"
            )
        return runtime

    def _announce(self, ref: ModelRef, key: tuple[str, str], runtime: InferenceRuntime) -> None:
        with self._lock:
            if key in self._announced:
                return
            self._announced.add(key)
        extra = {"version": ref.version, "runtime": runtime.name, "requested": self._runtime}
        if runtime.name != self._runtime:
            log.warning("no export for the requested runtime; serving with eager", extra=extra)
        else:
            log.info("model runtime", extra=extra)

    def probabilities(
        self, ref: ModelRef, pixels: npt.NDArray[np.uint8]
    ) -> npt.NDArray[np.float32]:
        """``(N, K)`` class probabilities of ``(N, H, W, C)`` uint8 pixels under ``ref``."""
        runtime, spec = self.model(ref)
        expected = (spec.image_height, spec.image_width, spec.channels)
        if pixels.shape[1:] != expected:
            raise WrongSizeError(f"pixels of shape {pixels.shape[1:]}, model expects {expected}")
        return runtime.predict_proba(pixels)

    def classes(self, ref: ModelRef) -> tuple[str, ...]:
        return self.model(ref)[1].classes

    def submit(self, ref: ModelRef, pixels: npt.NDArray[np.uint8]) -> Done:
        """The in-process backend: computes now, returns the finished call."""
        return Done(self.probabilities(ref, pixels))


@dataclass(frozen=True)
class Done:
    """A call that has already finished."""

    value: npt.NDArray[np.float32]

    def result(self) -> npt.NDArray[np.float32]:
        return self.value


class WrongSizeError(ValueError):
    """A frame whose size does not match the model's input."""


def frame_pixels(frames: Sequence[FrameValid]) -> npt.NDArray[np.uint8]:
    """The frames' pixels stacked ``(N, H, W, C)``. Raises WrongSizeError when the frames do
    not all share one size (ingest normalises them, so this means a misconfiguration)."""
    if not frames:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    shapes = {(f.height, f.width, f.channels) for f in frames}
    if len(shapes) > 1:
        raise WrongSizeError(f"frames of several sizes in one batch: {sorted(shapes)}")
    # One copy: the frames' bytes joined into a writable buffer the batch array views.
    joined = bytearray().join(f.pixels for f in frames)
    return np.frombuffer(joined, dtype=np.uint8).reshape(len(frames), *shapes.pop())


def to_predictions(
    frames: Sequence[FrameValid],
    probabilities: npt.NDArray[np.float32],
    classes: Sequence[str],
    ref: ModelRef,
    *,
    served_at: datetime,
    shadow: bool = False,
) -> list[Prediction]:
    """One ``Prediction`` per frame, in order."""
    out = []
    for frame, probs in zip(frames, probabilities, strict=True):
        best = int(np.argmax(probs))
        out.append(
            Prediction(
                source="serving",
                frame_id=frame.frame_id,
                camera_id=frame.camera_id,
                captured_at=frame.captured_at,
                model_name=ref.model_name,
                model_version=ref.version,
                predicted_class=classes[best],
                probabilities={c: round(float(p), 6) for c, p in zip(classes, probs, strict=True)},
                confidence=min(max(float(probs[best]), 0.0), 1.0),
                served_at=served_at,
                latency_from_capture_ms=(served_at - frame.captured_at).total_seconds() * 1e3,
                latency_from_ingest_ms=(served_at - frame.ingested_at).total_seconds() * 1e3,
                shadow=shadow,
                condition=frame.condition,
                source_width=frame.source_width,
                source_height=frame.source_height,
            )
        )
    return out


class AliasTracker:
    """Champion and challenger of one model, from its ``models.lifecycle`` events in order."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self._refs: dict[str, ModelRef] = {}
        self._aliases: dict[str, str] = {}

    def apply(self, event: ModelLifecycle) -> bool:
        """Fold one event; True when the champion or challenger changed."""
        if event.model_name != self.model_name:
            return False
        before = (self.champion, self.challenger)
        if event.action == "registered" and event.model_version:
            try:
                trained = ModelTrained.model_validate(event.details)
            except ValidationError:
                return False
            self._refs[event.model_version] = ModelRef(
                self.model_name,
                trained.model_version,
                trained.artifact_uri,
                trained.sha256,
                exports=tuple(sorted(trained.exports.items())),
                data_cut=trained.dataset.taken_at,
            )
        elif event.action == "alias_set" and event.alias:
            if event.model_version is None:
                self._aliases.pop(event.alias, None)
            else:
                self._aliases[event.alias] = event.model_version
                if (
                    event.alias == "champion"
                    and self._aliases.get("challenger") == event.model_version
                ):
                    del self._aliases["challenger"]
        elif event.action == "rolled_back" and event.model_version:
            self._aliases["champion"] = event.model_version
            if self._aliases.get("challenger") == event.model_version:
                del self._aliases["challenger"]
        return (self.champion, self.challenger) != before

    def _ref(self, alias: str) -> ModelRef | None:
        version = self._aliases.get(alias)
        return self._refs.get(version) if version else None

    @property
    def champion(self) -> ModelRef | None:
        return self._ref("champion")

    @property
    def challenger(self) -> ModelRef | None:
        return self._ref("challenger")
