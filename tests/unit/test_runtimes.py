"""Inference runtimes: exports agree with eager, tampered or foreign exports are refused,
serving falls back to eager without an export, and training exports what it is told to."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from services.serving.core import AliasTracker, ModelRef, ServingCore
from services.training.service import Trainer
from services.training.settings import Hyperparameters, SamplingPolicy, TrainingSettings
from shared.artifacts import ArtifactStore, FormatError, IntegrityError
from shared.events import ExportRef, ModelLifecycle, ModelTrained, RetrainRequest
from shared.model import ModelSpec, build_model, load_model, predict_proba
from shared.ports import MemoryLeases
from shared.registry import MemoryRegistry
from shared.runtimes import (
    EXPORT_KIND,
    EXPORT_SUFFIX,
    MAX_BATCH,
    TOLERANCE,
    ExportError,
    ExportFormat,
    compare,
    export_model,
    load_runtime,
)
from shared.topics import Topics
from tests.synthetic import render_examples, table_of, trained_event
from tests.unit.test_training import FakePublisher

TINY = ModelSpec(classes=("a", "b", "c"), image_height=8, image_width=8)
SPEC = ModelSpec(classes=("car", "truck", "bus", "motorcycle"), image_height=64, image_width=64)
MODEL = "m"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Two OpenMP threads on a busy two-core machine can be a hundred times slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def network(spec: ModelSpec, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec).eval()


def pixels(spec: ModelSpec, n: int, seed: int = 1) -> np.ndarray[Any, np.dtype[np.uint8]]:
    rng = np.random.default_rng(seed)
    shape = (n, spec.image_height, spec.image_width, spec.channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_exports() -> dict[ExportFormat, bytes]:
    net = network(TINY, 0)
    return {fmt: export_model(net, TINY, fmt) for fmt in ("onnx", "compiled")}


@pytest.mark.parametrize("fmt", ["onnx", "compiled"])
def test_each_export_agrees_with_eager_and_another_models_does_not(
    fmt: ExportFormat, tiny_exports: dict[ExportFormat, bytes]
) -> None:
    runtime = load_runtime(fmt, tiny_exports[fmt], threads=1)
    assert runtime.name == fmt
    images = pixels(TINY, MAX_BATCH + 44)  # more than one graph call, and a ragged tail
    probs = runtime.predict_proba(images)
    assert probs.shape == (len(images), 3) and probs.dtype == np.float32
    agreement = compare(predict_proba(network(TINY, 0), images), probs)
    assert agreement.agrees, agreement
    assert agreement.max_abs_diff <= TOLERANCE and agreement.images == len(images)
    assert runtime.predict_proba(images[:1]).shape == (1, 3)
    other = compare(predict_proba(network(TINY, 1), images), probs)
    assert not other.agrees and other.max_abs_diff > TOLERANCE


def test_compare_requires_the_same_class_everywhere_and_a_small_difference() -> None:
    ref = np.asarray([[0.6, 0.4], [0.2, 0.8]], dtype=np.float32)
    assert compare(ref, ref + np.float32(5e-4)).agrees
    near = compare(ref, np.asarray([[0.6, 0.4], [0.2, 0.802]], dtype=np.float32))
    assert near.same_class and not near.agrees
    flipped = compare(ref, np.asarray([[0.49, 0.51], [0.2, 0.8]], dtype=np.float32))
    assert not flipped.same_class and not flipped.agrees
    assert not compare(ref, ref[:1]).agrees


def test_bytes_that_are_no_graph_are_refused() -> None:
    for fmt in ("onnx", "compiled"):
        with pytest.raises(ExportError):
            load_runtime(fmt, b"not a graph", threads=1)  # type: ignore[arg-type]


# -- serving -------------------------------------------------------------------------------


def stored(store: ArtifactStore, seed: int, export: bytes | None = None) -> ModelRef:
    net = network(SPEC, seed)
    weights = store.put_weights(net.state_dict(), SPEC.to_metadata({"seed": str(seed)}))
    exports: tuple[tuple[str, ExportRef], ...] = ()
    if export is not None:
        art = store.put_bytes(export, EXPORT_KIND, EXPORT_SUFFIX["onnx"])
        exports = (("onnx", ExportRef(uri=art.uri, sha256=art.sha256)),)
    return ModelRef(MODEL, weights.sha256[:12], weights.uri, weights.sha256, exports)


@pytest.fixture(scope="module")
def onnx_of_seed_0() -> bytes:
    return export_model(network(SPEC, 0), SPEC, "onnx")


def test_serving_runs_the_chosen_export_and_falls_back_to_eager_without_one(
    tmp_path: Path, onnx_of_seed_0: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    store = ArtifactStore(tmp_path)
    with_export = stored(store, 0, onnx_of_seed_0)
    without = stored(store, 2)
    core = ServingCore(store, runtime="onnx", threads=1)
    images = pixels(SPEC, 5)
    with caplog.at_level(logging.INFO, logger="streamloop.serving"):
        assert core.model(with_export)[0].name == "onnx"
        assert core.model(without)[0].name == "eager"
        eager_probs = predict_proba(network(SPEC, 2), images)
        np.testing.assert_array_equal(core.probabilities(without, images), eager_probs)
        assert compare(
            predict_proba(network(SPEC, 0), images), core.probabilities(with_export, images)
        ).agrees
    fallbacks = [r for r in caplog.records if "serving with eager" in r.getMessage()]
    assert len(fallbacks) == 1 and fallbacks[0].levelno == logging.WARNING
    assert getattr(fallbacks[0], "version", None) == without.version
    # The eager setting ignores exports altogether.
    assert ServingCore(store, runtime="eager").model(with_export)[0].name == "eager"


def test_a_tampered_export_is_refused_before_it_is_loaded(
    tmp_path: Path, onnx_of_seed_0: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(tmp_path)
    ref = stored(store, 0, onnx_of_seed_0)
    export = ref.export("onnx")
    assert export is not None
    path = store.resolve(export.uri)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    loads: list[str] = []
    monkeypatch.setattr(
        "services.serving.core.load_runtime", lambda fmt, *a: loads.append(fmt) or None
    )
    with pytest.raises(IntegrityError):
        ServingCore(store, runtime="onnx").model(ref)
    assert loads == []


def test_an_export_of_other_weights_is_refused(tmp_path: Path, onnx_of_seed_0: bytes) -> None:
    store = ArtifactStore(tmp_path)
    # Seed 3's weights, with seed 0's export: sha256 fine, numbers not.
    ref = stored(store, 3, onnx_of_seed_0)
    with pytest.raises(FormatError, match="disagrees"):
        ServingCore(store, runtime="onnx").model(ref)


def test_the_tracker_carries_exports_and_reads_events_without_them() -> None:
    export = ExportRef(uri="exports/ab/ab.onnx", sha256="ab" * 32)
    trained = trained_event(MODEL, "v1", "models/x.safetensors", "cd" * 32)
    details = trained.model_copy(update={"exports": {"onnx": export}}).model_dump(mode="json")
    old = trained.model_dump(mode="json")
    del old["exports"]  # what a producer before this field wrote
    tracker = AliasTracker(MODEL)
    for version, d in (("v1", details), ("v0", old)):
        tracker.apply(
            ModelLifecycle(model_name=MODEL, action="registered", model_version=version, details=d)
        )
    tracker.apply(
        ModelLifecycle(model_name=MODEL, action="alias_set", alias="champion", model_version="v1")
    )
    assert tracker.champion is not None and tracker.champion.export("onnx") == export
    assert tracker.champion.export("compiled") is None
    tracker.apply(
        ModelLifecycle(model_name=MODEL, action="alias_set", alias="champion", model_version="v0")
    )
    assert tracker.champion is not None and tracker.champion.exports == ()


# -- training ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_table() -> Any:
    return table_of(render_examples(120, seed=5))


def train(
    tmp_path: Path, table: Any, exporter: Any = export_model, **kw: Any
) -> tuple[ModelTrained, ArtifactStore]:
    store = ArtifactStore(tmp_path / "artifacts")
    pub = FakePublisher()
    trainer = Trainer(
        TrainingSettings(
            policy=SamplingPolicy(recent_examples=120, older_per_class=0, min_train_examples=20),
            hyperparameters=Hyperparameters(epochs=1, batch_size=32),
            var_dir=tmp_path,
            torch_threads=1,
            **kw,
        ),
        load_examples=lambda: table,
        store=store,
        leases=MemoryLeases(),
        registry=MemoryRegistry(),
        publisher=pub,
        owner="w1",
        code_version="test",
        sleep=lambda s: None,
        exporter=exporter,
    )
    outcome = trainer.handle(
        RetrainRequest(
            model_name="vehicle-classifier", idempotency_key="k", reason="test", trigger="operator"
        )
    )
    assert outcome.status == "trained"
    (event,) = pub.of(Topics.MODELS_TRAINED)
    return event, store


def test_training_exports_what_its_setting_lists_and_only_that(
    tmp_path: Path, small_table: Any
) -> None:
    event, store = train(tmp_path / "onnx", small_table, exports=("onnx",))
    assert set(event.exports) == {"onnx"}
    export = event.exports["onnx"]
    runtime = load_runtime("onnx", store.read_verified(export.uri, export.sha256), threads=1)
    net, spec = load_model(store, event.artifact_uri, event.sha256)
    images = pixels(spec, 16)
    assert compare(predict_proba(net, images), runtime.predict_proba(images)).agrees

    calls: list[str] = []

    def counting(net: nn.Module, spec: ModelSpec, fmt: ExportFormat) -> bytes:
        calls.append(fmt)
        return export_model(net, spec, fmt)

    none, store = train(tmp_path / "none", small_table, exporter=counting, exports=())
    assert none.exports == {} and calls == []
    assert not (store.root / EXPORT_KIND).exists()


def test_training_does_not_publish_an_export_that_disagrees(
    tmp_path: Path, small_table: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def foreign(net: nn.Module, spec: ModelSpec, fmt: ExportFormat) -> bytes:
        return export_model(network(spec, 99), spec, fmt)

    with caplog.at_level(logging.WARNING, logger="streamloop.training"):
        event, store = train(tmp_path, small_table, exporter=foreign, exports=("onnx",))
    assert event.exports == {}
    assert not (store.root / EXPORT_KIND).exists()
    (warning,) = [r for r in caplog.records if "disagrees" in r.getMessage()]
    assert getattr(warning, "format", None) == "onnx"
