"""Serving logic without Ray or Kafka: the alias fold, batches, swaps, refusals, shadow."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from starlette.requests import Request

from services.serving.core import (
    AliasTracker,
    Done,
    ModelRef,
    ServingCore,
    frame_pixels,
    to_predictions,
)
from services.serving.ingress import Ingress
from shared.artifacts import ArtifactStore, IntegrityError
from shared.auth import HttpAuthSettings
from shared.events import (
    Alert,
    Event,
    FrameRaw,
    FrameValid,
    ModelLifecycle,
    Prediction,
)
from shared.fitting import FitPolicy
from shared.images import encode_image
from shared.model import ModelSpec, build_model
from shared.ports import Message
from shared.topics import Topics
from tests.synthetic import trained_event

CLASSES = ("car", "truck", "bus", "motorcycle")
SPEC = ModelSpec(classes=CLASSES, image_height=64, image_width=64)
MODEL = "m"


def store_model(store: ArtifactStore, seed: int) -> ModelRef:
    torch.manual_seed(seed)
    ref = store.put_weights(build_model(SPEC).state_dict(), SPEC.to_metadata({"seed": str(seed)}))
    return ModelRef(MODEL, ref.sha256[:12], ref.uri, ref.sha256)


def registered(ref: ModelRef) -> ModelLifecycle:
    trained = trained_event(MODEL, ref.version, ref.uri, ref.sha256)
    return ModelLifecycle(
        model_name=MODEL,
        action="registered",
        model_version=ref.version,
        details=trained.model_dump(mode="json"),
    )


def alias(version: str | None, name: str = "champion") -> ModelLifecycle:
    return ModelLifecycle(model_name=MODEL, action="alias_set", alias=name, model_version=version)  # type: ignore[arg-type]


def frame(i: int, size: int = 64, ingested_at: datetime | None = None) -> Message[FrameValid]:
    now = ingested_at or datetime.now(UTC)
    px = np.full((size, size, 3), i % 255, dtype=np.uint8)
    ev = FrameValid(
        frame_id=f"f{i}",
        camera_id=f"cam-{i % 2}",
        captured_at=now - timedelta(milliseconds=50),
        ingested_at=now,
        width=size,
        height=size,
        pixels=px.tobytes(),
        content_sha256="0" * 64,
    )
    return Message(ev, Topics.FRAMES_VALID, 0, i, ev.camera_id, [], 0)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Event]] = []

    def publish(
        self,
        topic: str,
        event: Event,
        *,
        key: str | None = None,
        context: Any = None,
        attributes: Mapping[str, str] | None = None,
    ) -> object:
        self.sent.append((topic, event))
        return None

    def flush(self, timeout_s: float | None = None) -> None:
        pass

    def of(self, topic: str) -> list[Any]:
        return [e for t, e in self.sent if t == topic]


class CountingBackend:
    def __init__(self, core: ServingCore) -> None:
        self.core = core
        self.calls: list[tuple[str, int]] = []

    def submit(self, ref: ModelRef, pixels: npt.NDArray[np.uint8]) -> Done:
        self.calls.append((ref.version, len(pixels)))
        return self.core.submit(ref, pixels)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Ingress, FakeProducer, CountingBackend, ArtifactStore]:
    store = ArtifactStore(tmp_path)
    core = ServingCore(store)
    backend = CountingBackend(core)
    producer = FakeProducer()
    ingress = Ingress(MODEL, backend=backend, verifier=core, producer=producer, call_size=8)
    ingress.caught_up()  # an empty registry read to its end: what follows is live
    return (
        ingress,
        producer,
        backend,
        store,
    )


def test_the_tracker_follows_aliases_and_rollbacks(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    a, b = store_model(store, 1), store_model(store, 2)
    t = AliasTracker(MODEL)
    assert not t.apply(registered(a)) and t.champion is None
    assert t.apply(alias(a.version)) and t.champion == a
    t.apply(registered(b))
    assert t.apply(alias(b.version, "challenger")) and t.challenger == b
    assert t.apply(alias(b.version)) and t.champion == b and t.challenger is None
    rollback = ModelLifecycle(
        model_name=MODEL, action="rolled_back", alias="champion", model_version=a.version
    )
    assert t.apply(rollback) and t.champion == a
    other = ModelLifecycle(
        model_name="other", action="alias_set", alias="champion", model_version="x"
    )
    assert not t.apply(other)


def test_a_batch_is_split_into_calls_with_one_prediction_per_frame(setup: Any) -> None:
    ingress, producer, backend, store = setup
    a = store_model(store, 1)
    ingress.on_lifecycle(registered(a))
    ingress.on_lifecycle(alias(a.version))
    assert ingress.handle([frame(i) for i in range(10)]) == []
    assert backend.calls == [(a.version, 8), (a.version, 2)]  # call_size 8
    preds: list[Prediction] = producer.of(Topics.PREDICTIONS)
    assert [p.frame_id for p in preds] == [f"f{i}" for i in range(10)]
    assert all(p.model_version == a.version and p.latency_from_capture_ms >= 50 for p in preds)
    assert producer.of(Topics.PREDICTIONS_SHADOW) == []


def test_swaps_happen_between_batches_and_the_challenger_shadows(setup: Any) -> None:
    ingress, producer, backend, store = setup
    a, b = store_model(store, 1), store_model(store, 2)
    for ev in (registered(a), alias(a.version), registered(b), alias(b.version, "challenger")):
        ingress.on_lifecycle(ev)
    ingress.handle([frame(i) for i in range(4)])
    assert backend.calls == [(a.version, 4), (b.version, 4)]
    shadow = producer.of(Topics.PREDICTIONS_SHADOW)
    assert len(shadow) == 4 and all(p.shadow and p.model_version == b.version for p in shadow)
    ingress.on_lifecycle(alias(b.version))  # promoted: champion now, no challenger
    ingress.handle([frame(i) for i in range(4, 6)])
    assert backend.calls[-1] == (b.version, 2) and len(backend.calls) == 3
    assert [p.model_version for p in producer.of(Topics.PREDICTIONS)][-2:] == [b.version] * 2


def test_a_failing_challenger_never_holds_up_the_champions_predictions(setup: Any) -> None:
    ingress, producer, backend, store = setup
    a, b = store_model(store, 1), store_model(store, 2)
    for ev in (registered(a), alias(a.version), registered(b), alias(b.version, "challenger")):
        ingress.on_lifecycle(ev)

    class Broken:
        def result(self) -> Any:
            raise RuntimeError("challenger replica died")

    real = backend.submit
    backend.submit = lambda ref, px: Broken() if ref.version == b.version else real(ref, px)  # type: ignore[method-assign]
    assert ingress.handle([frame(i) for i in range(4)]) == []
    assert [p.model_version for p in producer.of(Topics.PREDICTIONS)] == [a.version] * 4
    assert producer.of(Topics.PREDICTIONS_SHADOW) == []


def test_a_champion_that_fails_verification_is_refused_and_the_old_one_serves(setup: Any) -> None:
    ingress, producer, backend, store = setup
    a = store_model(store, 1)
    ingress.on_lifecycle(registered(a))
    ingress.on_lifecycle(alias(a.version))
    forged = ModelRef(MODEL, "forged", a.uri, "f" * 64)
    ingress.on_lifecycle(registered(forged))
    ingress.on_lifecycle(alias("forged"))
    assert ingress.champion == a
    (alert,) = producer.of(Topics.ALERTS)
    assert isinstance(alert, Alert) and alert.kind == "model_load_refused"
    assert alert.details["reason"] == IntegrityError.reason and a.version in alert.message
    ingress.handle([frame(1)])
    assert backend.calls == [(a.version, 1)]


def test_frames_of_the_wrong_size_are_refused_the_rest_served(setup: Any) -> None:
    ingress, producer, _, store = setup
    a = store_model(store, 1)
    ingress.on_lifecycle(registered(a))
    ingress.on_lifecycle(alias(a.version))
    refused = ingress.handle([frame(1), frame(2, size=32), frame(3)])
    assert [(r.message.event.frame_id, r.reason) for r in refused] == [("f2", "wrong_size")]
    assert sorted(p.frame_id for p in producer.of(Topics.PREDICTIONS)) == ["f1", "f3"]


def test_frames_wait_for_a_first_champion(setup: Any) -> None:
    ingress, producer, _, store = setup
    a = store_model(store, 1)
    done = threading.Event()

    def serve() -> None:
        ingress.handle([frame(1)])
        done.set()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert not done.wait(0.3)
    ingress.on_lifecycle(registered(a))
    ingress.on_lifecycle(alias(a.version))
    assert done.wait(10)
    assert len(producer.of(Topics.PREDICTIONS)) == 1


def test_to_predictions_names_the_class_and_confidence() -> None:
    f = frame(1).event
    probs = np.asarray([[0.1, 0.2, 0.6, 0.1]], dtype=np.float32)
    ref = ModelRef(MODEL, "v", "u", "s")
    (p,) = to_predictions([f], probs, CLASSES, ref, served_at=f.ingested_at + timedelta(seconds=1))
    assert p.predicted_class == "bus" and p.confidence == pytest.approx(0.6)
    assert p.latency_from_ingest_ms == pytest.approx(1000.0)
    assert (p.source_width, p.source_height) == (None, None), "a frame from before sizes"


def test_a_prediction_carries_the_size_the_camera_published() -> None:
    f = frame(1).event.model_copy(update={"source_width": 1920, "source_height": 1080})
    probs = np.asarray([[0.1, 0.2, 0.6, 0.1]], dtype=np.float32)
    (p,) = to_predictions(
        [f], probs, CLASSES, ModelRef(MODEL, "v", "u", "s"), served_at=f.ingested_at
    )
    assert (p.source_width, p.source_height) == (1920, 1080)


class _Response:
    """A Serve response whose ``result`` returns ``value`` or raises ``error``."""

    def __init__(self, value: Any = None, error: Exception | None = None) -> None:
        self.value, self.error, self.timeouts = value, error, []

    def result(self, timeout_s: float) -> Any:
        self.timeouts.append(timeout_s)
        if self.error is not None:
            raise self.error
        return self.value


def test_a_replica_lost_under_a_call_is_a_dependency_failure_not_bad_input() -> None:
    from ray.exceptions import RayActorError

    from services.serving.ray_app import _RayCall
    from shared.errors import Unavailable, is_transient

    with pytest.raises(Unavailable, match="model replica lost") as caught:
        _RayCall(_Response(error=RayActorError()), timeout_s=7.0).result()
    # The consumer loop retries it without spending the batch's attempts.
    assert is_transient(caught.value)
    ok = _Response(value=np.ones((2, 4), dtype=np.float32))
    assert _RayCall(ok, timeout_s=7.0).result().shape == (2, 4) and ok.timeouts == [7.0]
    # Anything else is the handler's own failure, passed on as it is.
    with pytest.raises(ValueError):
        _RayCall(_Response(error=ValueError("bad pixels")), timeout_s=7.0).result()
    assert not is_transient(ValueError("bad pixels"))


class _OneChampion:
    """The registry port, reduced to what ``POST /predict`` asks of it."""

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref

    def champion(self, model_name: str) -> SimpleNamespace:
        return SimpleNamespace(
            version=self.ref.version, artifact_uri=self.ref.uri, sha256=self.ref.sha256
        )


def _post(replica: Any, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    response = asyncio.run(replica(Request(scope, receive)))
    return response.status_code, json.loads(response.body)


@pytest.mark.parametrize("fit", ["letterbox", "center-crop"])
def test_predict_fits_a_large_image_exactly_as_ingest_fits_the_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fit: FitPolicy
) -> None:
    from services.ingest.logic import Policy, validate
    from services.serving import ray_app

    store = ArtifactStore(tmp_path)
    ref = store_model(store, 3)
    monkeypatch.setattr(ray_app, "RedisRegistry", lambda client: _OneChampion(ref))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the process's, not ours
    replica = ray_app.Classifier.func_or_class(
        str(tmp_path), 1, {}, MODEL, HttpAuthSettings(), "eager", fit
    )
    y, x = np.mgrid[0:1080, 0:1920]
    scene = np.stack([x * 255 // 1920, y * 255 // 1080, (x // 40 + y // 30) % 2 * 200], -1)
    image = encode_image(scene.astype(np.uint8), "image/jpeg")  # under the 1 MiB body limit
    status, answer = _post(replica, image, "image/jpeg")
    assert status == 200, answer
    raw = FrameRaw(
        frame_id="f",
        camera_id="cam-1",
        captured_at=datetime.now(UTC),
        content_type="image/jpeg",
        image_b64=base64.b64encode(image).decode(),
    )
    valid = validate(raw, Policy(fit=fit))
    streamed = ServingCore(store).probabilities(ref, frame_pixels([valid]))[0]
    assert answer["probabilities"] == {c: float(p) for c, p in zip(CLASSES, streamed, strict=True)}
    refusing = ray_app.Classifier.func_or_class(
        str(tmp_path), 1, {}, MODEL, HttpAuthSettings(), "eager", "refuse"
    )
    assert _post(refusing, image, "image/jpeg") == (
        400,
        {"error": "image is 1920x1080, expected 64x64", "reason": "wrong_size"},
    )


def test_after_a_restart_nothing_is_served_until_the_history_is_read_to_its_end(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(tmp_path)
    core = ServingCore(store)
    backend, producer = CountingBackend(core), FakeProducer()
    ingress = Ingress(MODEL, backend=backend, verifier=core, producer=producer)
    a, b, c = store_model(store, 1), store_model(store, 2), store_model(store, 3)
    rollback = ModelLifecycle(
        model_name=MODEL, action="rolled_back", alias="champion", model_version=b.version
    )
    done = threading.Event()
    t = threading.Thread(target=lambda: (ingress.handle([frame(1)]), done.set()), daemon=True)
    t.start()
    # The history: a, then b promoted, then c promoted and rolled back to b.
    for ev in (registered(a), alias(a.version), registered(b), alias(b.version)):
        ingress.on_lifecycle(ev)
    for ev in (registered(c), alias(c.version), rollback):
        ingress.on_lifecycle(ev)
    assert not done.wait(0.3) and ingress.champion is None  # nothing adopted mid-history
    ingress.caught_up()
    assert done.wait(10)
    assert ingress.champion == b
    assert [p.model_version for p in producer.of(Topics.PREDICTIONS)] == [b.version]
    assert backend.calls == [(b.version, 1)]
