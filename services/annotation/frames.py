"""The frames a label request may name, kept for a while: the bridge reads ``frames.valid``
and ``predictions`` (the champion's) without a consumer group, from each partition's last
records at start, so every bridge process holds every recent frame and a restart loses none
that a pending request could name.

``RecentFrames`` is the bounded store (pure); ``FrameFollower`` fills it from Kafka on a
thread of its own and says how far it has read, so a request for a frame not read yet waits
for the follower instead of being refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.events import DecodeError, Event, FrameValid, Prediction, decode
from shared.reader import TopicReader
from shared.settings import KafkaSettings
from shared.topics import Topics

__all__ = ["FrameFollower", "KeptFrame", "RecentFrames"]

log = logging.getLogger("streamloop.annotation")


@dataclass
class KeptFrame:
    frame: FrameValid
    champion: tuple[str, float, str] | None = None
    """The champion's (class, confidence, version) on the frame, once its prediction is read."""


class RecentFrames:
    """The last ``capacity`` frames by id, oldest dropped first; a prediction read before its
    frame waits (bounded as well) until the frame comes."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._frames: OrderedDict[str, KeptFrame] = OrderedDict()
        self._early: OrderedDict[str, tuple[str, float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def add_frame(self, frame: FrameValid) -> None:
        with self._lock:
            kept = self._frames.pop(frame.frame_id, None)
            champion = self._early.pop(frame.frame_id, None) or (kept and kept.champion)
            self._frames[frame.frame_id] = KeptFrame(frame, champion or None)
            while len(self._frames) > self.capacity:
                self._frames.popitem(last=False)

    def add_prediction(self, prediction: Prediction) -> None:
        if prediction.shadow:
            return
        champion = (
            prediction.predicted_class,
            prediction.confidence,
            prediction.model_version,
        )
        with self._lock:
            kept = self._frames.get(prediction.frame_id)
            if kept is not None:
                kept.champion = champion
                return
            self._early[prediction.frame_id] = champion
            while len(self._early) > self.capacity:
                self._early.popitem(last=False)

    def get(self, frame_id: str) -> KeptFrame | None:
        with self._lock:
            return self._frames.get(frame_id)

    def __len__(self) -> int:
        return len(self._frames)


class FrameFollower:
    """Reads ``frames.valid`` and ``predictions`` into ``frames`` on a daemon thread, from
    each partition's last ``backlog`` records on, and knows up to when it has read every
    record (``caught_up_since``)."""

    def __init__(self, kafka: KafkaSettings, frames: RecentFrames, backlog: int) -> None:
        self.frames = frames
        self._reader = TopicReader(kafka, [Topics.FRAMES_VALID, Topics.PREDICTIONS], start=backlog)
        self._stop = threading.Event()
        self._caught_up_at = 0.0
        self._thread = threading.Thread(target=self._run, name="frame-follower", daemon=True)

    def start(self) -> FrameFollower:
        self._thread.start()
        return self

    def _run(self) -> None:
        # Caught up to time t0 once every partition's position has reached the end offset it
        # had at t0 (a steady stream never leaves a poll empty, so emptiness is no test).
        target: tuple[float, dict[Any, int]] | None = None
        try:
            while not self._stop.is_set():
                records = self._reader.poll(500)
                for rec in records:
                    self._keep(self._reader.logical(rec.topic), rec.value)
                if not records:
                    self._reader.refresh()  # a topic created after the bridge started
                if target is None and time.time() - self._caught_up_at >= 0.5:
                    target = (time.time(), self._reader.end_offsets())
                if target is None:
                    continue
                positions = self._reader.positions()
                if all(positions.get(tp, 0) >= end for tp, end in target[1].items()):
                    self._caught_up_at = target[0]
                    target = None
        except Exception:
            log.exception("frame follower stopped")
            raise

    def _keep(self, topic: str, value: bytes | None) -> None:
        if value is None:
            return
        try:
            event = decode(value, Event)
        except DecodeError as exc:  # not ours to dead-letter: the topics' owners do
            log.debug("skipped a record of %s: %s", topic, exc)
            return
        if isinstance(event, FrameValid):
            self.frames.add_frame(event)
        elif isinstance(event, Prediction):
            self.frames.add_prediction(event)

    def get(self, frame_id: str) -> KeptFrame | None:
        return self.frames.get(frame_id)

    def caught_up_since(self, when: datetime) -> bool:
        """True once every record published before ``when`` has been read."""
        return self._caught_up_at > when.timestamp()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._reader.close()
