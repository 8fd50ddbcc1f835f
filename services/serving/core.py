"""The serving core: preprocess, model, postprocess over a batch. No Ray, no Kafka.

``ServingCore`` turns a batch of pixels into class probabilities with a given model version,
loading (and sha256-verifying) each version once and keeping the last few in memory. The Ray
Serve deployment and the in-process backend both wrap it, so the stream path and the HTTP
path compute exactly the same thing.

``AliasTracker`` folds ``models.lifecycle`` into what serving needs: which version is champion
and which is challenger, and where their weights are.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError
from torch import nn

from shared.artifacts import ArtifactStore
from shared.events import FrameValid, ModelLifecycle, ModelTrained, Prediction
from shared.model import ModelSpec, example_pixels, load_model, predict_proba

__all__ = [
    "AliasTracker",
    "ModelRef",
    "ServingCore",
    "WrongSizeError",
    "frame_pixels",
    "to_predictions",
]


@dataclass(frozen=True)
class ModelRef:
    """A model version and where its weights are."""

    model_name: str
    version: str
    uri: str
    sha256: str


class ServingCore:
    """Probabilities for batches of pixels, per model version (thread-safe)."""

    def __init__(self, store: ArtifactStore, cache_size: int = 3) -> None:
        self._store = store
        self._cache: OrderedDict[str, tuple[nn.Module, ModelSpec]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def model(self, ref: ModelRef) -> tuple[nn.Module, ModelSpec]:
        """The loaded model of ``ref``; loads and verifies it on first use.

        Raises the artifact store's errors (a model that fails its sha256 is never loaded)."""
        with self._lock:
            hit = self._cache.get(ref.sha256)
            if hit is not None:
                self._cache.move_to_end(ref.sha256)
                return hit
        loaded = load_model(self._store, ref.uri, ref.sha256)
        with self._lock:
            self._cache[ref.sha256] = loaded
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return loaded

    def probabilities(
        self, ref: ModelRef, pixels: npt.NDArray[np.uint8]
    ) -> npt.NDArray[np.float32]:
        """``(N, K)`` class probabilities of ``(N, H, W, C)`` uint8 pixels under ``ref``."""
        model, spec = self.model(ref)
        expected = (spec.image_height, spec.image_width, spec.channels)
        if pixels.shape[1:] != expected:
            raise WrongSizeError(f"pixels of shape {pixels.shape[1:]}, model expects {expected}")
        return predict_proba(model, pixels)

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
    arrays = [example_pixels(f.pixels_b64, f.width, f.height, f.channels) for f in frames]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise WrongSizeError(f"frames of several sizes in one batch: {sorted(shapes)}")
    return np.stack(arrays) if arrays else np.zeros((0, 0, 0, 3), dtype=np.uint8)


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
                self.model_name, trained.model_version, trained.artifact_uri, trained.sha256
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
