"""Architectures by configuration: every torchvision classifier holds what the built-in CNN
holds (a head sized to the classes, artifacts that round-trip, ONNX that agrees with eager,
serving from the artifact's spec, seeded determinism, pickles refused), the built-in CNN's
artifacts keep their exact bytes, and an unknown name is refused."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from services.serving.core import ModelRef, ServingCore
from services.training.service import Trainer
from services.training.settings import Hyperparameters, SamplingPolicy, TrainingSettings
from services.training.trainer import _batches, fit
from shared.artifacts import ArtifactStore, FormatError
from shared.events import ExportRef, ModelTrained
from shared.model import (
    ARCHITECTURE,
    ModelSpec,
    NormalizedInput,
    build_model,
    example_pixels,
    load_model,
    predict_proba,
    preprocess,
)
from shared.ports import MemoryLeases
from shared.registry import MemoryRegistry
from shared.runtimes import (
    EXPORT_KIND,
    EXPORT_SUFFIX,
    compare,
    export_model,
    load_runtime,
)
from shared.settings import ModelSettings
from shared.topics import Topics
from shared.zoo import KNOWN_ARCHITECTURES, TORCHVISION, check_input_size
from tests.synthetic import render_examples, table_of
from tests.unit.test_training import FakePublisher, request

TESTED = ("resnet18", "mobilenet_v3_small", "efficientnet_b0")
CLASSES = ("car", "truck", "bus")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Two OpenMP threads on a busy two-core machine can be a hundred times slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def spec_of(architecture: str, side: int = 32) -> ModelSpec:
    return ModelSpec.for_architecture(architecture, CLASSES, side, side)


def network(spec: ModelSpec, seed: int) -> nn.Module:
    """A seeded network whose probabilities are neither uniform nor saturated, so that a
    runtime that computed anything else would show it. Freshly initialised, some torchvision
    networks shrink every input to about 1e-9 (mobilenet_v3_small) and others saturate, so
    batch norm is first given the statistics of a batch, as training would, and the head is
    scaled to logits with a standard deviation of 0.5."""
    torch.manual_seed(seed)
    net = build_model(spec)
    batch = preprocess(pixels(spec, 8, seed=9))
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # running statistics of exactly this batch
    head = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        net.train()(batch)
        scale = 0.5 / float(net.eval()(batch).std())
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    return net


def pixels(spec: ModelSpec, n: int, seed: int = 1) -> np.ndarray[Any, np.dtype[np.uint8]]:
    rng = np.random.default_rng(seed)
    shape = (n, spec.image_height, spec.image_width, spec.channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


@dataclass(frozen=True)
class Stored:
    spec: ModelSpec
    ref: ModelRef
    store: ArtifactStore
    reference: np.ndarray[Any, np.dtype[np.float32]]


@pytest.fixture(scope="module", params=TESTED)
def stored(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Stored:
    """A model of each tested architecture in a store, with its ONNX export beside it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests run: the same reduction order, the same floats
    try:
        return _stored(request.param, tmp_path_factory)
    finally:
        torch.set_num_threads(before)


def _stored(architecture: str, tmp_path_factory: pytest.TempPathFactory) -> Stored:
    spec = spec_of(architecture)
    net = network(spec, seed=0)
    store = ArtifactStore(tmp_path_factory.mktemp(architecture))
    weights = store.put_weights(net.state_dict(), spec.to_metadata({"seed": "0"}))
    onnx = store.put_bytes(export_model(net, spec, "onnx"), EXPORT_KIND, EXPORT_SUFFIX["onnx"])
    ref = ModelRef(
        "m",
        weights.sha256[:12],
        weights.uri,
        weights.sha256,
        (("onnx", ExportRef(uri=onnx.uri, sha256=onnx.sha256)),),
    )
    return Stored(spec, ref, store, predict_proba(net, pixels(spec, 6)))


# -- the built-in CNN is what it was -----------------------------------------------------


def test_a_default_spec_writes_the_metadata_and_bytes_it_always_did(tmp_path: Path) -> None:
    spec = ModelSpec(classes=("car", "truck", "bus", "motorcycle"), image_height=64, image_width=64)
    assert spec == ModelSpec.for_architecture(ARCHITECTURE, spec.classes, 64, 64)
    assert spec.to_metadata({"seed": "0"}) == {
        "streamloop": '{"seed":"0","spec":{"architecture":"streamloop-cnn-v1","channels":3,'
        '"classes":["car","truck","bus","motorcycle"],"image_height":64,"image_width":64}}'
    }
    torch.manual_seed(0)
    ref = ArtifactStore(tmp_path).put_weights(
        build_model(spec).state_dict(), spec.to_metadata({"seed": "0"})
    )
    # The sha256 of this artifact before architectures were configurable.
    assert ref.sha256 == "6a71e9ad481e2e185fd44eeacb02e4eb30842166deb2f74cc2bca040c997a1f3"


def test_a_spec_without_the_new_fields_is_the_built_in_cnn() -> None:
    old = {"streamloop": json.dumps({"spec": {"classes": ["a", "b"], "image_height": 8}})}
    with pytest.raises(ValueError):
        ModelSpec.from_metadata(old)  # image_width is missing: still refused
    old = {
        "streamloop": json.dumps(
            {"spec": {"classes": ["a", "b"], "image_height": 8, "image_width": 16}}
        )
    }
    spec = ModelSpec.from_metadata(old)
    assert spec.architecture == ARCHITECTURE and spec.input_normalization is None
    assert isinstance(build_model(spec), nn.Sequential)


# -- every architecture ------------------------------------------------------------------


@pytest.mark.parametrize("architecture", sorted(TORCHVISION))
def test_each_torchvision_model_has_a_head_per_class_and_touches_no_network(
    architecture: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a model was built with a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    spec = spec_of(architecture)
    assert spec.input_normalization == "imagenet"
    out = build_model(spec).eval()(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, len(CLASSES))
    wide = ModelSpec.for_architecture(architecture, ("a", "b", "c", "d", "e"), 40, 56)
    assert build_model(wide).eval()(torch.rand(1, 3, 40, 56)).shape == (1, 5)


def test_artifacts_round_trip_spec_and_outputs(stored: Stored) -> None:
    network, spec = load_model(stored.store, stored.ref.uri, stored.ref.sha256)
    assert spec == stored.spec
    assert json.loads(spec.to_metadata()["streamloop"])["spec"]["input_normalization"] == (
        "imagenet"
    )
    probs = predict_proba(network, pixels(spec, 6))
    assert probs.shape == (6, len(CLASSES))
    # Neither uniform nor saturated everywhere: the comparisons below can fail.
    assert probs.max() > 0.5 and (probs.max(axis=1) < 0.99).any()
    np.testing.assert_array_equal(probs, stored.reference)


def test_onnx_export_agrees_with_eager_and_serving_loads_it(stored: Stored) -> None:
    core = ServingCore(stored.store, runtime="onnx", threads=1)
    runtime, spec = core.model(stored.ref)
    assert runtime.name == "onnx" and spec == stored.spec
    agreement = compare(stored.reference, core.probabilities(stored.ref, pixels(spec, 6)))
    assert agreement.agrees, agreement
    eager = ServingCore(stored.store, runtime="eager")
    np.testing.assert_array_equal(
        eager.probabilities(stored.ref, pixels(spec, 6)), stored.reference
    )


@pytest.mark.parametrize("architecture", TESTED)
def test_the_same_seed_gives_the_same_network(architecture: str) -> None:
    spec = spec_of(architecture)
    a, b, c = network(spec, 3), network(spec, 3), network(spec, 4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("architecture", TESTED)
def test_a_pickled_model_of_any_architecture_is_refused(tmp_path: Path, architecture: str) -> None:
    store = ArtifactStore(tmp_path)
    buf = io.BytesIO()
    torch.save(build_model(spec_of(architecture)).state_dict(), buf)
    ref = store.put_bytes(buf.getvalue(), "models", ".safetensors")
    with pytest.raises(FormatError):
        load_model(store, ref.uri, ref.sha256)


def test_weights_of_another_architecture_do_not_load(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    weights = build_model(spec_of("resnet18")).state_dict()
    ref = store.put_weights(weights, spec_of("mobilenet_v3_small").to_metadata())
    with pytest.raises(FormatError, match="does not hold a usable model"):
        load_model(store, ref.uri, ref.sha256)


# -- configuration -----------------------------------------------------------------------


def test_an_unknown_architecture_is_refused_with_the_known_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match=r"unknown architecture 'vgg11'.*resnet18"):
        build_model(
            ModelSpec(architecture="vgg11", classes=CLASSES, image_height=32, image_width=32)
        )
    with pytest.raises(ValueError, match="efficientnet_b0"):
        ModelSpec.for_architecture("vgg11", CLASSES, 32, 32)
    monkeypatch.setenv("STREAMLOOP_MODEL_ARCHITECTURE", "vgg11")
    with pytest.raises(ValueError, match="unknown architecture 'vgg11'"):
        TrainingSettings(var_dir=tmp_path)
    # An artifact naming an architecture this build does not have is a format error.
    store = ArtifactStore(tmp_path / "a")
    spec = ModelSpec(architecture="vgg11", classes=CLASSES, image_height=32, image_width=32)
    ref = store.put_weights({"w": torch.zeros(1)}, spec.to_metadata())
    with pytest.raises(FormatError, match="unknown architecture"):
        load_model(store, ref.uri, ref.sha256)


def test_input_sizes_each_architecture_cannot_take_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in KNOWN_ARCHITECTURES:
        check_input_size(name, 32, 32)
    with pytest.raises(ValueError, match="multiples of 8"):
        check_input_size(ARCHITECTURE, 60, 64)
    with pytest.raises(ValueError, match="at least 32"):
        build_model(spec_of("resnet18", side=16))
    gray = ModelSpec(architecture="resnet18", classes=CLASSES, image_height=32, image_width=32)
    with pytest.raises(ValueError, match="3-channel"):
        build_model(gray.model_copy(update={"channels": 1}))
    monkeypatch.setenv("STREAMLOOP_MODEL_ARCHITECTURE", "mobilenet_v3_small")
    monkeypatch.setenv("STREAMLOOP_TASK_IMAGE_WIDTH", "24")
    with pytest.raises(ValueError, match="at least 32"):
        TrainingSettings(var_dir=tmp_path)


def test_the_setting_defaults_to_the_built_in_cnn_and_names_what_training_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ModelSettings().architecture == ARCHITECTURE
    monkeypatch.setenv("STREAMLOOP_MODEL_ARCHITECTURE", "efficientnet_b0")
    assert TrainingSettings(var_dir=tmp_path).model.architecture == "efficientnet_b0"


def test_a_champion_of_another_architecture_keeps_serving(
    stored: Stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serving and evaluation build from the artifact's spec, never from the setting."""
    other = next(a for a in KNOWN_ARCHITECTURES if a != stored.spec.architecture)
    monkeypatch.setenv("STREAMLOOP_MODEL_ARCHITECTURE", other)
    core = ServingCore(stored.store, runtime="eager")
    _runtime, spec = core.model(stored.ref)
    assert spec.architecture == stored.spec.architecture != other
    probs = core.probabilities(stored.ref, pixels(spec, 6))
    np.testing.assert_array_equal(probs, stored.reference)


# -- training ----------------------------------------------------------------------------


def test_batches_merge_a_last_batch_of_one_only_when_asked() -> None:
    perm = torch.arange(9)
    assert [len(b) for b in _batches(perm, 4, merge_single=False)] == [4, 4, 1]
    merged = _batches(perm, 4, merge_single=True)
    assert [len(b) for b in merged] == [4, 5]
    assert torch.equal(torch.cat(merged), perm)
    assert [len(b) for b in _batches(perm[:1], 4, merge_single=True)] == [1]


def test_a_torchvision_model_trains_deterministically_on_a_handful_of_images() -> None:
    # Nine images in batches of four: the last batch of one would reach resnet18's last
    # batch norm as one value per channel (a 1x1 map at 32 pixels), which torch refuses.
    spec = spec_of("resnet18")
    images = pixels(spec, 9, seed=2)
    labels = np.arange(9, dtype=np.int64) % len(CLASSES)
    hp = Hyperparameters(epochs=1, batch_size=4)
    runs = [
        fit(spec, images, labels, hp, seed=seed, time_budget_s=60, threads=1) for seed in (0, 0, 1)
    ]
    a, b, c = (r.state_dict for r in runs)
    assert len(runs[0].history) == 1
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    model = build_model(spec)
    model.load_state_dict(a, strict=True)
    assert predict_proba(model, images).shape == (9, len(CLASSES))


def test_batch_norm_statistics_are_those_of_the_final_weights() -> None:
    """After a short fit from scratch, serving (eval mode, running statistics) predicts what
    the network predicts on its training images with batch statistics. Without recomputing
    them, mobilenet_v3_small's running averages (momentum 0.01) still describe the initial
    network, and eval-mode answers are near chance."""
    from tests.synthetic import CLASSES as VEHICLES

    spec = ModelSpec.for_architecture("mobilenet_v3_small", VEHICLES, 64, 64)
    examples = render_examples(320, seed=5)
    images = np.stack([example_pixels(e.pixels_b64, 64, 64, 3) for e in examples])
    labels = np.asarray([VEHICLES.index(e.label) for e in examples], dtype=np.int64)
    result = fit(
        spec, images, labels, Hyperparameters(epochs=2), seed=0, time_budget_s=120, threads=2
    )
    model = build_model(spec)
    model.load_state_dict(result.state_dict, strict=True)
    served = predict_proba(model, images).argmax(axis=1)  # eval mode: running statistics
    model.train()
    with torch.no_grad():
        batch = torch.cat(
            [model(preprocess(images[i : i + 64])) for i in range(0, len(images), 64)]
        ).argmax(dim=1)
    assert (served == batch.numpy()).mean() >= 0.9


def test_an_exported_graph_of_a_torchvision_model_holds_its_normalisation(
    stored: Stored,
) -> None:
    """Eager and the graph see the same input: without the normalisation inside the graph
    the probabilities would differ far beyond the tolerance."""
    network, spec = load_model(stored.store, stored.ref.uri, stored.ref.sha256)
    data = stored.store.read_verified(stored.ref.exports[0][1].uri, stored.ref.exports[0][1].sha256)
    graph = load_runtime("onnx", data, threads=1)
    assert isinstance(network, NormalizedInput)
    unnormalised = predict_proba(network.network, pixels(spec, 6))
    assert not compare(unnormalised, graph.predict_proba(pixels(spec, 6))).agrees


def test_training_builds_the_configured_architecture_and_exports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMLOOP_MODEL_ARCHITECTURE", "mobilenet_v3_small")
    policy = SamplingPolicy(recent_examples=40, older_per_class=0, min_train_examples=10)
    settings = TrainingSettings(
        policy=policy,
        hyperparameters=Hyperparameters(epochs=1, batch_size=16),
        var_dir=tmp_path,
        lease_s=600,  # an export on a busy two-core machine can take longer than 30 s
        torch_threads=1,
    )
    pub = FakePublisher()
    store = ArtifactStore(tmp_path / "artifacts")
    trainer = Trainer(
        settings,
        load_examples=lambda: table_of(render_examples(40, seed=4)),
        store=store,
        leases=MemoryLeases(),
        registry=MemoryRegistry(),
        publisher=pub,
        owner="w1",
        code_version="test",
        sleep=lambda s: None,
    )
    assert trainer.handle(request()).status == "trained"
    (trained,) = pub.of(Topics.MODELS_TRAINED)
    assert isinstance(trained, ModelTrained) and set(trained.exports) == {"onnx"}
    _model, spec = load_model(store, trained.artifact_uri, trained.sha256)
    assert spec.architecture == "mobilenet_v3_small" and spec.input_normalization == "imagenet"
    assert (spec.image_height, spec.image_width) == (64, 64)
