"""Serving against the real broker: every frame predicted once, swaps between batches, a
refused artifact, the challenger in shadow, a SIGKILLed ingress, and Ray Serve with its
HTTP endpoint answering like the stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.training.settings import Hyperparameters
from services.training.trainer import fit
from shared.artifacts import ArtifactStore
from shared.bus import EventProducer
from shared.events import (
    Alert,
    FrameValid,
    ModelLifecycle,
    ModelTrained,
    Prediction,
    decode,
)
from shared.images import encode_image
from shared.model import ModelSpec, example_pixels
from shared.registry import lifecycle_key
from shared.settings import KafkaSettings
from shared.topics import Topics
from tests.conftest import provision_prefixed
from tests.integration.helpers import Proc, free_port, read_all, wait_for
from tests.synthetic import CLASSES, render_examples, trained_event

pytestmark = pytest.mark.timeout(400)

SPEC = ModelSpec(classes=CLASSES, image_height=64, image_width=64)
TOPICS = [
    Topics.FRAMES_VALID,
    Topics.PREDICTIONS,
    Topics.PREDICTIONS_SHADOW,
    Topics.MODELS_LIFECYCLE,
    Topics.ALERTS,
    Topics.EVENTS_DLQ,
]


class World:
    """Topics of this test, an artifact store, and a way to publish what the registry would."""

    def __init__(self, prefix: str, root: Path) -> None:
        self.prefix = prefix
        self.kafka = KafkaSettings(topic_prefix=prefix)
        self.store = ArtifactStore(root / "artifacts")
        self.root = root
        self.model = f"m-{uuid.uuid4().hex[:6]}"
        self.producer = EventProducer(self.kafka)

    def train(self, seed: int, epochs: int = 1) -> ModelTrained:
        examples = render_examples(160, seed=seed)
        pixels = np.stack([example_pixels(e.pixels_b64, 64, 64, 3) for e in examples])
        labels = np.asarray([CLASSES.index(e.label) for e in examples])
        result = fit(
            SPEC,
            pixels,
            labels,
            Hyperparameters(epochs=epochs),
            seed=seed,
            time_budget_s=60,
            threads=2,
        )
        ref = self.store.put_weights(result.state_dict, SPEC.to_metadata({"seed": str(seed)}))
        return self.trained(ref.uri, ref.sha256, ref.sha256[:12])

    def trained(self, uri: str, sha256: str, version: str) -> ModelTrained:
        return trained_event(self.model, version, uri, sha256, size=160)

    def lifecycle(self, action: str, version: str | None, **kw: Any) -> None:
        ev = ModelLifecycle(model_name=self.model, action=action, model_version=version, **kw)  # type: ignore[arg-type]
        self.producer.publish(Topics.MODELS_LIFECYCLE, ev, key=lifecycle_key(ev))
        self.producer.flush()

    def register(self, trained: ModelTrained, alias: str = "champion") -> None:
        self.lifecycle("registered", trained.model_version, details=trained.model_dump(mode="json"))
        self.lifecycle("alias_set", trained.model_version, alias=alias)

    def frames(self, n: int, seed: int) -> list[FrameValid]:
        out = []
        for e in render_examples(n, seed=seed, prefix=f"fr{uuid.uuid4().hex[:4]}"):
            now = datetime.now(UTC)
            out.append(
                FrameValid(
                    frame_id=e.frame_id,
                    camera_id=e.camera_id,
                    captured_at=now,
                    ingested_at=now,
                    width=64,
                    height=64,
                    pixels_b64=e.pixels_b64,
                    content_sha256="0" * 64,
                    condition=e.condition,
                )
            )
        return out

    def send(self, frames: list[FrameValid]) -> None:
        for f in frames:
            self.producer.publish(Topics.FRAMES_VALID, f, key=f.camera_id)
        self.producer.flush()

    def predictions(
        self, expect: int, topic: str = Topics.PREDICTIONS, timeout_s: float = 60, alive: Any = None
    ) -> list[Any]:
        return read_all(self.kafka, self.prefix + topic, expect, timeout_s=timeout_s, alive=alive)

    def serving(self, backend: str = "local", **extra: str) -> Proc:
        proc = Proc(
            ["-m", "services.serving"],
            env={
                "STREAMLOOP_KAFKA_TOPIC_PREFIX": self.prefix,
                "STREAMLOOP_SERVING_PROVISION_TOPICS": "false",
                "STREAMLOOP_SERVING_MODEL_NAME": self.model,
                "STREAMLOOP_SERVING_GROUP_ID": f"{self.prefix}serving",
                "STREAMLOOP_SERVING_BACKEND": backend,
                "STREAMLOOP_ARTIFACTS_ROOT": str(self.root / "artifacts"),
                "STREAMLOOP_TELEMETRY_TRACES_DIR": str(self.root / "traces"),
                **extra,
            },
        )
        wait_for(
            lambda: any('"consumer started"' in ln for ln in proc.lines) or not proc.alive(),
            180,
            what="serving ready",
        )
        assert proc.alive()
        return proc


@pytest.fixture
def world(kafka_settings: KafkaSettings, prefix: str, tmp_path: Path) -> Iterator[World]:
    provision_prefixed(kafka_settings, prefix, TOPICS)
    w = World(prefix, tmp_path)
    yield w
    w.producer.close()


def decoded(records: list[Any]) -> list[Prediction]:
    return [decode(r.value, Prediction) for r in records]


def test_a_frames_trace_runs_from_its_publish_to_its_prediction(world: World) -> None:
    from shared.settings import TelemetrySettings
    from shared.telemetry import read_spans, setup_telemetry
    from streamloop.trace_view import select_trace

    v1 = world.train(1)
    world.register(v1)
    camera = setup_telemetry(
        "camera-test",
        TelemetrySettings(
            exporter="jsonl", traces_dir=world.root / "traces", frames_sample_ratio=1.0
        ),
        set_global=False,
    )
    traced = EventProducer(world.kafka, tracer=camera.tracer)
    proc = world.serving()
    try:
        frames = world.frames(20, seed=40)
        for f in frames:
            traced.publish(
                Topics.FRAMES_VALID,
                f,
                key=f.camera_id,
                attributes={"streamloop.frame_id": f.frame_id},
            )
        traced.flush()
        world.predictions(20, alive=proc.alive)
        camera.shutdown()

        def trace_of_first() -> list[Any] | None:
            spans = select_trace(read_spans(world.root / "traces"), frames[0].frame_id)
            return spans if {s["service"] for s in spans} >= {"camera-test", "serving"} else None

        spans = wait_for(trace_of_first, 90, what="the frame's trace to reach serving")
        # One trace: the prediction's publish continues the camera's, it does not start anew.
        # (select_trace also brings the batch traces that link to it; they are other traces.)
        root = next(s for s in spans if s["service"] == "camera-test")
        own = [s for s in spans if s["trace_id"] == root["trace_id"]]
        assert {s["service"] for s in own} >= {"camera-test", "serving"}, own
        names = [s["name"] for s in own]
        assert any(n.endswith("predictions publish") for n in names), names
    finally:
        traced.close()
        proc.kill()


def test_every_frame_is_predicted_once_across_a_swap_and_a_refused_artifact(world: World) -> None:
    v1, v2 = world.train(1), world.train(2)
    world.register(v1)
    proc = world.serving()
    try:
        first = world.frames(300, seed=10)
        world.send(first)
        world.predictions(300, alive=proc.alive)
        world.register(v2)  # the champion changes between two parts of the stream
        wait_for(
            lambda: sum('"champion adopted"' in ln for ln in proc.lines) >= 2 or not proc.alive(),
            60,
            what="v2 adopted",
        )
        second = world.frames(300, seed=11)
        world.send(second)
        preds = decoded(world.predictions(600, alive=proc.alive))
        ids = [p.frame_id for p in preds]
        assert sorted(ids) == sorted(f.frame_id for f in first + second)
        assert len(set(ids)) == 600
        assert {p.model_version for p in preds} == {v1.model_version, v2.model_version}
        assert all(
            p.model_version == v2.model_version
            for p in preds
            if p.frame_id in {f.frame_id for f in second}
        )
        one = preds[0]
        assert set(one.probabilities) == set(CLASSES)
        assert one.confidence == pytest.approx(max(one.probabilities.values()), abs=1e-5)
        assert one.latency_from_capture_ms >= 0 and not one.shadow

        # A champion whose bytes fail their sha256 is not loaded; v2 keeps serving, ops hear.
        bad = world.trained(v1.artifact_uri, "f" * 64, "badbadbadbad")
        world.register(bad)
        alerts = wait_for(
            lambda: [
                a
                for a in (
                    decode(r.value, Alert)
                    for r in read_all(world.kafka, world.prefix + Topics.ALERTS, 1, timeout_s=2)
                )
                if a.kind == "model_load_refused"
            ],
            60,
            what="an alert",
        )
        assert "badbadbadbad" in alerts[0].message and v2.model_version in alerts[0].message
        third = world.frames(100, seed=12)
        world.send(third)
        preds = decoded(world.predictions(700, alive=proc.alive))
        later = [p for p in preds if p.frame_id in {f.frame_id for f in third}]
        assert len(later) == 100 and {p.model_version for p in later} == {v2.model_version}

        # A challenger is served in shadow on the same frames, never on `predictions`. Serving
        # follows the registry on its own: send once it has the challenger loaded.
        world.register(v1, alias="challenger")
        wait_for(
            lambda: any('"challenger adopted"' in ln for ln in proc.lines) or not proc.alive(),
            60,
            what="the challenger adopted",
        )
        fourth = world.frames(50, seed=13)
        world.send(fourth)
        shadow = decoded(world.predictions(50, Topics.PREDICTIONS_SHADOW, alive=proc.alive))
        assert {p.frame_id for p in shadow} == {f.frame_id for f in fourth}
        assert all(p.shadow and p.model_version == v1.model_version for p in shadow)
        main = decoded(world.predictions(750, alive=proc.alive))
        assert len(main) == 750 and all(not p.shadow for p in main)
    finally:
        proc.kill()


def test_a_new_challenger_is_scored_at_once_on_the_frames_since_its_data_cut(
    world: World,
) -> None:
    v1, v2 = world.train(1), world.train(2)
    world.register(v1)
    proc = world.serving()
    try:
        before = world.frames(100, seed=50)
        world.send(before)
        world.predictions(100, alive=proc.alive)
        time.sleep(0.05)  # record timestamps are milliseconds: the cut falls between the two
        cut = datetime.now(UTC)
        since = world.frames(120, seed=51)
        world.send(since)
        world.predictions(220, alive=proc.alive)
        # The challenger's training examples were read at `cut`: the frames after it are
        # unseen by it, and it scores them as soon as it is adopted, no new frame needed.
        challenger = v2.model_copy(
            update={"dataset": v2.dataset.model_copy(update={"taken_at": cut})}
        )
        world.register(challenger, alias="challenger")
        wait_for(
            lambda: any('"shadow replay done"' in ln for ln in proc.lines) or not proc.alive(),
            60,
            what="the replay done",
        )
        shadow = decoded(world.predictions(10**6, Topics.PREDICTIONS_SHADOW, timeout_s=3))
        assert sorted(p.frame_id for p in shadow) == sorted(f.frame_id for f in since)
        assert all(p.shadow and p.model_version == v2.model_version for p in shadow)
        # Frames from here on are shadowed live, as before.
        after = world.frames(40, seed=52)
        world.send(after)
        shadow = decoded(world.predictions(160, Topics.PREDICTIONS_SHADOW, alive=proc.alive))
        assert sorted(p.frame_id for p in shadow) == sorted(f.frame_id for f in since + after)
        assert len(decoded(world.predictions(260, alive=proc.alive))) == 260
    finally:
        proc.kill()


def test_a_killed_transactional_ingress_loses_no_frame_and_repeats_none(world: World) -> None:
    v1 = world.train(1)
    world.register(v1)
    frames = world.frames(1500, seed=20)
    eos = {
        "STREAMLOOP_SERVING_MAX_POLL_RECORDS": "64",
        "STREAMLOOP_SERVING_TRANSACTIONS__ENABLED": "true",
    }
    proc = world.serving(**eos)
    world.send(frames)
    wait_for(
        lambda: len(world.predictions(10**6, timeout_s=1)) >= 300, 120, what="some predictions"
    )
    os.kill(proc.p.pid, signal.SIGKILL)
    proc.p.wait(10)
    proc = world.serving(**eos)
    try:
        wanted = {f.frame_id for f in frames}

        def all_predicted() -> list[Prediction] | None:
            got = decoded(world.predictions(10**6, timeout_s=2))
            return got if {x.frame_id for x in got} >= wanted else None

        preds = wait_for(all_predicted, 120, what="every frame predicted")
        # Read committed: the killed process's open transaction was aborted by its successor.
        extra = len(preds) - len({p.frame_id for p in preds})
        assert extra == 0, f"{extra} duplicates"
    finally:
        proc.kill()


def test_a_restart_after_two_promotions_and_a_rollback_serves_only_the_champion(
    world: World,
) -> None:
    v1, v2, v3 = world.train(1), world.train(2), world.train(3)
    world.register(v1)
    world.register(v2)
    world.register(v3)
    world.lifecycle("rolled_back", v2.model_version, alias="champion")
    proc = world.serving(STREAMLOOP_SERVING_MAX_POLL_RECORDS="32")
    os.kill(proc.p.pid, signal.SIGKILL)
    proc.p.wait(10)
    # Frames wait in the topic while serving is down: the first poll after the restart
    # brings a full batch at once, before the history is read.
    frames = world.frames(400, seed=30)
    world.send(frames)
    proc = world.serving(STREAMLOOP_SERVING_MAX_POLL_RECORDS="32")
    try:
        preds = decoded(world.predictions(400, timeout_s=120, alive=proc.alive))
        assert sorted(p.frame_id for p in preds) == sorted(f.frame_id for f in frames)
        assert {p.model_version for p in preds} == {v2.model_version}
        adopted = [ln for ln in proc.lines if '"champion adopted"' in ln]
        assert len(adopted) == 1 and v2.model_version in adopted[0]
    finally:
        proc.kill()


def test_ray_serve_predicts_the_stream_and_post_predict_agrees(world: World) -> None:
    v1 = world.train(1, epochs=2)
    world.register(v1)
    port = free_port()
    read_token = f"read-{uuid.uuid4().hex}"
    proc = world.serving(
        "ray",
        STREAMLOOP_SERVING_HTTP_PORT=str(port),
        STREAMLOOP_SERVING_MAX_REPLICAS="1",
        STREAMLOOP_SERVING_HTTP_AUTH__READ_TOKEN=read_token,
        STREAMLOOP_SERVING_HTTP_AUTH__MAX_BODY_BYTES="100000",
    )
    try:
        frames = world.frames(200, seed=30)
        world.send(frames)
        preds = decoded(world.predictions(200, timeout_s=120, alive=proc.alive))
        assert sorted(p.frame_id for p in preds) == sorted(f.frame_id for f in frames)
        assert {p.model_version for p in preds} == {v1.model_version}
        # The same frame as a PNG over HTTP gets the same class from the same champion.
        # (The HTTP path reads the champion from the registry's read model.)
        from services.registry.state import RegistryState
        from shared.redis_registry import RedisRegistry
        from shared.redis_store import connect
        from shared.settings import RedisSettings

        state = RegistryState(world.model)
        for ev in (
            ModelLifecycle(
                model_name=world.model,
                action="registered",
                model_version=v1.model_version,
                details=v1.model_dump(mode="json"),
            ),
            ModelLifecycle(
                model_name=world.model,
                action="alias_set",
                alias="champion",
                model_version=v1.model_version,
            ),
        ):
            state.apply(ev)
        registry = RedisRegistry(connect(RedisSettings()))
        registry.replace(state.view())
        try:
            url = f"http://127.0.0.1:{port}/predict"
            auth = {"Authorization": f"Bearer {read_token}"}
            # POST /predict is a read: the read token is needed once one is set, and a body
            # over the configured limit is refused.
            for headers, data, expected in (
                ({}, b"png", 401),
                ({"Authorization": "Bearer wrong"}, b"png", 403),
                (auth, b"x" * 100_001, 413),
            ):
                req = urllib.request.Request(url, data=data, headers=headers)
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(req, timeout=30)
                assert refused.value.code == expected
            by_id = {p.frame_id: p for p in preds}
            for f in frames[:10]:
                png = encode_image(
                    np.frombuffer(f.pixels, np.uint8).reshape(64, 64, 3), "image/png"
                )
                req = urllib.request.Request(
                    url, data=png, headers={"Content-Type": "image/png", **auth}
                )
                with urllib.request.urlopen(req, timeout=30) as resp:
                    answer = json.loads(resp.read())
                assert answer["model_version"] == v1.model_version
                assert answer["predicted_class"] == by_id[f.frame_id].predicted_class
                assert answer["confidence"] == pytest.approx(by_id[f.frame_id].confidence, abs=1e-4)
            assert read_token not in "\n".join(proc.lines)
        finally:
            for key in registry._redis.scan_iter(f"streamloop:registry:{world.model}:*"):
                registry._redis.delete(key)
    finally:
        proc.p.send_signal(signal.SIGTERM)
        try:
            proc.p.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
