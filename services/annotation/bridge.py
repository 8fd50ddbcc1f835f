"""The bridge between StreamLoop and Label Studio, without Kafka or HTTP: a label request
becomes one task, and a person's annotation becomes one label.

- ``ask`` (a ``labels.requests`` record): one task per frame, ever. The frame's lease in the
  ``Leases`` store makes a second request for the same frame, a redelivery or another bridge
  process a no-op; the frame is rendered once, kept in the ``Images`` store for the page
  that shows it, and imported with the champion's class pre-selected.
- ``annotated`` (a webhook's annotation id, or an annotation a poll found): the annotation is
  read again from Label Studio, so what is published is always Label Studio's own state and a
  forged or replayed webhook publishes nothing new. One state of an annotation is published
  once (the ``Seen`` store remembers its ``updated_at``); an update is a new label, which
  replaces the first downstream as a corrected label does.
- ``deleted``: counted, nothing published (a label already used for training stays, as a
  label deleted from ``labels`` would).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import numpy as np
from prometheus_client import Counter

from services.annotation.client import StudioError
from services.annotation.studio import Refused, read_annotation, task_for
from shared.events import Label, LabelRequest
from shared.images import encode_image
from shared.ports import Leases, Message, Rejected, Unavailable

__all__ = ["Bridge", "BridgePolicy", "Images", "Seen", "Studio"]

log = logging.getLogger("streamloop.annotation")

TASKS = Counter(
    "streamloop_annotation_tasks",
    "Label requests handled: a task made (created) or one there already (exists).",
    ["outcome"],
)
ANSWERS = Counter(
    "streamloop_annotation_answers",
    "Annotations read: published as labels, unchanged since published, refused (by reason) "
    "or deleted.",
    ["outcome", "reason"],
)

Asked = Literal["created", "exists"]
Answered = Literal["published", "unchanged", "refused"]


class Studio(Protocol):
    """The part of Label Studio's API the bridge uses (``LabelStudioClient``)."""

    def import_tasks(self, project: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]: ...

    def annotation(self, annotation: int) -> dict[str, Any]: ...

    def task(self, task: int) -> dict[str, Any]: ...

    def user(self, user: int) -> dict[str, Any]: ...

    def annotated_tasks(self, project: int) -> Iterable[dict[str, Any]]: ...


class Images(Protocol):
    """Rendered frames, by frame id, for as long as their tasks may be open."""

    def put(self, frame_id: str, png: bytes, ttl_s: int) -> None: ...

    def get(self, frame_id: str) -> bytes | None: ...


class Seen(Protocol):
    """The last state (``updated_at``) of each annotation published."""

    def get(self, annotation_id: int) -> str | None: ...

    def put(self, annotation_id: int, version: str, ttl_s: int) -> None: ...


class FrameSource(Protocol):
    def get(self, frame_id: str) -> Any: ...

    def caught_up_since(self, when: datetime) -> bool: ...


@dataclass(frozen=True)
class BridgePolicy:
    project: int
    classes: tuple[str, ...]
    image_url: Callable[[str], str]
    """The URL, as a person's browser reaches it, of a frame's image."""
    owner: str
    """This process's name in the leases."""
    keep_s: int = 30 * 86_400
    """How long a frame's task lease, image and an annotation's published state are kept."""
    lease_s: int = 60


@dataclass
class Counts:
    tasks: int = 0
    duplicates: int = 0
    labels: int = 0
    unchanged: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    deleted: int = 0


class Bridge:
    def __init__(
        self,
        policy: BridgePolicy,
        studio: Studio,
        frames: FrameSource,
        leases: Leases,
        images: Images,
        seen: Seen,
        publish: Callable[[Label], None],
    ) -> None:
        self.policy = policy
        self.studio = studio
        self.frames = frames
        self.leases = leases
        self.images = images
        self.seen = seen
        self.publish = publish
        self.counts = Counts()
        self._annotators: dict[int, str] = {}

    # --- requests -> tasks ---------------------------------------------------------------

    def ask(self, request: LabelRequest) -> Asked:
        """Make the task of ``request``'s frame unless one exists. Raises ``Unavailable``
        while the frame has not been read yet (or another process holds its lease), and
        ``Rejected`` for a frame that is no longer kept."""
        key = f"task:{request.frame_id}"
        lease = self.leases.acquire(key, self.policy.owner, self.policy.lease_s)
        if lease.state == "done":
            self.counts.duplicates += 1
            TASKS.labels("exists").inc()
            return "exists"
        if lease.state == "held":
            raise Unavailable(f"frame {request.frame_id}'s task is being made elsewhere")
        try:
            task_id = self._make_task(request)
        except BaseException:
            self.leases.release(key, self.policy.owner)
            raise
        self.leases.finish(key, self.policy.owner, str(task_id), self.policy.keep_s)
        self.counts.tasks += 1
        TASKS.labels("created").inc()
        return "created"

    def ask_message(self, message: Message[LabelRequest]) -> None:
        """``ask``, as the consumer loop's handler."""
        self.ask(message.event)

    def _make_task(self, request: LabelRequest) -> int:
        kept = self.frames.get(request.frame_id)
        if kept is None:
            if not self.frames.caught_up_since(request.produced_at):
                raise Unavailable(f"frame {request.frame_id} not read yet")
            raise Rejected(
                "frame_unknown",
                f"frame {request.frame_id} is not among the frames kept (too old or never valid)",
            )
        frame = kept.frame
        pixels = np.frombuffer(frame.pixels, np.uint8).reshape(
            frame.height, frame.width, frame.channels
        )
        self.images.put(frame.frame_id, encode_image(pixels), self.policy.keep_s)
        task = task_for(request, self.policy.image_url(frame.frame_id), kept.champion)
        ids = self.studio.import_tasks(self.policy.project, [task])
        if len(ids) != 1:
            raise Unavailable(f"Label Studio made {len(ids)} tasks for one")
        log.info(
            "task made",
            extra={"frame_id": frame.frame_id, "task": ids[0], "reason": request.reason},
        )
        return ids[0]

    # --- annotations -> labels -----------------------------------------------------------

    def annotated(self, annotation_id: int) -> Answered:
        """Publish the label of annotation ``annotation_id`` as Label Studio has it now."""
        annotation = self.studio.annotation(annotation_id)
        task = self.studio.task(int(annotation["task"]))
        return self._answer(annotation, task)

    def _answer(self, annotation: Mapping[str, Any], task: Mapping[str, Any]) -> Answered:
        ann_id = int(annotation["id"])
        version = str(annotation.get("updated_at") or annotation.get("created_at") or "")
        if self.seen.get(ann_id) == version:
            self.counts.unchanged += 1
            ANSWERS.labels("unchanged", "").inc()
            return "unchanged"
        outcome = read_annotation(
            annotation, task, self.policy.classes, self._annotator(annotation.get("completed_by"))
        )
        if isinstance(outcome, Refused):
            self.counts.refused[outcome.reason] = self.counts.refused.get(outcome.reason, 0) + 1
            ANSWERS.labels("refused", outcome.reason).inc()
            log.info("annotation not a label", extra={"reason": outcome.reason, "id": ann_id})
            self.seen.put(ann_id, version, self.policy.keep_s)
            return "refused"
        self.publish(outcome)
        self.seen.put(ann_id, version, self.policy.keep_s)
        self.counts.labels += 1
        ANSWERS.labels("published", "").inc()
        return "published"

    def _annotator(self, user: object) -> str | None:
        if not isinstance(user, int):
            return None
        if user not in self._annotators:
            try:
                found = self.studio.user(user)
            except (Unavailable, StudioError):
                return None
            self._annotators[user] = str(found.get("email") or found.get("username") or "")
        return self._annotators[user] or None

    def deleted(self, count: int) -> None:
        self.counts.deleted += count
        ANSWERS.labels("deleted", "").inc(count)

    def poll(self) -> int:
        """Read every annotated task of the project and publish what the webhook missed;
        returns the number of labels published."""
        published = 0
        for task in self.studio.annotated_tasks(self.policy.project):
            for annotation in task.get("annotations") or []:
                if self._answer(annotation, task) == "published":
                    published += 1
        return published

    def poll_every(self, interval_s: float, stop: threading.Event) -> None:
        """``poll`` every ``interval_s`` until ``stop`` is set; a failed poll is logged and
        the next one tries again."""
        while not stop.wait(interval_s):
            try:
                found = self.poll()
            except Exception as exc:  # noqa: BLE001 -- the next poll tries again
                log.warning("poll failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                continue
            if found:
                log.info("poll found labels the webhook did not bring", extra={"count": found})
