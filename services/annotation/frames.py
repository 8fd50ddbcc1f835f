"""The frames a label request may name, kept for a while: the bridge reads ``frames.valid``
and ``predictions`` (the champion's) without a consumer group, from each partition's last
records at start, so every bridge process holds every recent frame and a restart loses none
that a pending request could name.

``RecentFrames`` is the bounded store and ``CatchUp`` the rule of how far a reader has read
(both pure); ``FrameFollower`` fills the store from Kafka on a thread of its own and says how
far it has read, so a request for a frame not read yet waits
for the follower instead of being refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
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


class CatchUp:
    """Up to when a reader has read everything: a target is the time and the end offsets of
    the partitions then; once every position has reached its target's end, everything
    published before that time is read. (A steady stream never leaves a poll empty, so an
    empty poll is no test of it.)"""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self.caught_up_at = 0.0
        self._target: tuple[float, Mapping[Any, int]] | None = None

    def due(self, now: float) -> bool:
        """Whether to take a new target now (none pending, and the last met a while ago)."""
        return self._target is None and now - self.caught_up_at >= self.every_s

    def aim(self, now: float, ends: Mapping[Any, int]) -> None:
        self._target = (now, dict(ends))

    def observe(self, positions: Mapping[Any, int]) -> None:
        if self._target is None:
            return
        when, ends = self._target
        if all(positions.get(tp, 0) >= end for tp, end in ends.items()):
            self.caught_up_at, self._target = when, None


class FrameFollower:
    """Reads ``frames.valid`` and ``predictions`` into ``frames`` on a daemon thread, from
    each partition's last ``backlog`` records on, and knows up to when it has read every
    record (``caught_up_since``). A failure to read (Kafka away) is logged and retried; the
    reader never stops on one."""

    REFRESH_S = 10.0
    """How often partitions that appeared since (a topic created later) are looked for."""

    def __init__(self, kafka: KafkaSettings, frames: RecentFrames, backlog: int) -> None:
        self.frames = frames
        self._reader = TopicReader(kafka, [Topics.FRAMES_VALID, Topics.PREDICTIONS], start=backlog)
        self._stop = threading.Event()
        self._catch_up = CatchUp()
        self._thread = threading.Thread(target=self._run, name="frame-follower", daemon=True)

    def start(self) -> FrameFollower:
        self._thread.start()
        return self

    def _run(self) -> None:
        refreshed, backoff = time.monotonic(), 1.0
        while not self._stop.is_set():
            try:
                self._step()
                if time.monotonic() - refreshed > self.REFRESH_S:
                    self._reader.refresh()
                    refreshed = time.monotonic()
                backoff = 1.0
            except Exception as exc:  # noqa: BLE001 -- logged, and read again after a pause
                log.warning("reading frames failed; retrying", extra={"error": str(exc)})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _step(self) -> None:
        for rec in self._reader.poll(500):
            self._keep(self._reader.logical(rec.topic), rec.value)
        now = time.time()
        if self._catch_up.due(now):
            self._catch_up.aim(now, self._reader.end_offsets())
        self._catch_up.observe(self._reader.positions())

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

    def caught_up_since(self, when: float) -> bool:
        """True once every record published before ``when`` (``time.time()`` here) is read."""
        return self._catch_up.caught_up_at > when

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._reader.close()
