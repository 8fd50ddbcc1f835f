"""The simulator's main loop: pace frames to the scenario's rate, hand out labels when due,
count everything. Publishing goes through the ``Sink`` port (Kafka in the service, a list in
tests)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from services.simulator.fleet import Annotators, Fleet, PlannedLabel, SimFrame
from shared.images import encode_image

__all__ = ["Simulator", "Sink", "Stats"]


class Sink(Protocol):
    def frame(self, frame: SimFrame, data: bytes, content_type: str) -> None: ...

    def label(self, label: PlannedLabel) -> None: ...

    def flush(self) -> None: ...


@dataclass
class Stats:
    """What a run sent so far."""

    frames: int = 0
    labels: int = 0
    requested_labels: int = 0
    wrong_labels: int = 0
    frames_by: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(class, condition) -> frames."""
    labels_by: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(true class, condition) -> labels."""
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.frames / elapsed if elapsed > 0 else 0.0

    def summary(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "labels": self.labels,
            "requested_labels": self.requested_labels,
            "wrong_labels": self.wrong_labels,
            "frames_by_class": _by(self.frames_by, 0),
            "frames_by_condition": _by(self.frames_by, 1),
            "labels_by_class": _by(self.labels_by, 0),
            "labels_by_condition": _by(self.labels_by, 1),
            "elapsed_s": round(time.monotonic() - self.started, 3),
        }


def _by(counts: Counter[tuple[str, str]], i: int) -> dict[str, int]:
    out: Counter[str] = Counter()
    for key, n in counts.items():
        out[key[i]] += n
    return dict(sorted(out.items()))


class Simulator:
    def __init__(
        self,
        fleet: Fleet,
        annotators: Annotators,
        sink: Sink,
        *,
        rate: float,
        content_type: str = "image/jpeg",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``rate`` is frames per second (0: as fast as possible)."""
        self.fleet = fleet
        self.annotators = annotators
        self.sink = sink
        self.rate = rate
        self.content_type = content_type
        self.stats = Stats()
        self._clock = clock
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def request_label(self, frame_id: str) -> bool:
        """A label request from ``labels.requests`` (any thread)."""
        return self.annotators.request(frame_id, self._clock())

    def _emit_due(self) -> None:
        for planned in self.annotators.due(self._clock()):
            self.sink.label(planned)
            self.stats.labels += 1
            self.stats.requested_labels += int(planned.requested)
            self.stats.wrong_labels += int(planned.label != planned.true_label)
            self.stats.labels_by[(planned.true_label, planned.condition)] += 1

    def run(
        self,
        *,
        max_frames: int | None = None,
        drain_labels: bool = True,
        on_progress: Callable[[Stats], None] | None = None,
        progress_every_s: float = 0.5,
    ) -> Stats:
        """Publish frames until ``max_frames`` or ``stop()``; then, when ``drain_labels``,
        wait for the labels still planned (stop() again cuts that short)."""
        start = self._clock()
        self.stats = Stats()
        last_progress = 0.0
        index = 0
        while not self._stop.is_set() and (max_frames is None or index < max_frames):
            if self.rate > 0:
                wait = start + index / self.rate - self._clock()
                if wait > 0:
                    self._stop.wait(min(wait, 0.05))
                    self._emit_due()
                    continue
            frame = self.fleet.frame(index)
            data = encode_image(frame.pixels, self.content_type)
            self.sink.frame(frame, data, self.content_type)
            self.annotators.observe(frame, self._clock())
            self.stats.frames += 1
            self.stats.frames_by[(frame.label, frame.condition)] += 1
            index += 1
            self._emit_due()
            if on_progress and self._clock() - last_progress >= progress_every_s:
                last_progress = self._clock()
                on_progress(self.stats)
        if drain_labels:
            self._stop.clear()
            while self.annotators.pending() and not self._stop.is_set():
                nxt = self.annotators.next_due()
                if nxt is not None:
                    self._stop.wait(max(0.0, min(nxt - self._clock(), 0.5)))
                self._emit_due()
                if on_progress and self._clock() - last_progress >= progress_every_s:
                    last_progress = self._clock()
                    on_progress(self.stats)
        self.sink.flush()
        if on_progress:
            on_progress(self.stats)
        return self.stats
