"""Each tested torchvision architecture, trained from examples and exported to ONNX, is
served through Ray Serve from its artifact alone: the stream's predictions come from its ONNX
graph, and ``POST /predict`` of the same frame gives the same answer (within 1e-4). One Ray
instance serves the three in turn, as the registry swaps the champion."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from services.registry.state import RegistryState
from services.training.settings import Hyperparameters
from services.training.trainer import fit
from shared.events import ExportRef, ModelLifecycle, ModelTrained
from shared.images import encode_image
from shared.model import ModelSpec, build_model, example_pixels, predict_proba
from shared.redis_registry import RedisRegistry
from shared.redis_store import connect
from shared.runtimes import EXPORT_KIND, EXPORT_SUFFIX, compare, export_model, load_runtime
from shared.settings import KafkaSettings, RedisSettings
from tests.conftest import provision_prefixed
from tests.integration.helpers import free_port, wait_for
from tests.integration.test_serving import TOPICS, World, decoded
from tests.synthetic import CLASSES, render_examples

pytestmark = pytest.mark.timeout(600)

ARCHITECTURES = ("resnet18", "mobilenet_v3_small", "efficientnet_b0")


def train_and_export(world: World, architecture: str, seed: int) -> tuple[ModelTrained, nn.Module]:
    """One epoch on 160 examples, the ONNX export checked against eager and stored beside
    the weights, as training stores them."""
    spec = ModelSpec.for_architecture(architecture, CLASSES, image_height=64, image_width=64)
    examples = render_examples(160, seed=seed)
    pixels = np.stack([example_pixels(e.pixels_b64, 64, 64, 3) for e in examples])
    labels = np.asarray([CLASSES.index(e.label) for e in examples])
    result = fit(
        spec, pixels, labels, Hyperparameters(epochs=1), seed=seed, time_budget_s=120, threads=2
    )
    weights = world.store.put_weights(result.state_dict, spec.to_metadata({"seed": str(seed)}))
    model = build_model(spec)
    model.load_state_dict(result.state_dict)
    model.eval()
    onnx = export_model(model, spec, "onnx")
    onnx_probs = load_runtime("onnx", onnx, 2).predict_proba(pixels[:16])
    agreement = compare(predict_proba(model, pixels[:16]), onnx_probs)
    assert agreement.agrees, (architecture, agreement)
    stored = world.store.put_bytes(onnx, EXPORT_KIND, EXPORT_SUFFIX["onnx"])
    trained = world.trained(weights.uri, weights.sha256, weights.sha256[:12])
    export = ExportRef(uri=stored.uri, sha256=stored.sha256)
    return trained.model_copy(update={"exports": {"onnx": export}}), model


def test_each_architecture_serves_the_stream_and_post_predict_agrees(
    kafka_settings: KafkaSettings, prefix: str, tmp_path: Path
) -> None:
    provision_prefixed(kafka_settings, prefix, TOPICS)
    world = World(prefix, tmp_path)
    built = {a: train_and_export(world, a, seed=i + 1) for i, a in enumerate(ARCHITECTURES)}
    models = {a: t for a, (t, _) in built.items()}
    networks = {a: n for a, (_, n) in built.items()}
    assert len({t.model_version for t in models.values()}) == len(ARCHITECTURES)

    state = RegistryState(world.model)
    registry = RedisRegistry(connect(RedisSettings()))

    def make_champion(trained: ModelTrained) -> None:
        world.register(trained)
        for ev in (
            ModelLifecycle(
                model_name=world.model,
                action="registered",
                model_version=trained.model_version,
                details=trained.model_dump(mode="json"),
            ),
            ModelLifecycle(
                model_name=world.model,
                action="alias_set",
                alias="champion",
                model_version=trained.model_version,
            ),
        ):
            state.apply(ev)
        # POST /predict reads the champion from the registry's read model.
        registry.replace(state.view())

    port = free_port()
    make_champion(models[ARCHITECTURES[0]])
    proc = world.serving(
        "ray", STREAMLOOP_SERVING_HTTP_PORT=str(port), STREAMLOOP_SERVING_MAX_REPLICAS="1"
    )
    try:
        sent = 0
        for i, architecture in enumerate(ARCHITECTURES):
            trained = models[architecture]
            if i:
                make_champion(trained)

            def adopted(n: int = i + 1) -> bool:
                return sum('"champion adopted"' in ln for ln in proc.lines) >= n or not proc.alive()

            wait_for(adopted, 120, what=f"{architecture} adopted")
            assert proc.alive()
            frames = world.frames(40, seed=30 + i)
            world.send(frames)
            sent += len(frames)
            ours = {f.frame_id for f in frames}
            preds = [
                p
                for p in decoded(world.predictions(sent, timeout_s=180, alive=proc.alive))
                if p.frame_id in ours
            ]
            assert len(preds) == len(frames)
            assert {p.model_version for p in preds} == {trained.model_version}, architecture
            by_id = {p.frame_id: p for p in preds}
            # What the stream served is this architecture's trained network.
            local = predict_proba(
                networks[architecture],
                np.stack([np.frombuffer(f.pixels, np.uint8).reshape(64, 64, 3) for f in frames]),
            )
            for f, row in zip(frames, local, strict=True):
                got = by_id[f.frame_id].probabilities
                assert [got[c] for c in CLASSES] == pytest.approx(row.tolist(), abs=1e-4)
            for f in frames[:5]:
                png = encode_image(np.frombuffer(f.pixels, np.uint8).reshape(64, 64, 3))
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/predict",
                    data=png,
                    headers={"Content-Type": "image/png"},
                )
                with urllib.request.urlopen(req, timeout=30) as resp:
                    answer = json.loads(resp.read())
                assert answer["model_version"] == trained.model_version
                streamed = by_id[f.frame_id]
                assert answer["predicted_class"] == streamed.predicted_class, architecture
                for cls, p in streamed.probabilities.items():
                    assert answer["probabilities"][cls] == pytest.approx(p, abs=1e-4)
    finally:
        for key in registry._redis.scan_iter(f"streamloop:registry:{world.model}:*"):
            registry._redis.delete(key)
        proc.p.send_signal(signal.SIGTERM)
        try:
            proc.p.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        world.producer.close()
