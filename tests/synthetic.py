"""Labelled examples rendered by the simulator's renderer, for tests and benchmarks that need
training data without running the whole data-in pipeline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np

from services.simulator.render import CameraStyle, render_frame
from shared.artifacts import ArtifactRef, ArtifactStore
from shared.datasets import ExampleRecord, ExampleTable
from shared.events import DatasetSnapshot, Example, ExportRef, ModelTrained
from shared.images import pixels_to_b64
from shared.model import load_model
from shared.runtimes import EXPORT_KIND, EXPORT_SUFFIX, ExportFormat, export_model

CLASSES = ("car", "truck", "bus", "motorcycle")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def render_examples(
    n: int,
    *,
    seed: int,
    condition: str | Callable[[int], str] = "day",
    cameras: int = 4,
    start: int = 0,
    noise: float = 0.0,
    classes: Sequence[str] = CLASSES,
    prefix: str = "f",
) -> list[Example]:
    """``n`` examples; example ``i`` is captured at ``T0 + start + i`` seconds. ``noise`` is the
    share of labels replaced by a wrong class (deliberately corrupted annotation)."""
    rng = np.random.default_rng(seed)
    styles = [CameraStyle.for_camera(c, 7) for c in range(cameras)]
    out = []
    for j in range(n):
        i = start + j
        true = classes[int(rng.integers(len(classes)))]
        cond = condition(i) if callable(condition) else condition
        cam = int(rng.integers(cameras))
        pixels = render_frame(true, cond, rng, styles[cam])
        label = true
        if noise and rng.random() < noise:
            label = [c for c in classes if c != true][int(rng.integers(len(classes) - 1))]
        at = T0 + timedelta(seconds=i)
        out.append(
            Example(
                source="test",
                frame_id=f"{prefix}-{seed}-{i}",
                camera_id=f"cam-{cam:02d}",
                label=label,
                captured_at=at,
                labelled_at=at + timedelta(seconds=30),
                condition=cond,
                width=64,
                height=64,
                pixels_b64=pixels_to_b64(pixels),
            )
        )
    return out


def table_of(examples: Sequence[Example]) -> ExampleTable:
    """The table ``read_examples`` would return for these examples on one partition."""
    from shared.model import example_pixels

    pixels = np.stack([example_pixels(e.pixels_b64, 64, 64, 3) for e in examples])
    records = [
        ExampleRecord(
            e.frame_id, e.camera_id, e.label, e.condition, e.captured_at, e.labelled_at, 0, i, i
        )
        for i, e in enumerate(examples)
    ]
    return ExampleTable(records, pixels, {0: len(examples)})


def trained_event(
    model_name: str,
    version: str,
    uri: str,
    sha256: str,
    *,
    size: int = 1,
    seed: int = 0,
    duration_s: float = 0.0,
    code_version: str = "test",
    taken_at: datetime | None = None,
) -> ModelTrained:
    """A ``models.trained`` event for stored weights that no training run made (serving tests
    and benchmarks): the lineage fields are placeholders."""
    return ModelTrained(
        model_name=model_name,
        model_version=version,
        idempotency_key=version,
        artifact_uri=uri,
        sha256=sha256,
        dataset=DatasetSnapshot(
            snapshot_id="synthetic",
            frame_ids_sha256="0" * 64,
            size=size,
            per_class={},
            per_condition={},
            topic_offsets={},
            holdout_size=0,
            taken_at=taken_at,
        ),
        hyperparameters={},
        metrics={},
        code_version=code_version,
        seed=seed,
        duration_s=duration_s,
    )


def store_export(
    store: ArtifactStore, uri: str, sha256: str, fmt: ExportFormat
) -> tuple[ExportRef, ArtifactRef]:
    """Export stored weights to ``fmt`` and store the export, as training does
    (``services.training.service``), without its agreement check."""
    network, spec = load_model(store, uri, sha256)
    stored = store.put_bytes(export_model(network, spec, fmt), EXPORT_KIND, EXPORT_SUFFIX[fmt])
    return ExportRef(uri=stored.uri, sha256=stored.sha256), stored


def camera_scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A ``height x width`` RGB scene, smooth with 8x8 blocks of texture: it compresses like
    a photograph, not like noise (tests and benchmarks of large camera frames)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 200, y / height * 200, (x + y) / (width + height) * 255], -1)
    texture = rng.integers(0, 24, (height // 8 + 1, width // 8 + 1, 1), dtype=np.uint8)
    texture = texture.repeat(8, 0).repeat(8, 1)[:height, :width]
    return np.clip(base + texture, 0, 255).astype(np.uint8)
