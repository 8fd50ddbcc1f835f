"""Shadow replay: a new challenger scored at once on the recent frames it has never seen.

A challenger is promoted on live evidence: its shadow predictions and the champion's on the
same frames, judged by their labels (the registry's sequential test). Labels come seconds
after their frames (10 ± 5 s in the simulator's scenarios), so a challenger that only
predicts the frames arriving after its adoption waits that long for its first evidence. Yet
the frames served between the moment its training examples were read (``ModelRef.data_cut``)
and its adoption are just as unseen by it, the champion has predicted them already, and many
of their labels have arrived. Scoring those frames too gives the comparison its evidence at
once.

When serving adopts a challenger whose lineage names its data cut, ``ShadowReplay`` reads
``frames.valid`` from the latest of three moments: the cut; when the champion began serving
(the comparison pairs the challenger with the current champion, so a frame the previous one
answered is of no use, and a predecessor put on probation replays nothing); and
``max_age_s`` before now. It reads up to the end offsets of the moment it starts (later
frames are served live, with the challenger), predicts them with the challenger in chunks of
``call_size`` and publishes the predictions to ``predictions.shadow`` as live shadow
predictions are published (``served_at`` is when the replay made them). Only frames ingested
at or after the cut are scored: an earlier frame may be one the challenger was trained on,
and scoring it would flatter the challenger. (A frame's example is published after its
label, which comes after the frame's ingest; so a frame ingested after the cut cannot be in
the snapshot, as long as ingest's and training's clocks agree to better than a frame's time
to its label.) A frame the live loop also scored with the
challenger (the loop behind the end offsets) is counted once: the monitor's join keeps a
frame's first shadow prediction. The replay publishes outside the loop's transactions, so
with exactly-once serving such a frame is on ``predictions.shadow`` twice. With several
ingress processes, each replays every partition; the join counts each frame once all the
same.

One replay runs at a time, on a thread of its own; a newer challenger, or ``stop``, ends the
one running at its next chunk. A replay that fails is logged and counted; the challenger's
live shadow goes on either way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Protocol

from prometheus_client import Counter

from services.serving.core import ModelRef, frame_pixels, to_predictions
from services.serving.ingress import Backend
from shared.events import DecodeError, FrameValid, decode, utcnow
from shared.ports import Publisher
from shared.reader import TopicReader
from shared.settings import KafkaSettings
from shared.topics import Topics

__all__ = ["FrameHistory", "KafkaFrameHistory", "ShadowReplay"]

log = logging.getLogger("streamloop.serving")

REPLAYED = Counter(
    "streamloop_serving_shadow_replayed",
    "Frames served before a challenger's adoption and scored by it (shadow replay).",
)
REPLAY_FAILURES = Counter(
    "streamloop_serving_shadow_replay_failures", "Shadow replays that failed."
)


class FrameHistory(Protocol):
    """The valid frames already published."""

    def since(self, at: datetime) -> Iterator[FrameValid]:
        """Frames published at or after ``at`` (by their record timestamps), up to the end
        of the topic when the call is made, in partition order."""
        ...


class KafkaFrameHistory:
    """``FrameHistory`` on ``frames.valid``, read without a consumer group."""

    def __init__(self, settings: KafkaSettings, timeout_s: float = 60.0) -> None:
        self._settings = settings
        self._timeout_s = timeout_s

    def since(self, at: datetime) -> Iterator[FrameValid]:
        with TopicReader(self._settings, [Topics.FRAMES_VALID], start="end") as reader:
            ends = reader.end_offsets()
            reader.seek_to_time(at)
            for rec in reader.until_end(ends, timeout_s=self._timeout_s):
                try:
                    yield decode(rec.value, FrameValid)
                except DecodeError:
                    continue  # ingest published it, so this is another writer's record


class ShadowReplay:
    """Scores a newly adopted challenger on the frames since its data cut (module docstring)."""

    def __init__(
        self,
        history: FrameHistory,
        backend: Backend,
        publisher: Publisher,
        *,
        max_age_s: float = 120.0,
        call_size: int = 64,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._history = history
        self._backend = backend
        self._publisher = publisher
        self._max_age = timedelta(seconds=max_age_s)
        self._call_size = call_size
        self._clock = clock
        self._lock = threading.Lock()
        self._wanted: str | None = None
        """The version whose replay may run; any other stops at its next chunk."""

    def follow(
        self, challenger: tuple[ModelRef, tuple[str, ...]] | None, champion_since: datetime
    ) -> None:
        """The ingress's ``on_challenger``: replay for a new challenger, stop for none."""
        if challenger is None:
            self.stop()
        else:
            self.start(*challenger, champion_since=champion_since)

    def start(
        self,
        ref: ModelRef,
        classes: tuple[str, ...],
        *,
        champion_since: datetime | None = None,
    ) -> threading.Thread | None:
        """Replay for ``ref`` on a daemon thread; None when there is nothing to replay
        (replay off, or no data cut in its lineage)."""
        since = self.since(ref, champion_since)
        with self._lock:
            self._wanted = ref.version if since is not None else None
        if since is None:
            return None
        thread = threading.Thread(
            target=self._run_logged, args=(ref, classes, since), name="shadow-replay", daemon=True
        )
        thread.start()
        return thread

    def stop(self) -> None:
        with self._lock:
            self._wanted = None

    def since(self, ref: ModelRef, champion_since: datetime | None = None) -> datetime | None:
        """Where ``ref``'s replay starts: its data cut, but not before the champion began
        serving (``champion_since``: the comparison pairs the challenger with the champion)
        nor more than ``max_age_s`` ago; None when it has none to replay."""
        if ref.data_cut is None or self._max_age <= timedelta(0):
            return None
        floor = self._clock() - self._max_age
        return max(ref.data_cut, floor, champion_since or floor)

    def _run_logged(self, ref: ModelRef, classes: tuple[str, ...], since: datetime) -> None:
        try:
            self.run(ref, classes, since)
        except Exception as exc:  # noqa: BLE001 -- logged; the live shadow does not need it
            REPLAY_FAILURES.inc()
            log.warning(
                "shadow replay failed; the challenger's live shadow goes on",
                extra={"version": ref.version, "error": f"{type(exc).__name__}: {exc}"},
            )

    def run(self, ref: ModelRef, classes: tuple[str, ...], since: datetime) -> int:
        """Score ``ref`` on the frames ingested at or after ``since``; the number scored."""
        started, scored = time.perf_counter(), 0
        chunks: dict[tuple[int, int, int], list[FrameValid]] = {}
        wanted = True
        for frame in self._history.since(since):
            if frame.ingested_at < since:
                continue
            chunk = chunks.setdefault((frame.height, frame.width, frame.channels), [])
            chunk.append(frame)
            if len(chunk) == self._call_size:
                wanted = self._score(ref, classes, chunk)
                if not wanted:
                    break
                scored += len(chunk)
                chunk.clear()
        for chunk in chunks.values() if wanted else ():
            if chunk and self._score(ref, classes, chunk):
                scored += len(chunk)
        self._publisher.flush()
        log.info(
            "shadow replay done",
            extra={
                "version": ref.version,
                "since": since.isoformat(),
                "frames": scored,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        return scored

    def _score(self, ref: ModelRef, classes: tuple[str, ...], frames: list[FrameValid]) -> bool:
        """Predict and publish one chunk; False (and nothing done) once the replay is no
        longer wanted."""
        with self._lock:
            if self._wanted != ref.version:
                return False
        probs = self._backend.submit(ref, frame_pixels(frames)).result()
        served_at = self._clock()
        predictions = to_predictions(frames, probs, classes, ref, served_at=served_at, shadow=True)
        for pred in predictions:
            self._publisher.publish(Topics.PREDICTIONS_SHADOW, pred, key=pred.camera_id)
        REPLAYED.inc(len(predictions))
        return True
