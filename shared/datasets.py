"""Reading the training data log: every current example on the compacted ``examples`` topic.

``read_examples`` takes the end offset of every partition first and reads up to exactly
those offsets, so what it returns is a well-defined cut of the log (recorded in a dataset
snapshot as ``topic_offsets``). The topic is keyed by frame id, so the latest record of a
frame id wins (a corrected label replaces the old example) and a tombstone removes it,
whether or not compaction has run yet.

``split_of`` assigns each frame id, by a hash of the id alone, to ``train``, ``holdout`` or
``reference``. The assignment never changes, so no model version ever trains on a frame that
any version is scored on: champion and candidate compare fairly on the same holdouts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from kafka import KafkaConsumer, TopicPartition

from shared.events import DecodeError, Example, decode
from shared.settings import KafkaSettings
from shared.topics import Topics

__all__ = [
    "ExampleRecord",
    "ExampleTable",
    "Split",
    "read_examples",
    "split_of",
]

log = logging.getLogger(__name__)

Split = Literal["train", "holdout", "reference"]


def split_of(frame_id: str, holdout_share: float, reference_share: float) -> Split:
    """Where a frame belongs, from the first 8 bytes of sha256(frame_id) as a number in [0, 1):
    below ``reference_share`` the fixed reference holdout, then ``holdout_share`` for the
    fresh holdout, the rest trains."""
    bucket = int.from_bytes(hashlib.sha256(frame_id.encode()).digest()[:8], "big") / 2**64
    if bucket < reference_share:
        return "reference"
    if bucket < reference_share + holdout_share:
        return "holdout"
    return "train"


@dataclass(frozen=True)
class ExampleRecord:
    """One example without its pixels; ``index`` is its row in ``ExampleTable.pixels``."""

    frame_id: str
    camera_id: str
    label: str
    condition: str | None
    captured_at: datetime
    labelled_at: datetime
    partition: int
    offset: int
    index: int


@dataclass
class ExampleTable:
    """The current examples up to ``end_offsets`` (partition -> offset of the next record)."""

    records: list[ExampleRecord]
    pixels: npt.NDArray[np.uint8]
    end_offsets: dict[int, int]
    skipped: dict[str, int] = field(default_factory=dict)
    """Records left out, by reason (``schema``, ``wrong_size``, ``unknown_class``...)."""

    def __len__(self) -> int:
        return len(self.records)

    def select(self, records: Iterable[ExampleRecord]) -> npt.NDArray[np.uint8]:
        """The pixels of ``records``, stacked in their order."""
        rows = [r.index for r in records]
        return self.pixels[np.asarray(rows, dtype=np.int64)] if rows else self.pixels[:0]


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
    height, width, channels = shape
    frame_bytes = height * width * channels
    allowed = set(classes) if classes is not None else None
    name = settings.topic_prefix + topic
    consumer = KafkaConsumer(
        enable_auto_commit=False,
        group_id=None,
        fetch_max_bytes=32 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        **settings.client_kwargs(),
    )
    try:
        partitions = consumer.partitions_for_topic(name) or set()
        tps = [TopicPartition(name, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends: dict[TopicPartition, int] = consumer.end_offsets(tps)
        starts: dict[TopicPartition, int] = consumer.beginning_offsets(tps)
        total = sum(max(ends[tp] - starts[tp], 0) for tp in tps)
        latest: dict[str, tuple[ExampleRecord, bytes] | None] = {}
        skipped: dict[str, int] = {}
        read = 0
        next_report = 5000
        remaining = {tp for tp in tps if ends[tp] > starts[tp]}
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {name} did not reach its end offsets in {timeout_s}s")
            polled = consumer.poll(timeout_ms=500, max_records=2000)
            for tp, batch in polled.items():
                end = ends[tp]
                for rec in batch:
                    if rec.offset >= end:
                        continue
                    read += 1
                    _take(rec, tp.partition, latest, skipped, frame_bytes, shape, allowed)
            for tp in list(remaining):
                if consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if on_progress and read >= next_report:
                on_progress(read, total)
                next_report += 5000
        if on_progress:
            on_progress(read, total)
    finally:
        consumer.close()
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
        log.warning("examples skipped", extra={"topic": name, "skipped": skipped})
    return ExampleTable(records, pixels, {tp.partition: ends[tp] for tp in tps}, skipped)


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
