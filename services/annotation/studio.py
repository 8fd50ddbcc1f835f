"""What the Label Studio bridge says to Label Studio and reads back, without HTTP: the project's
labelling interface, a task for a label request, and the label a person's annotation means.

A task's data names the frame (``frame_id``, ``camera_id``), the image URL the bridge serves,
why it was asked for (``reason``) and a ``priority``: disagreements between champion and
challenger first (only they decide between the two), then frames of a drifting camera, then the
least confident, each by the champion's confidence (less confident first). Its one prediction
is the champion's class and score, which Label Studio shows pre-selected.

Annotations come back as Label Studio's webhook payloads (``ANNOTATION_CREATED``,
``ANNOTATION_UPDATED``, ``ANNOTATIONS_DELETED``) or as the annotations a poll lists; either
way ``read_annotation`` turns one into a ``Label`` of the frame with the annotator's identity,
or says why it is not one. The label's event id is derived from the annotation's id and when
it was last updated: one state of an annotation read twice is one label event, and an
update is a new one, which replaces the first downstream as a corrected label does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

from shared.events import Label, LabelRequest, derived_id

__all__ = [
    "CHOICES",
    "IMAGE",
    "WEBHOOK_ACTIONS",
    "Refused",
    "label_config",
    "priority",
    "project_title",
    "read_annotation",
    "task_for",
    "webhook_event",
]

IMAGE = "image"
"""The ``<Image>`` tag's name (and the task data key of the image URL)."""
CHOICES = "class"
"""The ``<Choices>`` tag's name: where an annotation's class is."""
ANNOTATOR_PREFIX = "labelstudio:"
WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")


def project_title(model_name: str) -> str:
    """The title of the Label Studio project of ``model_name``'s label requests."""
    return f"StreamLoop: {model_name}"


def label_config(classes: Sequence[str]) -> str:
    """The project's labelling interface: the frame, why it was asked for, one class."""
    if not classes:
        raise ValueError("a project needs at least one class")
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (
        "<View>\n"
        f'  <Image name="{IMAGE}" value="${IMAGE}" zoom="true"/>\n'
        '  <Text name="reason" value="$reason"/>\n'
        f'  <Choices name="{CHOICES}" toName="{IMAGE}" choice="single" showInline="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def priority(reason: str, confidence: float | None) -> int:
    """Higher first: a disagreement, then a drifting camera's frame, then a frame the
    champion was unsure of; within each, the less confident first (0 to 999)."""
    kind = 3 if reason.startswith("disagreement") else 2 if reason.startswith("drift") else 1
    unsure = 999 if confidence is None else round((1.0 - min(max(confidence, 0.0), 1.0)) * 999)
    return kind * 1000 + unsure


def task_for(
    request: LabelRequest,
    image_url: str,
    champion: tuple[str, float, str] | None,
) -> dict[str, Any]:
    """The task (``POST /api/projects/{id}/import`` item) for ``request``: ``champion`` is the
    champion's (class, confidence, version) on the frame, shown pre-selected, if known."""
    task: dict[str, Any] = {
        "data": {
            IMAGE: image_url,
            "frame_id": request.frame_id,
            "camera_id": request.camera_id,
            "reason": request.reason,
            "priority": priority(request.reason, request.confidence),
            "request_id": request.event_id,
        }
    }
    if champion is not None:
        cls, score, version = champion
        task["predictions"] = [
            {
                "model_version": version,
                "score": round(float(score), 4),
                "result": [
                    {
                        "from_name": CHOICES,
                        "to_name": IMAGE,
                        "type": "choices",
                        "value": {"choices": [cls]},
                    }
                ],
            }
        ]
    return task


@dataclass(frozen=True)
class Refused:
    """An annotation that is not a label, and why (``reason`` is a DLQ reason)."""

    reason: str
    message: str


def read_annotation(
    annotation: Mapping[str, Any],
    task: Mapping[str, Any],
    classes: Sequence[str],
    annotator: str | None = None,
) -> Label | Refused:
    """The ``Label`` a person's annotation of ``task`` gives (``annotator``: who, when known;
    else Label Studio's user id). Cancelled (skipped) annotations, annotations without a
    single class of the project and tasks that name no frame are refused."""
    data = task.get("data") or {}
    frame_id = data.get("frame_id")
    if not isinstance(frame_id, str) or not frame_id:
        return Refused("not_a_frame", f"task {task.get('id')} names no frame_id")
    if annotation.get("was_cancelled"):
        return Refused("skipped", f"annotation {annotation.get('id')} was skipped")
    picked = [
        choice
        for item in annotation.get("result") or []
        if isinstance(item, Mapping) and item.get("from_name") == CHOICES
        for choice in (item.get("value") or {}).get("choices") or []
    ]
    if len(picked) != 1:
        return Refused(
            "no_class", f"annotation {annotation.get('id')} picks {len(picked)} classes, not 1"
        )
    if picked[0] not in classes:
        return Refused("unknown_class", f"{picked[0]!r} is not one of the classes {list(classes)}")
    who = annotator or f"user-{annotation.get('completed_by', 'unknown')}"
    camera = data.get("camera_id")
    # The same state of the same annotation (a webhook delivered twice, or a webhook and a
    # poll) is the same label event; an update is a new one, which replaces it downstream.
    version = str(annotation.get("updated_at") or annotation.get("created_at") or "")
    return Label(
        event_id=derived_id("labelstudio", str(annotation.get("id")), version),
        frame_id=frame_id,
        label=picked[0],
        camera_id=camera if isinstance(camera, str) else None,
        annotator=ANNOTATOR_PREFIX + who,
        requested=True,  # the project's tasks are the bridge's, one per label request
        source="labelstudio",
    )


def webhook_event(body: Mapping[str, Any]) -> tuple[str, list[int]]:
    """The action of a Label Studio webhook payload and the annotation ids it names: one for
    ``ANNOTATION_CREATED`` and ``ANNOTATION_UPDATED`` (``annotation.id``), each of
    ``annotations`` for ``ANNOTATIONS_DELETED``, none for an action the bridge does not
    subscribe to. Raises ValueError for a payload of another shape."""
    action = body.get("action")
    if not isinstance(action, str):
        raise ValueError("a webhook payload names its action")
    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        annotation = body.get("annotation")
        ann_id = annotation.get("id") if isinstance(annotation, Mapping) else None
        if not isinstance(ann_id, int) or isinstance(ann_id, bool):
            raise ValueError(f"{action} without annotation.id (an integer)")
        return action, [ann_id]
    if action == "ANNOTATIONS_DELETED":
        items = body.get("annotations")
        if not isinstance(items, list):
            raise ValueError(f"{action} without an annotations list")
        ids = [item.get("id") for item in items if isinstance(item, Mapping)]
        if len(ids) != len(items) or not all(isinstance(i, int) for i in ids):
            raise ValueError(f"{action}: every annotation needs an integer id")
        return action, [int(i) for i in ids if isinstance(i, int)]
    return action, []
