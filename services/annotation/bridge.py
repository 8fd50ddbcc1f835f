"""The bridge between StreamLoop and Label Studio, without Kafka or HTTP: a label request
becomes one task, and a person's annotation becomes one label.

- ``ask`` (a ``labels.requests`` record): one task per frame, ever. The frame's lease in the
  ``Leases`` store makes a second request for the same frame, a redelivery or another bridge
  process a no-op. Before importing, the bridge writes an "importing" mark; a later attempt
  that finds the mark (the answer to the import was lost, or the process died before it
  recorded the task) looks for the frame's task in Label Studio before importing again.
  The frame is rendered once and kept in the ``Values`` store for the page that shows it.
- ``annotated`` (an annotation id from a webhook, or one a poll found changed): the annotation
  is read again from Label Studio, so what is published is always Label Studio's own state
  and a forged or replayed webhook publishes nothing new. A state (``updated_at``) is
  published only when it is newer than the last one published (kept without expiry), one
  annotation at a time per process, so an older state never follows a newer one; an update
  is a new label, which replaces the first downstream as a corrected label does.
- ``on_webhook``: the payload's ids are queued and answered at once (Label Studio waits for a
  webhook's answer, in its open edition while the person's submit waits); ``run_queue``
  handles them, and what fails there is left to the poll. A deletion is counted, nothing is
  published (a label already used for training stays, as a label deleted from ``labels``
  would).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import numpy as np
from prometheus_client import Counter

from services.annotation.client import StudioError
from services.annotation.studio import Refused, read_annotation, task_for, webhook_event
from shared.events import Label, LabelRequest
from shared.images import encode_image
from shared.ports import Leases, Message, Rejected, Unavailable, Values

__all__ = ["Bridge", "BridgePolicy", "Studio"]

log = logging.getLogger("streamloop.annotation")

TASKS = Counter(
    "streamloop_annotation_tasks",
    "Label requests handled: a task made (created) or one there already (exists).",
    ["outcome"],
)
ANSWERS = Counter(
    "streamloop_annotation_answers",
    "Annotations read, by how they came (webhook, poll): published as labels, unchanged since "
    "published, refused (by reason) or deleted.",
    ["outcome", "reason", "source"],
)

Asked = Literal["created", "exists"]
Answered = Literal["published", "unchanged", "refused"]
Source = Literal["webhook", "poll"]


class Studio(Protocol):
    """The part of Label Studio's API the bridge uses (``LabelStudioClient``)."""

    def import_tasks(self, project: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]: ...

    def find_task(self, project: int, frame_id: str) -> int | None: ...

    def annotation(self, annotation: int) -> dict[str, Any]: ...

    def task(self, task: int) -> dict[str, Any]: ...

    def user(self, user: int) -> dict[str, Any]: ...

    def annotated_tasks(
        self, project: int, updated_after: str | None = None
    ) -> Iterable[dict[str, Any]]: ...


class FrameSource(Protocol):
    def get(self, frame_id: str) -> Any: ...

    def caught_up_since(self, when: float) -> bool:
        """True once every record published before ``when`` (this host's clock) was read."""
        ...


@dataclass(frozen=True)
class BridgePolicy:
    project: int
    classes: tuple[str, ...]
    image_url: Callable[[str], str]
    """The URL, as a person's browser reaches it, of a frame's image."""
    owner: str
    """This process's name in the leases."""
    keep_s: int = 30 * 86_400
    """How long a frame's task record and image are kept."""
    lease_s: int = 60


@dataclass
class Counts:
    """What this process did (also in the Prometheus counters)."""

    tasks: int = 0
    duplicates: int = 0
    labels: int = 0
    unchanged: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    deleted: int = 0


POLL_MARGIN_S = 60.0
"""How far before the newest task it saw a poll starts the next one."""


def _earlier(timestamp: str, seconds: float) -> str:
    """``timestamp`` (ISO 8601) ``seconds`` earlier, in UTC, as Label Studio writes times."""
    when = datetime.fromisoformat(timestamp.replace("Z", "+00:00")) - timedelta(seconds=seconds)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _version(annotation: Mapping[str, Any]) -> str:
    """An annotation's state: its ``updated_at`` (ISO 8601, UTC, one format, so later states
    sort after earlier ones as strings)."""
    return str(annotation.get("updated_at") or annotation.get("created_at") or "")


class Bridge:
    def __init__(
        self,
        policy: BridgePolicy,
        studio: Studio,
        frames: FrameSource,
        leases: Leases,
        values: Values,
        publish: Callable[[Label], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.studio = studio
        self.frames = frames
        self.leases = leases
        self.values = values
        self.publish = publish
        self.counts = Counts()
        self._clock = clock
        self._annotators: dict[int, str] = {}
        self._first_asked: dict[str, float] = {}
        self._answering = threading.Lock()
        self._queue: queue.Queue[int] = queue.Queue(maxsize=10_000)
        self._poll_since = ""

    # --- requests -> tasks ---------------------------------------------------------------

    def ask(self, request: LabelRequest) -> Asked:
        """Make the task of ``request``'s frame unless one exists. Raises ``Unavailable``
        while the frame may still be read (or another process holds its lease), and
        ``Rejected`` for a frame not among those kept."""
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
        if not self.leases.finish(key, self.policy.owner, str(task_id), self.policy.keep_s):
            log.warning(
                "the frame's lease ran out while its task was made",
                extra={"frame_id": request.frame_id, "task": task_id},
            )
        self.counts.tasks += 1
        TASKS.labels("created").inc()
        return "created"

    def ask_message(self, message: Message[LabelRequest]) -> None:
        """``ask``, as the consumer loop's handler."""
        self.ask(message.event)

    def _frame(self, frame_id: str) -> Any:
        """The kept frame; ``Unavailable`` while it may still be read, ``Rejected`` once the
        reader has read everything published before the request first came."""
        first = self._first_asked.setdefault(frame_id, self._clock())
        kept = self.frames.get(frame_id)
        if kept is None and not self.frames.caught_up_since(first):
            raise Unavailable(f"frame {frame_id} not read yet")
        del self._first_asked[frame_id]
        if kept is None:
            raise Rejected(
                "frame_unknown",
                f"frame {frame_id} is not among the frames kept (too old or never valid)",
            )
        return kept

    def _make_task(self, request: LabelRequest) -> int:
        kept = self._frame(request.frame_id)
        frame = kept.frame
        project, mark = self.policy.project, f"importing:{frame.frame_id}"
        if self.values.get(mark) is not None:
            found = self.studio.find_task(project, frame.frame_id)
            if found is not None:
                log.info("task found", extra={"frame_id": frame.frame_id, "task": found})
                return found
        pixels = np.frombuffer(frame.pixels, np.uint8).reshape(
            frame.height, frame.width, frame.channels
        )
        self.values.put(f"image:{frame.frame_id}", encode_image(pixels), self.policy.keep_s)
        task = task_for(request, self.policy.image_url(frame.frame_id), kept.champion)
        self.values.put(mark, b"1", self.policy.keep_s)
        ids = self.studio.import_tasks(project, [task])
        # An edition that imports in the background answers without the ids: 0, unknown.
        task_id = ids[0] if ids else 0
        log.info(
            "task made",
            extra={"frame_id": frame.frame_id, "task": task_id, "reason": request.reason},
        )
        return task_id

    def image(self, frame_id: str) -> bytes | None:
        """The rendered image of a frame that has a task."""
        return self.values.get(f"image:{frame_id}")

    # --- annotations -> labels -----------------------------------------------------------

    def annotated(self, annotation_id: int, source: Source) -> Answered:
        """Publish the label of annotation ``annotation_id`` as Label Studio has it now,
        unless that state (or a later one) was published already."""
        with self._answering:
            annotation = self.studio.annotation(annotation_id)
            task = self.studio.task(int(annotation["task"]))
            return self._answer(annotation, task, source)

    def _published(self, annotation_id: int) -> str:
        found = self.values.get(f"seen:{annotation_id}")
        return found.decode() if found is not None else ""

    def _answer(
        self, annotation: Mapping[str, Any], task: Mapping[str, Any], source: Source
    ) -> Answered:
        ann_id, version = int(annotation["id"]), _version(annotation)
        project = task.get("project")
        if project is not None and int(project) != self.policy.project:
            return self._refused(Refused("other_project", f"task of project {project}"), source)
        if version <= self._published(ann_id):
            self.counts.unchanged += 1
            ANSWERS.labels("unchanged", "", source).inc()
            return "unchanged"
        outcome = read_annotation(
            annotation, task, self.policy.classes, self._annotator(annotation.get("completed_by"))
        )
        if isinstance(outcome, Refused):
            self.values.put(f"seen:{ann_id}", version.encode())
            return self._refused(outcome, source, ann_id)
        self.publish(outcome)
        self.values.put(f"seen:{ann_id}", version.encode())
        self.counts.labels += 1
        ANSWERS.labels("published", "", source).inc()
        return "published"

    def _refused(self, refused: Refused, source: Source, ann_id: int | None = None) -> Answered:
        self.counts.refused[refused.reason] = self.counts.refused.get(refused.reason, 0) + 1
        ANSWERS.labels("refused", refused.reason, source).inc()
        log.info("annotation not a label", extra={"reason": refused.reason, "id": ann_id})
        return "refused"

    def _annotator(self, user: object) -> str | None:
        """Who annotated: the user's e-mail (or name). ``Unavailable`` while Label Studio
        cannot say; None (the label says ``user-<id>``) when it has no such user."""
        if not isinstance(user, int):
            return None
        if user not in self._annotators:
            try:
                found = self.studio.user(user)
            except Unavailable:
                raise
            except StudioError:
                return None
            self._annotators[user] = str(found.get("email") or found.get("username") or "")
        return self._annotators[user] or None

    def poll(self) -> int:
        """Read the annotated tasks updated since the last poll (all of them at the first)
        and publish the states not published yet (each read again first, so that a stale
        list publishes nothing older); returns the number of labels published."""
        published, newest = 0, ""
        since = self._poll_since
        for task in self.studio.annotated_tasks(self.policy.project, since or None):
            newest = max(newest, str(task.get("updated_at") or ""))
            for annotation in task.get("annotations") or []:
                if _version(annotation) <= self._published(int(annotation["id"])):
                    continue
                if self.annotated(int(annotation["id"]), "poll") == "published":
                    published += 1
        if newest:
            # A margin for writes that committed after a later one's timestamp was taken.
            self._poll_since = _earlier(newest, POLL_MARGIN_S)
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

    # --- webhooks ------------------------------------------------------------------------

    def on_webhook(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Take a webhook's payload: queue its annotations, count its deletions. Raises
        ValueError for a payload that is not one of Label Studio's."""
        action, ids = webhook_event(body)
        if action == "ANNOTATIONS_DELETED":
            with self._answering:
                self.counts.deleted += len(ids)
            ANSWERS.labels("deleted", "", "webhook").inc(len(ids))
            return {"deleted": len(ids)}
        queued = 0
        for ann_id in ids:
            try:
                self._queue.put_nowait(ann_id)
                queued += 1
            except queue.Full:  # the poll brings it
                log.warning("webhook queue full", extra={"annotation": ann_id})
        return {"queued": queued}

    def run_queue(self, stop: threading.Event) -> None:
        """Handle the webhooks' annotations until ``stop`` is set."""
        while not stop.is_set():
            try:
                ann_id = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.annotated(ann_id, "webhook")
            except Exception as exc:  # noqa: BLE001 -- one annotation never stops the worker
                log.warning(
                    "annotation left to the poll",
                    extra={"annotation": ann_id, "error": f"{type(exc).__name__}: {exc}"},
                )

    def handle_queued(self) -> None:
        """Handle what the webhooks have queued so far, in the caller's thread."""
        while not self._queue.empty():
            self.annotated(self._queue.get_nowait(), "webhook")
