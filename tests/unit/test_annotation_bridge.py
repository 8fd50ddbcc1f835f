"""The Label Studio bridge's decisions against fakes of Label Studio and of its stores: one task
per frame, a frame not read yet waits, a frame no longer kept is refused, an annotation's state
is published once, and an image URL opens only its own frame."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from services.annotation.bridge import Bridge, BridgePolicy
from services.annotation.client import StudioUnavailable
from services.annotation.frames import CatchUp, RecentFrames
from services.annotation.http import ImageSigner
from services.annotation.studio import CHOICES, IMAGE, webhook_event
from shared.events import FrameValid, Label, LabelRequest, Prediction
from shared.ports import MemoryLeases, MemoryValues, Rejected, Unavailable

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
        self.lose_import_answer = False
        self.asked_since: list[str | None] = []
        self.users_down = False

    def import_tasks(self, project: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        ids = []
        for task in tasks:
            tid = len(self.tasks) + 1
            self.tasks[tid] = {"id": tid, "project": project, **task}
            ids.append(tid)
        if self.lose_import_answer:
            raise StudioUnavailable("POST /import: timed out")
        return ids

    def find_task(self, project: int, frame_id: str) -> int | None:
        found = [t for t in self.tasks.values() if t["data"]["frame_id"] == frame_id]
        return found[0]["id"] if found else None

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
        if self.users_down:
            raise StudioUnavailable("GET /api/users: 502")
        return self.users[user]

    def annotated_tasks(
        self, project: int, updated_after: str | None = None
    ) -> Iterable[dict[str, Any]]:
        self.asked_since.append(updated_after)
        for tid, task in self.tasks.items():
            anns = [a for a in self.annotations.values() if a["task"] == tid]
            updated = max(a["updated_at"] for a in anns) if anns else ""
            if anns and (updated_after is None or updated > updated_after):
                yield {**task, "annotations": anns, "updated_at": updated}


class Follower:
    def __init__(self, frames: RecentFrames, caught_up: bool = True) -> None:
        self.frames = frames
        self.caught_up = caught_up

    def get(self, frame_id: str) -> Any:
        return self.frames.get(frame_id)

    def caught_up_since(self, when: float) -> bool:
        return self.caught_up


def bridge(
    caught_up: bool = True,
) -> tuple[Bridge, FakeStudio, RecentFrames, list[Label], Follower]:
    studio, frames = FakeStudio(), RecentFrames(10)
    published: list[Label] = []
    follower = Follower(frames, caught_up)
    policy = BridgePolicy(
        project=1, classes=CLASSES, image_url=lambda f: f"http://b/frames/{f}.png", owner="me"
    )
    made = Bridge(policy, studio, follower, MemoryLeases(), MemoryValues(), published.append)
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
    png = b.image("f1")
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
    assert b.annotated(aid, "webhook") == "published"
    assert b.annotated(aid, "webhook") == "unchanged"  # a webhook delivered twice
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
    assert b.annotated(aid, "webhook") == "refused"
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


def test_a_lost_import_answer_finds_the_task_instead_of_making_a_second() -> None:
    b, studio, frames, _, _ = bridge()
    frames.add_frame(frame("f1"))
    studio.lose_import_answer = True
    with pytest.raises(Unavailable):
        b.ask(request("f1"))  # the task was made; the answer never came
    studio.lose_import_answer = False
    assert b.ask(request("f1")) == "created"  # the redelivered request
    assert b.ask(request("f1")) == "exists"
    assert len(studio.tasks) == 1


def test_a_stale_poll_never_publishes_an_older_state_after_a_newer_one() -> None:
    b, studio, frames, published, _ = bridge()
    frames.add_frame(frame("f1"))
    b.ask(request("f1"))
    aid = studio.annotate(1, "car", "2026-12-04T10:00:00.000000Z")
    stale = [dict(t) for t in studio.annotated_tasks(1)]  # the poll's list, read now
    studio.annotations[aid] = {
        **studio.annotations[aid],
        "updated_at": "2026-12-04T10:05:00.000000Z",
        "result": [{"from_name": CHOICES, "to_name": IMAGE, "type": "choices",
                    "value": {"choices": ["bus"]}}],
    }  # fmt: skip
    assert b.annotated(aid, "webhook") == "published"  # the update, by webhook
    studio.annotated_tasks = lambda project, updated_after=None: iter(stale)  # type: ignore[method-assign]
    assert b.poll() == 0  # its older copy publishes nothing
    assert [lab.label for lab in published] == ["bus"]


def test_an_annotator_not_known_yet_is_retried_not_published_as_a_user_id() -> None:
    b, studio, frames, published, _ = bridge()
    frames.add_frame(frame("f1"))
    b.ask(request("f1"))
    aid = studio.annotate(1, "car", "2026-12-04T10:00:00Z")
    studio.users_down = True
    with pytest.raises(Unavailable):
        b.annotated(aid, "webhook")
    studio.users_down = False
    assert b.poll() == 1 and published[0].annotator == "labelstudio:ana@example.org"


def test_webhooks_are_queued_deletions_counted_and_a_foreign_task_refused() -> None:
    b, studio, frames, published, _ = bridge()
    frames.add_frame(frame("f1"))
    b.ask(request("f1"))
    aid = studio.annotate(1, "car", "2026-12-04T10:00:00Z")
    assert b.on_webhook({"action": "ANNOTATION_CREATED", "annotation": {"id": aid}}) == {
        "queued": 1
    }
    assert published == []  # answered before it is handled
    b.handle_queued()
    assert len(published) == 1
    assert b.on_webhook({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": aid}]}) == {
        "deleted": 1
    }
    studio.tasks[1]["project"] = 99  # an id of another project's annotation
    other = studio.annotate(1, "bus", "2026-12-04T11:00:00Z")
    assert b.annotated(other, "webhook") == "refused"
    assert (len(published), b.counts.deleted) == (1, 1)
    assert b.counts.refused == {"other_project": 1}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"action": "ANNOTATION_CREATED"},
        {"action": "ANNOTATION_UPDATED", "annotation": {"id": "7"}},
        {"action": "ANNOTATION_CREATED", "annotation": {"id": True}},
        {"action": "ANNOTATIONS_DELETED", "annotations": "abc"},
        {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}, {}]},
    ],
)
def test_a_webhook_payload_of_another_shape_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        webhook_event(body)


def test_webhook_payloads_name_their_annotations() -> None:
    assert webhook_event({"action": "ANNOTATION_UPDATED", "annotation": {"id": 7}}) == (
        "ANNOTATION_UPDATED",
        [7],
    )
    deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}, {"id": 2}]}
    assert webhook_event(deleted) == ("ANNOTATIONS_DELETED", [1, 2])
    assert webhook_event({"action": "PROJECT_UPDATED"}) == ("PROJECT_UPDATED", [])


def test_a_reader_has_caught_up_to_a_time_once_it_reached_the_ends_of_then() -> None:
    catch_up = CatchUp(every_s=0.5)
    assert catch_up.due(100.0)
    catch_up.aim(100.0, {"p0": 10, "p1": 5})
    assert not catch_up.due(100.1)  # one target at a time
    catch_up.observe({"p0": 10, "p1": 4})  # a steady stream: p1 not there yet
    assert catch_up.caught_up_at == 0.0
    catch_up.observe({"p0": 12, "p1": 5})
    assert catch_up.caught_up_at == 100.0
    assert not catch_up.due(100.2) and catch_up.due(100.6)


def test_a_poll_asks_for_the_tasks_updated_since_a_minute_before_the_newest_it_saw() -> None:
    b, studio, frames, _, _ = bridge()
    frames.add_frame(frame("f1"))
    b.ask(request("f1"))
    studio.annotate(1, "car", "2026-12-04T10:00:00.000000Z")
    assert b.poll() == 1
    assert b.poll() == 0
    assert studio.asked_since == [None, "2026-12-04T09:59:00.000000Z"]


def test_the_webhook_worker_goes_on_after_an_annotation_fails() -> None:
    b, studio, frames, published, _ = bridge()
    for fid in ("f1", "f2"):
        frames.add_frame(frame(fid))
        b.ask(request(fid))
    first = studio.annotate(1, "car", "2026-12-04T10:00:00Z")
    second = studio.annotate(2, "bus", "2026-12-04T10:00:01Z")
    sent = b.publish
    failures = iter([RuntimeError("broker timed out")])

    def publish(label: Label) -> None:
        for exc in failures:
            raise exc
        sent(label)

    b.publish = publish
    stop = threading.Event()
    worker = threading.Thread(target=b.run_queue, args=(stop,), daemon=True)
    worker.start()
    b.on_webhook({"action": "ANNOTATION_CREATED", "annotation": {"id": first}})
    b.on_webhook({"action": "ANNOTATION_CREATED", "annotation": {"id": second}})
    deadline = time.monotonic() + 5
    while not published and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    worker.join(5)
    assert [lab.frame_id for lab in published] == ["f2"]  # the first is left to the poll
    assert b.poll() == 1 and [lab.frame_id for lab in published] == ["f2", "f1"]
