"""The Label Studio bridge's side of the conversation, without Label Studio: the interface, the
task for a request, and the label an annotation gives."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from services.annotation.studio import (
    CHOICES,
    IMAGE,
    Refused,
    label_config,
    priority,
    read_annotation,
    task_for,
)
from shared.events import Label, LabelRequest

CLASSES = ("car", "bus", 'say "hi"')


def annotation(choice: str | list[str], **extra: object) -> dict[str, object]:
    picks = [choice] if isinstance(choice, str) else choice
    return {
        "id": 7,
        "completed_by": 3,
        "updated_at": "2026-12-04T10:00:00Z",
        "result": [
            {"from_name": CHOICES, "to_name": IMAGE, "type": "choices", "value": {"choices": picks}}
        ],
        **extra,
    }


TASK = {"id": 11, "data": {"frame_id": "f-1", "camera_id": "cam-2"}}


def test_the_interface_lists_every_class_once_escaped() -> None:
    root = ET.fromstring(label_config(CLASSES))
    choices = root.find("Choices")
    assert choices is not None and choices.get("name") == CHOICES
    assert [c.get("value") for c in choices.findall("Choice")] == list(CLASSES)
    assert root.find("Image") is not None and root.find("Image").get("value") == f"${IMAGE}"


def test_disagreements_come_first_then_drift_then_the_least_confident() -> None:
    order = sorted(
        [
            ("least confident of cam-1 in its minute (0.40)", 0.40),
            ("drift: accuracy fell", 0.9),
            ("disagreement: champion says car", 0.95),
            ("least confident of cam-1 in its minute (0.20)", 0.20),
        ],
        key=lambda r: -priority(*r),
    )
    assert [r[0][:5] for r in order] == ["disag", "drift", "least", "least"]
    assert order[2][1] == 0.20, "the less confident first"


def test_a_request_becomes_a_task_with_the_champions_class_pre_selected() -> None:
    request = LabelRequest(frame_id="f-1", camera_id="cam-2", reason="drift: x", confidence=0.3)
    task = task_for(request, "http://bridge/frames/f-1.png", ("bus", 0.61234, "v7"))
    assert task["data"][IMAGE] == "http://bridge/frames/f-1.png"
    assert task["data"]["frame_id"] == "f-1" and task["data"]["request_id"] == request.event_id
    (pred,) = task["predictions"]
    assert pred["model_version"] == "v7" and pred["score"] == 0.6123
    assert pred["result"][0]["value"] == {"choices": ["bus"]}
    assert "predictions" not in task_for(request, "http://b/f-1.png", None)


def test_an_annotation_gives_the_frames_label_with_who_made_it() -> None:
    label = read_annotation(annotation("bus"), TASK, CLASSES, annotator="ann@example.org")
    assert isinstance(label, Label)
    assert (label.frame_id, label.label, label.camera_id) == ("f-1", "bus", "cam-2")
    assert label.annotator == "labelstudio:ann@example.org"
    assert label.requested  # a task is made of a label request only
    again = read_annotation(annotation("bus"), TASK, CLASSES, annotator="ann@example.org")
    assert isinstance(again, Label) and again.event_id == label.event_id
    updated = read_annotation(annotation("car", updated_at="2026-12-04T10:05:00Z"), TASK, CLASSES)
    assert isinstance(updated, Label) and updated.event_id != label.event_id
    assert updated.annotator == "labelstudio:user-3"


def test_what_is_not_a_label_is_refused_with_a_reason() -> None:
    def reason(ann: dict[str, object], task: dict[str, object] = TASK) -> str:
        out = read_annotation(ann, task, CLASSES)
        assert isinstance(out, Refused)
        return out.reason

    assert reason(annotation("tram")) == "unknown_class"
    assert reason(annotation(["car", "bus"])) == "no_class"
    assert reason(annotation([])) == "no_class"
    assert reason(annotation("car", was_cancelled=True)) == "skipped"
    assert reason(annotation("car"), {"id": 1, "data": {}}) == "not_a_frame"
