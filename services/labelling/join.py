"""The frame/label join, without faust: what happens when a frame or a label arrives, and
when pending entries expire.

State is a mutable mapping ``frame_id -> entry`` (a faust table in the service, a dict in
tests); entries are plain JSON-able dicts so the table's changelog stays readable.

Rules:

- whichever of frame and label comes first waits in the table;
- when both are there, one ``Example`` is emitted; the frame stays until its expiry so that a
  corrected label (a second label for the same frame) emits a new example, which replaces the
  first on the compacted ``examples`` topic;
- the same label (or frame) delivered again emits nothing while the worker that emitted the
  example runs: its producer has it. Read again by another worker (or by this one restarted)
  it emits the same example again, since a worker killed before its producer flushed leaves
  the entry marked emitted (RocksDB keeps writes the changelog and the committed offsets have
  not caught up with) and the example lost. Compaction keeps one of the copies;
- a label naming a class outside the configured list is refused (``unknown_class``);
- an entry expires ``frame_ttl_s`` after its frame arrived, or ``label_ttl_s`` after a label
  that never met its frame arrived, whichever is later.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.events import Example, FrameValid, Label
from shared.expiry import ExpiryIndex

__all__ = ["Expired", "Joiner", "UnknownClassError"]

Entry = dict[str, Any]
SOURCE = "labelling"


class UnknownClassError(ValueError):
    """A label names a class that is not configured."""

    reason = "unknown_class"


@dataclass(frozen=True)
class Expired:
    """What one sweep removed."""

    unlabelled_frames: int = 0
    orphan_labels: int = 0
    labelled: int = 0


class Joiner:
    def __init__(
        self,
        classes: Iterable[str],
        *,
        frame_ttl_s: float = 900.0,
        label_ttl_s: float = 900.0,
        clock: Callable[[], float] = time.time,
        incarnation: str | None = None,
    ) -> None:
        """``incarnation`` names this joiner in the entries it marks emitted (default: a new
        random id, so each process is its own incarnation)."""
        self.classes = tuple(classes)
        self.incarnation = incarnation or uuid.uuid4().hex
        self._known = frozenset(self.classes)
        self.frame_ttl_s = frame_ttl_s
        self.label_ttl_s = label_ttl_s
        self._clock = clock
        self._due = ExpiryIndex(lambda e: float(e.get("expires_at", 0.0)))

    def pending(self) -> int:
        """Entries held, without counting the table (see ``ExpiryIndex.held``)."""
        return self._due.held()

    def forget_due_times(self) -> None:
        """The table was recovered from its changelog: rebuild the expiry index from it."""
        self._due.forget()

    def on_frame(
        self,
        table: MutableMapping[str, Entry],
        frame: FrameValid,
        partition: int = 0,
        *,
        traceparent: str | None = None,
    ) -> Example | None:
        """Hold ``frame``; return the example when its label is already there. ``partition``
        is the table partition the entry lives in (see ``expire``); ``traceparent``, the
        span that handled the frame, is kept for ``traceparents``."""
        held = table.get(frame.frame_id)
        entry = dict(held or {})
        entry["p"] = partition
        entry["frame"] = {
            "camera_id": frame.camera_id,
            "captured_at": frame.captured_at.isoformat(),
            "condition": frame.condition,
            "width": frame.width,
            "height": frame.height,
            "channels": frame.channels,
            "pixels_b64": base64.b64encode(frame.pixels).decode(),
        }
        if traceparent is not None:
            entry["frame"]["traceparent"] = traceparent
        entry["expires_at"] = max(
            float(entry.get("expires_at", 0.0)), self._clock() + self.frame_ttl_s
        )
        example = self._maybe_emit(frame.frame_id, entry)
        table[frame.frame_id] = entry
        self._due.add(frame.frame_id, entry, new=held is None)
        return example

    def on_label(
        self,
        table: MutableMapping[str, Entry],
        label: Label,
        partition: int = 0,
        *,
        traceparent: str | None = None,
    ) -> Example | None:
        """Hold ``label`` (replacing an earlier one); return the example when the frame is
        there. ``traceparent`` as for ``on_frame``. Raises ``UnknownClassError`` for a class
        outside the configured list."""
        if label.label not in self._known:
            raise UnknownClassError(
                f"label {label.label!r} is not one of the classes {list(self.classes)}"
            )
        held = table.get(label.frame_id)
        entry = dict(held or {})
        entry["p"] = partition
        if entry.get("label", {}).get("event_id") == label.event_id and (
            "frame" not in entry or self._emitted_here(entry)
        ):
            return None  # the same label event again, and nothing of it to re-send
        entry["label"] = {
            "event_id": label.event_id,
            "label": label.label,
            "labelled_at": label.labelled_at.isoformat(),
            "camera_id": label.camera_id,
        }
        if traceparent is not None:
            entry["label"]["traceparent"] = traceparent
        if "frame" not in entry:
            entry["expires_at"] = max(
                float(entry.get("expires_at", 0.0)), self._clock() + self.label_ttl_s
            )
        example = self._maybe_emit(label.frame_id, entry)
        table[label.frame_id] = entry
        self._due.add(label.frame_id, entry, new=held is None)
        return example

    def traceparents(self, table: MutableMapping[str, Entry], frame_id: str) -> list[str]:
        """The ``traceparent`` of the spans that handled the frame and the label held for
        ``frame_id`` (those that were given one), frame first."""
        entry = table.get(frame_id) or {}
        parts = (entry.get("frame"), entry.get("label"))
        return [p["traceparent"] for p in parts if isinstance(p, dict) and "traceparent" in p]

    def expire(self, table: MutableMapping[str, Entry], partition: int = 0) -> Expired:
        """Delete every entry of ``partition`` past its expiry; say what kinds were removed.
        Reads only the entries that fall due (see ``ExpiryIndex``), not the whole table."""
        now = self._clock()
        unlabelled = orphans = labelled = 0
        for key, entry in self._due.expired(table, partition, now):
            del table[key]
            if "frame" not in entry:
                orphans += 1
            elif "label" not in entry:
                unlabelled += 1
            else:
                labelled += 1
        return Expired(unlabelled, orphans, labelled)

    def _emitted_here(self, entry: Entry) -> bool:
        """This joiner emitted the example of the entry's current label."""
        label = entry.get("label") or {}
        return entry.get("emitted") == label.get("event_id") and (
            entry.get("emitted_by") == self.incarnation
        )

    def _maybe_emit(self, frame_id: str, entry: Entry) -> Example | None:
        frame, label = entry.get("frame"), entry.get("label")
        if frame is None or label is None or self._emitted_here(entry):
            return None
        entry["emitted"], entry["emitted_by"] = label["event_id"], self.incarnation
        return Example(
            frame_id=frame_id,
            camera_id=frame["camera_id"],
            label=label["label"],
            captured_at=datetime.fromisoformat(frame["captured_at"]),
            labelled_at=datetime.fromisoformat(label["labelled_at"]),
            condition=frame["condition"],
            width=frame["width"],
            height=frame["height"],
            channels=frame["channels"],
            pixels_b64=frame["pixels_b64"],
            source=SOURCE,
        )
