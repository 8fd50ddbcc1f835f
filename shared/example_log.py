"""Reading the training data log: every current example on the compacted ``examples`` topic.

``read_examples`` (and each read of an ``ExampleLog``) takes the end offset of every
partition first and reads up to exactly those offsets, so what it returns is a well-defined
cut of the log (recorded in a dataset snapshot as ``topic_offsets``). The topic is keyed by
frame id, so the latest record of a frame id wins (a corrected label replaces the old
example) and a tombstone removes it, whether or not compaction has run yet.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from shared.datasets import ExampleRecord, ExampleTable
from shared.events import DecodeError, Example, decode
from shared.reader import TopicReader
from shared.settings import KafkaSettings, TaskSettings
from shared.topics import Topics

__all__ = ["ExampleLog", "examples_loader", "read_examples"]

log = logging.getLogger(__name__)


def read_examples(
    settings: KafkaSettings,
    *,
    shape: tuple[int, int, int],
    classes: Iterable[str] | None = None,
    topic: str = Topics.EXAMPLES,
    on_progress: Callable[[int, int], None] | None = None,
    timeout_s: float = 600.0,
) -> ExampleTable:
    """Every current example of ``topic`` (logical name; the settings' prefix is added).

    ``shape`` is (height, width, channels): examples of another size are skipped and counted.
    ``classes``, when given, skips examples whose label is not one of them.
    ``on_progress(read, total)`` is called every few thousand records.

    Raises TimeoutError when the end offsets are not reached within ``timeout_s``."""
    with ExampleLog(
        settings,
        shape=shape,
        classes=classes,
        topic=topic,
        on_progress=on_progress,
        timeout_s=timeout_s,
    ) as log_:
        return log_.read()


class ExampleLog:
    """The examples topic, read incrementally: each ``read()`` (or call) returns what
    ``read_examples`` would return at that moment's end offsets, but reads only the records
    appended since the previous call. A training run that waits for a drift's examples
    re-reads every few seconds, and evaluation reads once per candidate: neither decodes the
    whole log again. Keeps the latest example of every frame id in memory between calls.
    Thread-safe; close it (or use ``with``)."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        shape: tuple[int, int, int],
        classes: Iterable[str] | None = None,
        topic: str = Topics.EXAMPLES,
        on_progress: Callable[[int, int], None] | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        self._settings, self._topic, self._shape = settings, topic, shape
        self._allowed = set(classes) if classes is not None else None
        self._on_progress, self._timeout_s = on_progress, timeout_s
        self._reader: TopicReader | None = None
        self._latest: dict[str, tuple[ExampleRecord, bytes] | None] = {}
        self._skipped: dict[str, int] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> ExampleLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self) -> ExampleTable:
        return self.read()

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _open(self) -> TopicReader:
        self._latest, self._skipped = {}, {}
        return TopicReader(
            self._settings,
            [self._topic],
            fetch_max_bytes=32 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )

    def read(self) -> ExampleTable:
        """Every current example, reading what was appended since the last call."""
        with self._lock:
            if self._reader is None:
                self._reader = self._open()
            else:
                self._reader.refresh()
            ends = self._reader.end_offsets()
            positions = self._reader.positions()
            if any(ends[tp] < positions.get(tp, 0) for tp in ends):
                # The topic is shorter than what was read: it was deleted and made again.
                self._reader.close()
                self._reader = self._open()
                ends = self._reader.end_offsets()
            height, width, channels = self._shape
            for rec in self._reader.until_end(
                ends, timeout_s=self._timeout_s, on_progress=self._on_progress, max_records=2000
            ):
                _take(
                    rec,
                    rec.partition,
                    self._latest,
                    self._skipped,
                    height * width * channels,
                    self._shape,
                    self._allowed,
                )
            # A poll may have fetched past the cut; the next read starts at the cut.
            self._reader.seek(ends)
            return _table(self._latest, self._shape, ends, self._skipped, self._topic)


def _table(
    latest: dict[str, tuple[ExampleRecord, bytes] | None],
    shape: tuple[int, int, int],
    ends: dict[Any, int],
    skipped: dict[str, int],
    topic: str,
) -> ExampleTable:
    height, width, channels = shape
    kept = [v for v in latest.values() if v is not None]
    kept.sort(key=lambda v: (v[0].partition, v[0].offset))
    pixels = np.empty((len(kept), height, width, channels), dtype=np.uint8)
    records: list[ExampleRecord] = []
    for i, (rec, raw) in enumerate(kept):
        pixels[i] = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, channels)
        records.append(
            ExampleRecord(
                rec.frame_id,
                rec.camera_id,
                rec.label,
                rec.condition,
                rec.captured_at,
                rec.labelled_at,
                rec.partition,
                rec.offset,
                i,
            )
        )
    if skipped:
        log.warning("examples skipped", extra={"topic": topic, "skipped": dict(skipped)})
    return ExampleTable(
        records, pixels, {tp.partition: end for tp, end in ends.items()}, dict(skipped)
    )


def examples_loader(
    settings: KafkaSettings, task: TaskSettings, *, progress: logging.Logger | None = None
) -> ExampleLog:
    """An ``ExampleLog`` for the task's image size and classes, called as a function of
    nothing (what training and evaluation take); ``progress`` logs how far each read has
    come. Close it when the service stops."""
    shape = (task.image_height, task.image_width, 3)

    def report(read: int, total: int) -> None:
        if progress is not None:
            progress.info("reading examples", extra={"read": read, "total": total})

    return ExampleLog(settings, shape=shape, classes=task.classes, on_progress=report)


def _take(
    rec: Any,
    partition: int,
    latest: dict[str, tuple[ExampleRecord, bytes] | None],
    skipped: dict[str, int],
    frame_bytes: int,
    shape: tuple[int, int, int],
    allowed: set[str] | None,
) -> None:
    key = rec.key.decode(errors="replace") if rec.key is not None else None
    value = rec.value
    offset = rec.offset
    if value is None:
        if key is not None:
            latest[key] = None
        return
    try:
        ex = decode(value, Example)
    except DecodeError as exc:
        skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
        return
    if (ex.height, ex.width, ex.channels) != shape:
        skipped["wrong_size"] = skipped.get("wrong_size", 0) + 1
        return
    if allowed is not None and ex.label not in allowed:
        skipped["unknown_class"] = skipped.get("unknown_class", 0) + 1
        return
    try:
        raw = base64.b64decode(ex.pixels_b64, validate=True)
    except (binascii.Error, ValueError):
        skipped["bad_pixels"] = skipped.get("bad_pixels", 0) + 1
        return
    if len(raw) != frame_bytes:
        skipped["wrong_size"] = skipped.get("wrong_size", 0) + 1
        return
    record = ExampleRecord(
        ex.frame_id,
        ex.camera_id,
        ex.label,
        ex.condition,
        ex.captured_at,
        ex.labelled_at,
        partition,
        offset,
        -1,
    )
    latest[ex.frame_id] = (record, raw)
