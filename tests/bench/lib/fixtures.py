"""What the benchmarks measure with: a small model (trained for one epoch, or untrained, with
its export), rendered 64x64 frames and their payloads, alerts of a given size, and the
lifecycle events that make a version the champion."""

from __future__ import annotations

import base64
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from rich.console import Console

from services.serving.core import ModelRef, ServingCore
from services.simulator.fleet import Fleet
from services.simulator.render import CONDITIONS
from services.simulator.scenario import load
from services.training.settings import Hyperparameters
from services.training.trainer import FitResult, fit
from shared.artifacts import ArtifactRef, ArtifactStore
from shared.bus import EventProducer
from shared.events import (
    Alert,
    ExportRef,
    FrameRaw,
    ModelLifecycle,
    ModelTrained,
    encode,
)
from shared.images import encode_image
from shared.model import ModelSpec, build_model, example_pixels, load_model
from shared.registry import lifecycle_key
from shared.runtimes import (
    EXPORT_FORMATS,
    EXPORT_KIND,
    EXPORT_SUFFIX,
    EagerRuntime,
    ExportFormat,
    RuntimeName,
    compare,
    export_model,
)
from shared.settings import KafkaSettings, TaskSettings
from shared.topics import Topics
from shared.zoo import BUILTIN_CNN
from tests.bench.lib.control import BenchError
from tests.synthetic import CLASSES, render_examples, store_export, trained_event


def condition_of(i: int) -> str:
    """Day, night, fog and rain in turn."""
    return CONDITIONS[i % len(CONDITIONS)]


def task_spec(architecture: str = BUILTIN_CNN) -> ModelSpec:
    """The spec of a new model of ``architecture`` (the built-in CNN by default) for the
    configured task (``STREAMLOOP_TASK_*``), as training makes it."""
    task = TaskSettings()
    return ModelSpec.for_architecture(
        architecture, task.classes, task.image_height, task.image_width
    )


# --- frames -------------------------------------------------------------------------------


def render_pixels(
    n: int, seed: int, classes: tuple[str, ...] | list[str], prefix: str = "f"
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """``n`` rendered 64x64 frames ``(n, 64, 64, 3)`` and their class indices."""
    examples = render_examples(n, seed=seed, condition=condition_of, classes=classes, prefix=prefix)
    pixels = np.stack([example_pixels(e.pixels_b64, 64, 64, 3) for e in examples])
    labels = np.asarray([classes.index(e.label) for e in examples], dtype=np.int64)
    return pixels, labels


@dataclass(frozen=True)
class FramePool:
    """Distinct rendered frames that a benchmark reuses for every part."""

    pixels: npt.NDArray[np.uint8]
    """``(n, 64, 64, 3)``."""
    png: list[bytes]
    """The same frames as PNG."""
    conditions: list[str]
    labels: npt.NDArray[np.int64]
    """Class index of each frame, in ``classes``."""

    @property
    def png_kib_mean(self) -> float:
        return statistics.mean(map(len, self.png)) / 1024


def render_pool(n: int, seed: int, classes: tuple[str, ...] | list[str] = CLASSES) -> FramePool:
    rendered = render_examples(n, seed=seed, condition=condition_of, classes=classes, prefix="pool")
    pixels = np.stack([example_pixels(e.pixels_b64, 64, 64, 3) for e in rendered])
    return FramePool(
        pixels=pixels,
        png=[encode_image(p, "image/png") for p in pixels],
        conditions=[e.condition or "day" for e in rendered],
        labels=np.asarray([list(classes).index(e.label) for e in rendered], dtype=np.int64),
    )


def frames_raw_payloads(
    content_type: str, count: int, classes: tuple[str, ...], pool: int = 256
) -> list[bytes]:
    """``count`` encoded ``frames.raw`` events; images are drawn from ``pool`` simulated crops."""
    fleet = Fleet(load("day-to-night"), classes, run_id="bench", rate=20.0)
    images = [encode_image(fleet.frame(i * 37).pixels, content_type) for i in range(pool)]
    now = datetime.now(UTC)
    out = []
    for i in range(count):
        event = FrameRaw(
            frame_id=f"bench-{i:08d}",
            camera_id=f"cam-{i % 4 + 1}",
            captured_at=now,
            content_type=content_type,
            image_b64=base64.b64encode(images[i % pool]).decode(),
            source="bench",
        )
        out.append(encode(event))
    return out


def make_alerts(count: int, size: int) -> list[Alert]:
    """``count`` distinct alerts whose wire form is about ``size`` bytes each."""
    probe = Alert(severity="warning", kind="bench", message="", source="bench")
    overhead = len(encode(probe))
    # Plain ASCII: JSON escaping leaves it one byte per character, so the size is exact
    # (give or take the produced_at fraction). One shared string keeps memory flat.
    filler = ("the quick brown fox jumps over the lazy dog " * (size // 44 + 1))[
        : max(0, size - overhead)
    ]
    return [
        Alert(severity="warning", kind="bench", message=filler, source="bench")
        for _ in range(count)
    ]


# --- models -------------------------------------------------------------------------------


def fit_rendered(
    spec: ModelSpec, examples: int, seed: int, threads: int, prefix: str = "f"
) -> FitResult:
    """One epoch on ``examples`` rendered frames (one epoch always runs whole)."""
    pixels, labels = render_pixels(examples, seed, spec.classes, prefix)
    return fit(
        spec,
        pixels,
        labels,
        Hyperparameters(epochs=1),
        seed=seed,
        time_budget_s=60,
        threads=threads,
    )


def train_weights(
    store: ArtifactStore, spec: ModelSpec, examples: int, seed: int, threads: int, prefix: str = "f"
) -> ArtifactRef:
    """``fit_rendered``'s weights, stored."""
    result = fit_rendered(spec, examples, seed, threads, prefix)
    return store.put_weights(result.state_dict, spec.to_metadata({"seed": str(seed)}))


@dataclass
class UntrainedModel:
    store: ArtifactStore
    ref: ModelRef
    spec: ModelSpec
    onnx_error: str | None
    """Why the ONNX export failed (None when it is stored)."""

    def trained(self) -> ModelTrained:
        """The ``models.trained`` event naming the weights and the export."""
        return trained_event(
            self.ref.model_name,
            self.ref.version,
            self.ref.uri,
            self.ref.sha256,
            code_version="bench",
        ).model_copy(update={"exports": dict(self.ref.exports)})


def untrained_model(root: Path, name: str, seed: int) -> UntrainedModel:
    """An untrained network of the shared architecture (what it computes costs the same as a
    trained one's), stored with its ONNX export."""
    spec = task_spec()
    torch.manual_seed(seed)
    store = ArtifactStore(root)
    art = store.put_weights(build_model(spec).state_dict(), spec.to_metadata({"seed": str(seed)}))
    network, _ = load_model(store, art.uri, art.sha256)
    exports: dict[str, ExportRef] = {}
    error = None
    try:
        data = export_model(network, spec, "onnx")
        stored = store.put_bytes(data, EXPORT_KIND, EXPORT_SUFFIX["onnx"])
        exports["onnx"] = ExportRef(uri=stored.uri, sha256=stored.sha256)
    except Exception as exc:  # noqa: BLE001 - eager is still measured
        error = f"{type(exc).__name__}: {exc}"
    ref = ModelRef(
        name, art.sha256[:12], art.uri, art.sha256, exports=tuple(sorted(exports.items()))
    )
    return UntrainedModel(store, ref, spec, error)


@dataclass
class Fixture:
    spec: ModelSpec
    runtime: RuntimeName
    """The runtime measured; ``ref`` and ``trained`` name its export (none for eager)."""
    trained: ModelTrained
    ref: ModelRef
    pixels: npt.NDArray[np.uint8]
    """The pool's rendered frames, ``(POOL, H, W, 3)``."""
    png: list[bytes]
    """The same frames as PNG."""
    conditions: list[str]
    train_s: float
    """Rendering, fitting and storing the weights."""
    train_examples: int
    epoch_s: float
    """The fit's one epoch alone (no rendering, no batch-norm recalibration, no storing)."""
    fit_s: float
    """The whole fit: the epoch, and batch-norm recalibration where the network has it."""
    weights_bytes: int
    """The stored safetensors weights."""
    holdout: dict[str, float]
    export: dict[str, Any]
    """The export's artifact, size, time and agreement with eager (empty for eager)."""


def export_format(runtime: RuntimeName) -> ExportFormat | None:
    """The export ``runtime`` loads, None for eager (which needs only the weights)."""
    for fmt in EXPORT_FORMATS:
        if fmt == runtime:
            return fmt
    return None


def make_fixture(
    console: Console,
    root: Path,
    examples: int,
    model_name: str,
    runtime: RuntimeName,
    *,
    seed: int = 23,
    pool: int = 256,
    threads: int = 2,
    architecture: str = BUILTIN_CNN,
) -> Fixture:
    """A model of ``architecture`` trained on ``examples`` frames, stored under ``root`` with
    its export for ``runtime`` as training stores it, checked against eager on ``pool`` fresh
    frames (the frames every part then uses). BenchError when the serving core would not run
    it."""
    spec = task_spec(architecture)
    if (spec.image_height, spec.image_width) != (64, 64):
        raise BenchError("the renderer draws 64x64 frames; set STREAMLOOP_TASK_IMAGE_* to 64")
    console.print(f"training a {architecture} model on {examples:,} rendered examples (1 epoch)")
    start = time.perf_counter()
    store = ArtifactStore(root)
    result = fit_rendered(spec, examples, seed, threads)
    art = store.put_weights(result.state_dict, spec.to_metadata({"seed": str(seed)}))
    train_s = time.perf_counter() - start
    version = art.sha256[:12]
    exports: dict[str, ExportRef] = {}
    export: dict[str, Any] = {}
    fmt = export_format(runtime)
    if fmt is not None:
        # What training does (``services.training.service``), on the stored weights.
        start = time.perf_counter()
        exports[fmt], stored = store_export(store, art.uri, art.sha256, fmt)
        export = {
            "format": fmt,
            "uri": stored.uri,
            "sha256": stored.sha256,
            "bytes": stored.size,
            "export_s": round(time.perf_counter() - start, 2),
        }
    trained = trained_event(
        model_name,
        version,
        art.uri,
        art.sha256,
        size=examples,
        seed=seed,
        duration_s=train_s,
        code_version="bench",
    ).model_copy(update={"exports": exports})
    ref = ModelRef(model_name, version, art.uri, art.sha256, exports=tuple(sorted(exports.items())))
    frames = render_pool(pool, seed + 1, spec.classes)
    accuracy = _check_runtime(console, store, ref, runtime, frames, export, threads)
    console.print(
        f"  model {version} stored in {train_s:.1f} s; accuracy on {pool} fresh frames "
        f"{accuracy:.2f} ({runtime}); PNG frames {frames.png_kib_mean:.1f} KiB"
    )
    if export:
        console.print(
            f"  {runtime} export {export['bytes'] / 1024:.0f} KiB in {export['export_s']:.1f} s; "
            f"against eager on the {pool} frames: same class {export['same_class']}, "
            f"max |dp| {export['max_abs_diff']:.1e}"
        )
        if not export["agrees"]:
            raise BenchError(f"the {runtime} export disagrees with the weights")
    return Fixture(
        spec=spec,
        runtime=runtime,
        trained=trained,
        ref=ref,
        pixels=frames.pixels,
        png=frames.png,
        conditions=frames.conditions,
        train_s=train_s,
        train_examples=examples,
        epoch_s=result.history[0].elapsed_s,
        fit_s=result.duration_s,
        weights_bytes=art.size,
        holdout={"examples": pool, "accuracy": round(accuracy, 4)},
        export=export,
    )


def _check_runtime(
    console: Console,
    store: ArtifactStore,
    ref: ModelRef,
    runtime: RuntimeName,
    frames: FramePool,
    export: dict[str, Any],
    threads: int,
) -> float:
    """The serving core's accuracy on ``frames`` with ``runtime``; with an export, its
    agreement with eager is added to ``export``."""
    core = ServingCore(store, runtime=runtime, threads=threads)
    loaded, _ = core.model(ref)
    if loaded.name != runtime:
        raise BenchError(f"the serving core runs {loaded.name}, not {runtime}, with this model")
    probs = core.probabilities(ref, frames.pixels)
    if export:
        network, _ = load_model(store, ref.uri, ref.sha256)
        agreement = compare(EagerRuntime(network).predict_proba(frames.pixels), probs)
        export.update(
            agrees=agreement.agrees,
            same_class=agreement.same_class,
            max_abs_diff=agreement.max_abs_diff,
        )
    return float((probs.argmax(axis=1) == frames.labels).mean())


# --- the champion -------------------------------------------------------------------------


def lifecycle_events(trained: ModelTrained) -> list[ModelLifecycle]:
    """What the registry would publish: the version, then the champion alias on it."""
    return [
        ModelLifecycle(
            model_name=trained.model_name,
            action="registered",
            model_version=trained.model_version,
            details=trained.model_dump(mode="json"),
        ),
        ModelLifecycle(
            model_name=trained.model_name,
            action="alias_set",
            model_version=trained.model_version,
            alias="champion",
        ),
    ]


def announce(kafka: KafkaSettings, trained: ModelTrained) -> None:
    """Publish ``lifecycle_events`` to ``models.lifecycle``."""
    with EventProducer(kafka, client_id="bench-serving") as producer:
        for ev in lifecycle_events(trained):
            producer.publish(Topics.MODELS_LIFECYCLE, ev, key=lifecycle_key(ev))
        producer.flush(30)
