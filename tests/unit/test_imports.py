"""Imported weights and starting weights: what a file must be to become a model, what the
registry's API and training do with it, and that fine-tuning from one is worth it."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.models
from pydantic import SecretStr
from safetensors.torch import save as st_save

from services.registry.http import ImportTarget, RegistryApi, serve_api
from services.registry.state import RegistryState
from services.training.service import StartingWeightsError, Trainer
from services.training.settings import Hyperparameters, SamplingPolicy, TrainingSettings
from services.training.trainer import fit
from shared.artifacts import ArtifactStore, FormatError
from shared.auth import OperatorApiAuthSettings
from shared.commands import import_request
from shared.datasets import ExampleTable
from shared.events import Event, ModelTrained, RetrainRequest
from shared.imports import (
    ImportRefusedError,
    convert_checkpoint,
    head_keys,
    import_weights,
    parse_input_size,
    spec_for_import,
    starting_state,
)
from shared.model import ModelSpec, build_model, load_model, predict_proba
from shared.ports import MemoryLeases
from shared.registry import DEFAULT_MODEL_NAME, MemoryRegistry
from shared.settings import TaskSettings
from shared.topics import Topics
from tests.synthetic import CLASSES, render_examples, table_of

MODEL = DEFAULT_MODEL_NAME
OP = "op-" + "y" * 29
CNN = "streamloop-cnn-v1"


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Event, str | None]] = []

    def publish(self, topic: str, event: Event, *, key: str | None = None) -> object:
        self.sent.append((topic, event, key))
        return None

    def flush(self, timeout_s: float | None = None) -> None:
        pass

    def of(self, topic: str) -> list[Any]:
        return [e for t, e, _ in self.sent if t == topic]


def resnet_file(classes: int = 4, seed: int = 1) -> tuple[bytes, torch.nn.Module]:
    """A torchvision resnet18 state dict as safetensors, keys as torchvision names them."""
    torch.manual_seed(seed)
    network = torchvision.models.resnet18(weights=None, num_classes=classes).eval()
    return st_save({k: v.contiguous() for k, v in network.state_dict().items()}), network


# --- the file ------------------------------------------------------------------------


def test_torchvision_weights_become_an_artifact_that_answers_like_the_original(
    tmp_path: Path,
) -> None:
    data, network = resnet_file()
    spec = spec_for_import("resnet18", ",".join(CLASSES), "64x64", TaskSettings())
    store = ArtifactStore(tmp_path)
    imported = import_weights(data, "/tmp/x/r18.safetensors", spec, store, actor="ann", note="hi")
    assert imported.file_name == "r18.safetensors"
    assert imported.actor == "ann" and imported.note == "hi"
    model, loaded_spec = load_model(store, imported.artifact_uri, imported.artifact_sha256)
    assert loaded_spec == spec
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = torch.softmax(network((x - mean) / std), dim=1).numpy()
    assert np.abs(predict_proba(model, pixels) - expected).max() < 1e-5
    # The same file again is the same artifact: the version is the content.
    again = import_weights(data, "r18.safetensors", spec, store, actor="bob")
    assert again.artifact_sha256 == imported.artifact_sha256


def test_prefixes_half_precision_and_missing_counters_are_accepted(tmp_path: Path) -> None:
    _, network = resnet_file()
    state = {
        f"module.{k}": v.half() if v.is_floating_point() else v
        for k, v in network.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    spec = spec_for_import("resnet18", "a,b,c,d", None, TaskSettings())
    imported = import_weights(
        st_save(state), "ddp.safetensors", spec, ArtifactStore(tmp_path), actor="a"
    )
    loaded = ArtifactStore(tmp_path).load_weights(imported.artifact_uri, imported.artifact_sha256)
    assert loaded.tensors["network.fc.weight"].dtype == torch.float32


def test_a_pickle_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    _, network = resnet_file()
    pickled = tmp_path / "model.pt"
    torch.save(network.state_dict(), pickled)
    spec = spec_for_import("resnet18", "a,b,c,d", None, TaskSettings())
    with pytest.raises(FormatError, match="pickled checkpoints are refused"):
        import_weights(pickled.read_bytes(), "model.pt", spec, ArtifactStore(tmp_path), actor="a")


def test_tensors_of_another_network_are_refused_with_what_differs(tmp_path: Path) -> None:
    data, _ = resnet_file(classes=10)
    store = ArtifactStore(tmp_path / "store")
    spec = spec_for_import("resnet18", "a,b,c,d", None, TaskSettings())
    with pytest.raises(ImportRefusedError, match=r"wrong shape: network\.fc\.weight \(10, 512\)"):
        import_weights(data, "r.safetensors", spec, store, actor="a")
    other = spec_for_import("mobilenet_v3_small", "a,b,c,d", None, TaskSettings())
    with pytest.raises(ImportRefusedError, match=r"missing: .* and \d+ more; unexpected"):
        import_weights(data, "r.safetensors", other, store, actor="a")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.safetensors"))


@pytest.mark.parametrize(
    ("architecture", "classes", "size", "error"),
    [
        ("vgg11", "a,b", None, "unknown architecture 'vgg11'"),
        ("resnet18", "a", None, "at least two distinct classes"),
        ("resnet18", "a,a", None, "at least two distinct classes"),
        ("resnet18", "a,b", "64", "WIDTHxHEIGHT"),
        ("resnet18", "a,b", "16x16", "at least 32 pixels"),
        (CNN, "a,b", "60x60", "multiples of 8"),
    ],
)
def test_a_spec_that_cannot_be_is_refused(
    architecture: str, classes: str, size: str | None, error: str
) -> None:
    with pytest.raises(ImportRefusedError, match=error):
        spec_for_import(architecture, classes, size, TaskSettings())


def test_input_sizes_are_width_by_height() -> None:
    assert parse_input_size("96x48") == (48, 96)
    assert parse_input_size(" 64X32 ") == (32, 64)


def test_a_checkpoint_converts_weights_only_and_a_pickled_object_does_not(tmp_path: Path) -> None:
    _, network = resnet_file()
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "model_state_dict": network.state_dict()}, checkpoint)
    out = tmp_path / "ckpt.safetensors"
    assert convert_checkpoint(checkpoint, out) == len(network.state_dict())
    spec = spec_for_import("resnet18", "a,b,c,d", None, TaskSettings())
    import_weights(out.read_bytes(), out.name, spec, ArtifactStore(tmp_path / "s"), actor="a")

    evil = tmp_path / "evil.pth"
    torch.save({"weights": Path("/etc/passwd")}, evil)  # an arbitrary object: needs unpickling
    with pytest.raises(ImportRefusedError, match="weights-only"):
        convert_checkpoint(evil, tmp_path / "evil.safetensors")
    assert not (tmp_path / "evil.safetensors").exists()


# --- starting weights ----------------------------------------------------------------


def test_the_head_is_the_last_linear_layer_and_is_reset_when_classes_differ() -> None:
    four = ModelSpec.for_architecture("mobilenet_v3_small", CLASSES, 64, 64)
    assert head_keys(build_model(four)) == {
        "network.classifier.3.weight",
        "network.classifier.3.bias",
    }
    torch.manual_seed(0)
    source = build_model(four).state_dict()
    torch.manual_seed(1)
    target = build_model(ModelSpec.for_architecture("mobilenet_v3_small", ["x", "y"], 64, 64))
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    state = starting_state(target, source, keep_head=False)
    assert torch.equal(state["network.classifier.3.weight"], fresh["network.classifier.3.weight"])
    assert torch.equal(state["network.features.0.0.weight"], source["network.features.0.0.weight"])
    with pytest.raises(ValueError, match="not this network"):
        starting_state(target, source, keep_head=True)  # a 4-class head cannot be kept for 2


# --- training and the registry API -----------------------------------------------------


CONDITIONS = ("day", "fog", "rain", "night")


@pytest.fixture(scope="module")
def elsewhere_and_here() -> tuple[ExampleTable, ExampleTable]:
    """Frames of every condition from 4 cameras (where imported weights were trained), and
    from 8 cameras, half of them new (the stream's)."""
    return tuple(  # type: ignore[return-value]
        table_of(
            render_examples(
                n, seed=seed, condition=lambda i: CONDITIONS[i % 4], cameras=cams, prefix=p
            )
        )
        for n, seed, cams, p in ((700, 31, 4, "s"), (600, 32, 8, "t"))
    )


def trainer_for(
    tmp_path: Path, table: ExampleTable, registry: MemoryRegistry, **kw: Any
) -> tuple[Trainer, FakePublisher, ArtifactStore]:
    publisher = FakePublisher()
    store = ArtifactStore(tmp_path / "artifacts")
    settings = TrainingSettings(
        policy=SamplingPolicy(recent_examples=1000, older_per_class=0, min_train_examples=50),
        hyperparameters=kw.pop("hp", Hyperparameters(epochs=2, batch_size=32)),
        var_dir=tmp_path,
        exports=kw.pop("exports", ()),
        **kw,
    )
    trainer = Trainer(
        settings,
        load_examples=lambda: table,
        store=store,
        leases=MemoryLeases(),
        registry=registry,
        publisher=publisher,
        owner="w",
        code_version="test",
        sleep=lambda s: None,
    )
    return trainer, publisher, store


def registered(registry: MemoryRegistry, trained: ModelTrained) -> None:
    state = RegistryState(MODEL)
    for offset, event in enumerate(state.on_trained(trained)):
        state.apply(event, offset)
    registry.replace(state.view())


def test_an_import_request_registers_the_weights_untrained_with_their_lineage(
    tmp_path: Path, elsewhere_and_here: tuple[ExampleTable, ExampleTable]
) -> None:
    day, _ = elsewhere_and_here
    registry = MemoryRegistry()
    trainer, publisher, store = trainer_for(tmp_path, day, registry)
    spec = spec_for_import(CNN, ",".join(CLASSES), None, TaskSettings())
    torch.manual_seed(5)
    weights = st_save(build_model(spec).state_dict())
    imported = import_weights(weights, "cnn.safetensors", spec, store, actor="ann@cli", note="n")
    outcome = trainer.handle(import_request(MODEL, imported))
    assert outcome.status == "trained"
    [event] = publisher.of(Topics.MODELS_TRAINED)
    assert event.model_version == imported.artifact_sha256[:12]
    assert event.sha256 == imported.artifact_sha256
    assert event.init == "imported" and event.imported == imported
    assert event.trigger == "import" and "cnn.safetensors by ann@cli: n" in event.reason
    assert event.metrics["epochs_completed"] == 0.0
    assert 0.0 <= event.metrics["holdout_accuracy"] <= 1.0
    assert event.dataset.holdout_size > 0  # evaluation scores it on this snapshot's holdout
    assert not publisher.of(Topics.TRAINING_PROGRESS)
    # Registered, the lineage says where the weights came from.
    registered(registry, event)
    view = registry.get_version(MODEL, event.model_version)
    assert view is not None and view.init == "imported" and view.imported == imported


def test_an_import_without_examples_registers_without_exports_for_the_gate_to_refuse(
    tmp_path: Path,
) -> None:
    empty = ExampleTable([], np.zeros((0, 64, 64, 3), np.uint8), {})
    trainer, publisher, store = trainer_for(tmp_path, empty, MemoryRegistry(), exports=("onnx",))
    spec = spec_for_import(CNN, ",".join(CLASSES), None, TaskSettings())
    weights = st_save(build_model(spec).state_dict())
    imported = import_weights(weights, "w.safetensors", spec, store, actor="a")
    assert trainer.handle(import_request(MODEL, imported)).status == "trained"
    [event] = publisher.of(Topics.MODELS_TRAINED)
    assert event.exports == {} and event.dataset.holdout_size == 0


def test_fine_tuning_from_imported_weights_reaches_scratch_accuracy_in_fewer_epochs(
    tmp_path: Path, elsewhere_and_here: tuple[ExampleTable, ExampleTable]
) -> None:
    """Weights trained elsewhere on 700 frames, imported, then fine-tuned by training
    (``init=imported:VERSION``) on 200 frames of the stream for 2 epochs, against the same
    network trained from scratch on them for 8: scored on 400 other frames of the stream."""
    there, here = elsewhere_and_here
    spec = ModelSpec.for_architecture(CNN, CLASSES, 64, 64)
    labels = np.asarray([CLASSES.index(r.label) for r in there.records])
    elsewhere = fit(
        spec, there.pixels, labels, Hyperparameters(epochs=6), seed=3, time_budget_s=600, threads=2
    )
    registry = MemoryRegistry()
    store = ArtifactStore(tmp_path / "artifacts")
    imported = import_weights(
        st_save(elsewhere.state_dict), "there.safetensors", spec, store, actor="a"
    )
    few = ExampleTable(here.records[:200], here.pixels[:200], {0: 200})
    importer, publisher, _ = trainer_for(tmp_path, few, registry)
    importer.handle(import_request(MODEL, imported))
    registered(registry, publisher.of(Topics.MODELS_TRAINED)[0])
    version = imported.artifact_sha256[:12]

    test_pixels = here.pixels[200:]
    truth = np.asarray([CLASSES.index(r.label) for r in here.records[200:]])
    accuracy = {}
    for init, epochs in (("scratch", 8), (f"imported:{version}", 2)):
        trainer, pub, _ = trainer_for(
            tmp_path, few, registry, init=init, hp=Hyperparameters(epochs=epochs), warm_epochs=None
        )
        request = RetrainRequest(
            model_name=MODEL, idempotency_key=init, reason="t", trigger="operator"
        )
        assert trainer.handle(request).status == "trained"
        [event] = pub.of(Topics.MODELS_TRAINED)
        assert event.init == init
        model, _ = load_model(store, event.artifact_uri, event.sha256)
        accuracy[init] = float((predict_proba(model, test_pixels).argmax(1) == truth).mean())
    tuned, scratch = accuracy[f"imported:{version}"], accuracy["scratch"]
    print(f"400 frames: scratch, 8 epochs {scratch:.3f}; from imported, 2 epochs {tuned:.3f}")
    assert tuned >= scratch


def test_starting_weights_of_another_architecture_or_an_unknown_version_are_refused(
    tmp_path: Path, elsewhere_and_here: tuple[ExampleTable, ExampleTable]
) -> None:
    day, _ = elsewhere_and_here
    registry = MemoryRegistry()
    trainer, _, _ = trainer_for(tmp_path, day, registry, init="imported:abc")
    request = RetrainRequest(model_name=MODEL, idempotency_key="k", reason="t", trigger="operator")
    with pytest.raises(StartingWeightsError, match="has no version abc"):
        trainer.handle(request)
    data, _ = resnet_file()
    store = ArtifactStore(tmp_path / "artifacts")
    spec = spec_for_import("resnet18", ",".join(CLASSES), None, TaskSettings())
    imported = import_weights(data, "r.safetensors", spec, store, actor="a")
    importer, pub, _ = trainer_for(tmp_path, day, registry)
    importer.handle(import_request(MODEL, imported))
    registered(registry, pub.of(Topics.MODELS_TRAINED)[0])
    version = imported.artifact_sha256[:12]
    cnn, _, _ = trainer_for(tmp_path, day, registry, init=f"imported:{version}")
    with pytest.raises(StartingWeightsError, match="is a resnet18, this service trains"):
        cnn.handle(request)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[RegistryApi, FakePublisher]]:
    publisher = FakePublisher()
    server = serve_api(
        MemoryRegistry(),
        MODEL,
        auth=OperatorApiAuthSettings(operator_token=SecretStr(OP)),
        publisher=publisher,  # type: ignore[arg-type]
        imports=ImportTarget(tmp_path, TaskSettings(), max_bytes=100_000_000),
    )
    yield server, publisher
    server.close()


def post(port: int, path: str, data: bytes, token: str | None = OP) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/octet-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_the_registry_api_imports_with_the_operator_token_only(
    api: tuple[RegistryApi, FakePublisher], tmp_path: Path
) -> None:
    server, publisher = api
    data, network = resnet_file()
    path = "/models/import?architecture=resnet18&classes=car,truck,bus,motorcycle&note=from%20lab"
    status, body = post(server.port, path + "&file_name=r18.safetensors", data)
    assert status == 202, body
    [(topic, request, key)] = publisher.sent
    assert topic == Topics.RETRAIN_REQUESTS and key == MODEL
    assert isinstance(request, RetrainRequest) and request.imported is not None
    assert body["version"] == request.imported.artifact_sha256[:12]
    assert body["idempotency_key"] == request.idempotency_key == f"import:{body['version']}"
    assert request.imported.actor == "operator@http" and request.imported.note == "from lab"
    assert request.imported.file_name == "r18.safetensors"
    assert ArtifactStore(tmp_path).load_weights(
        request.imported.artifact_uri, request.imported.artifact_sha256
    )

    # Refused before the body is read (a small one, so the client gets to read the answer).
    assert post(server.port, path, b"x" * 100, token=None)[0] == 401
    assert post(server.port, path, b"x" * 100, token="wrong")[0] == 403
    status, body = post(server.port, "/models/import?classes=a,b", b"x" * 100)
    assert (status, body["error"]) == (400, "query parameter architecture is required")
    pickled = tmp_path / "m.pt"
    torch.save(network.state_dict(), pickled)
    status, body = post(server.port, path, pickled.read_bytes())
    assert status == 422 and "pickled checkpoints are refused" in body["error"]
    status, body = post(server.port, path.replace("car,truck,", ""), data)
    assert status == 422 and "wrong shape" in body["error"]
    assert len(publisher.sent) == 1
