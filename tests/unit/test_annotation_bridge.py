"""The Label Studio bridge's decisions against fakes of Label Studio and of its stores: one task
per frame, a frame not read yet waits, a frame no longer kept is refused, an annotation's state
is published once, and an image URL opens only its own frame."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from services.annotation.bridge import Bridge, BridgePolicy
from services.annotation.frames import RecentFrames
from services.annotation.http import ImageSigner
from services.annotation.studio import CHOICES, IMAGE
from shared.events import FrameValid, Label, LabelRequest, Prediction
from shared.ports import MemoryLeases, Rejected, Unavailable

CLASSES = ("car", "bus")


def frame(fid: str) -> FrameValid:
    now = datetime.now(UTC)
    return FrameValid(
        frame_id=fid,
        camera_id="cam-1",
        captured_at=now,
        ingested_at=now,
        width=2,
        height=2,
        pixels=bytes(range(12)),
        content_sha256="0" * 64,
    )


def prediction(fid: str, cls: str = "bus", *, shadow: bool = False) -> Prediction:
    now = datetime.now(UTC)
    return Prediction(
        frame_id=fid,
        camera_id="cam-1",
        captured_at=now,
        model_name="m",
        model_version="v3",
        predicted_class=cls,
        probabilities={"car": 0.3, "bus": 0.7},
        confidence=0.7,
        served_at=now,
        latency_from_capture_ms=1.0,
        latency_from_ingest_ms=1.0,
        shadow=shadow,
    )


class FakeStudio:
    def __init__(self) -> None:
        self.tasks: dict[int, dict[str, Any]] = {}
        self.annotations: dict[int, dict[str, Any]] = {}
        self.users = {3: {"email": "ana@example.org"}}

    def import_tasks(self, project: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        ids = []
        for task in tasks:
            tid = len(self.tasks) + 1
            self.tasks[tid] = {"id": tid, "project": project, **task}
            ids.append(tid)
        return ids

    def annotate(self, task: int, choice: str, when: str) -> int:
        aid = 100 + len(self.annotations)
        self.annotations[aid] = {
            "id": aid,
            "task": task,
            "completed_by": 3,
            "updated_at": when,
            "result": [
                {"from_name": CHOICES, "to_name": IMAGE, "type": "choices",
                 "value": {"choices": [choice]}}
            ],
        }  # fmt: skip
        return aid

    def annotation(self, annotation: int) -> dict[str, Any]:
        return self.annotations[annotation]

    def task(self, task: int) -> dict[str, Any]:
        return self.tasks[task]

    def user(self, user: int) -> dict[str, Any]:
        return self.users[user]

    def annotated_tasks(self, project: int) -> Iterable[dict[str, Any]]:
        for tid, task in self.tasks.items():
            anns = [a for a in self.annotations.values() if a["task"] == tid]
            if anns:
                yield {**task, "annotations": anns}


class Follower:
    def __init__(self, frames: RecentFrames, caught_up: bool = True) -> None:
        self.frames = frames
        self.caught_up = caught_up

    def get(self, frame_id: str) -> Any:
        return self.frames.get(frame_id)

    def caught_up_since(self, when: datetime) -> bool:
        return self.caught_up


class Store:
    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}

    def put(self, key: Any, value: Any, ttl_s: int) -> None:
        self.data[key] = value

    def get(self, key: Any) -> Any:
        return self.data.get(key)


def bridge(
    caught_up: bool = True,
) -> tuple[Bridge, FakeStudio, RecentFrames, list[Label], Follower]:
    studio, frames = FakeStudio(), RecentFrames(10)
    published: list[Label] = []
    follower = Follower(frames, caught_up)
    policy = BridgePolicy(
        project=1, classes=CLASSES, image_url=lambda f: f"http://b/frames/{f}.png", owner="me"
    )
    made = Bridge(policy, studio, follower, MemoryLeases(), Store(), Store(), published.append)
    return made, studio, frames, published, follower


def request(fid: str, reason: str = "least confident") -> LabelRequest:
    return LabelRequest(frame_id=fid, camera_id="cam-1", reason=reason, confidence=0.4)


def test_a_request_makes_one_task_with_the_champions_class_and_a_second_makes_none() -> None:
    b, studio, frames, _, _ = bridge()
    frames.add_prediction(prediction("f1", "bus"))  # read before its frame
    frames.add_prediction(prediction("f1", "car", shadow=True))  # a challenger's: not shown
    frames.add_frame(frame("f1"))
    assert b.ask(request("f1")) == "created"
    assert b.ask(request("f1", "drift: camera cam-1")) == "exists"
    assert len(studio.tasks) == 1
    task = studio.tasks[1]
    assert task["data"]["image"] == "http://b/frames/f1.png"
    (pred,) = task["predictions"]
    assert pred["model_version"] == "v3"
    assert pred["result"][0]["value"] == {"choices": ["bus"]}
    png = b.images.get("f1")
    assert png is not None and png.startswith(b"\x89PNG")
    assert (b.counts.tasks, b.counts.duplicates) == (1, 1)


def test_a_frame_not_read_yet_waits_and_one_no_longer_kept_is_refused() -> None:
    b, studio, frames, _, follower = bridge(caught_up=False)
    with pytest.raises(Unavailable):
        b.ask(request("late"))
    frames.add_frame(frame("late"))
    assert b.ask(request("late")) == "created"  # the lease was released for the retry
    follower.caught_up = True
    with pytest.raises(Rejected) as refused:
        b.ask(request("gone"))
    assert refused.value.reason == "frame_unknown"
    assert len(studio.tasks) == 1


def test_the_store_keeps_the_newest_frames_only() -> None:
    frames = RecentFrames(2)
    for fid in ("a", "b", "c"):
        frames.add_frame(frame(fid))
    assert frames.get("a") is None and frames.get("c") is not None and len(frames) == 2


def test_an_annotation_is_published_once_per_state_and_an_update_replaces_it() -> None:
    b, studio, frames, published, _ = bridge()
    frames.add_frame(frame("f1"))
    b.ask(request("f1"))
    aid = studio.annotate(1, "car", "2026-12-04T10:00:00Z")
    assert b.annotated(aid) == "published"
    assert b.annotated(aid) == "unchanged"  # a webhook delivered twice
    assert b.poll() == 0  # and the poll finds nothing new
    studio.annotations[aid].update(
        updated_at="2026-12-04T10:05:00Z",
        result=[{"from_name": CHOICES, "to_name": IMAGE, "type": "choices",
                 "value": {"choices": ["bus"]}}],
    )  # fmt: skip
    assert b.poll() == 1  # the update the webhook missed
    first, second = published
    assert (first.frame_id, first.label, second.label) == ("f1", "car", "bus")
    assert first.event_id != second.event_id
    assert first.annotator == "labelstudio:ana@example.org"


def test_an_annotation_that_is_not_a_label_is_counted_not_published() -> None:
    b, studio, frames, published, _ = bridge()
    frames.add_frame(frame("f1"))
    b.ask(request("f1"))
    aid = studio.annotate(1, "tram", "2026-12-04T10:00:00Z")
    assert b.annotated(aid) == "refused"
    assert published == [] and b.counts.refused == {"unknown_class": 1}


def test_an_image_url_opens_its_own_frame_only() -> None:
    signer = ImageSigner("http://bridge:8730/", SecretStr("read-token"))
    url = signer.url("cam 1/f")
    assert url.startswith("http://bridge:8730/frames/cam%201%2Ff.png?sig=")
    sig = url.split("sig=")[1]
    assert "read-token" not in url
    assert signer.admits("cam 1/f", sig)
    assert not signer.admits("other", sig)
    assert not signer.admits("cam 1/f", "")
    open_signer = ImageSigner("http://bridge:8730", None)
    assert open_signer.url("f") == "http://bridge:8730/frames/f.png"
    assert open_signer.admits("f", "")
