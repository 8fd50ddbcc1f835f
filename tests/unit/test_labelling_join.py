"""The frame/label join rules on a plain dict (the faust table's stand-in)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.labelling.join import Joiner, UnknownClassError
from shared.events import FrameValid, Label

CLASSES = ("car", "truck", "bus", "motorcycle")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def frame(fid: str) -> FrameValid:
    now = datetime.now(UTC)
    return FrameValid(
        frame_id=fid,
        camera_id="cam-1",
        captured_at=now,
        ingested_at=now,
        width=2,
        height=2,
        pixels=bytes(12),
        content_sha256="0" * 64,
        condition="fog",
    )


def test_whichever_half_comes_first_waits_and_the_pair_makes_one_example() -> None:
    table: dict[str, Any] = {}
    joiner = Joiner(CLASSES, clock=Clock())
    assert joiner.on_label(table, Label(frame_id="a", label="bus")) is None
    example = joiner.on_frame(table, frame("a"))
    assert example is not None and example.label == "bus" and example.condition == "fog"
    assert joiner.on_frame(table, frame("b")) is None
    late = joiner.on_label(table, Label(frame_id="b", label="car"))
    assert late is not None and late.frame_id == "b"


def test_corrections_replace_and_redeliveries_do_not_repeat() -> None:
    table: dict[str, Any] = {}
    joiner = Joiner(CLASSES, clock=Clock())
    joiner.on_frame(table, frame("a"))
    first = Label(frame_id="a", label="bus")
    assert joiner.on_label(table, first) is not None
    assert joiner.on_label(table, first) is None, "the same label event again"
    assert joiner.on_frame(table, frame("a")) is None, "the same frame again"
    fixed = joiner.on_label(table, Label(frame_id="a", label="truck"))
    assert fixed is not None and fixed.label == "truck"
    with pytest.raises(UnknownClassError):
        joiner.on_label(table, Label(frame_id="a", label="tram"))


def test_a_record_read_again_by_another_worker_emits_its_example_again() -> None:
    """A worker killed after it marked the entry emitted but before its producer sent the
    example: the worker that reads the records again sends the example again, once."""
    table: dict[str, Any] = {}
    killed, restarted = Joiner(CLASSES, clock=Clock()), Joiner(CLASSES, clock=Clock())
    label = Label(frame_id="a", label="bus")
    killed.on_frame(table, frame("a"))
    assert killed.on_label(table, label) is not None
    again = restarted.on_label(table, label)
    assert again is not None and (again.frame_id, again.label) == ("a", "bus")
    assert restarted.on_label(table, label) is None, "once per worker"
    assert restarted.on_frame(table, frame("a")) is None
    # the frame completed the pair: the frame read again completes it again
    killed.on_label(table, Label(frame_id="b", label="car"))
    assert killed.on_frame(table, frame("b")) is not None
    replayed = restarted.on_frame(table, frame("b"))
    assert replayed is not None and replayed.label == "car"
    # a label still waiting for its frame has nothing to re-send
    orphan = Label(frame_id="c", label="bus")
    assert killed.on_label(table, orphan) is None
    assert restarted.on_label(table, orphan) is None


def test_entries_expire_per_partition_after_their_time_to_live() -> None:
    clock = Clock()
    table: dict[str, Any] = {}
    joiner = Joiner(CLASSES, frame_ttl_s=60, label_ttl_s=30, clock=clock)
    joiner.on_frame(table, frame("unlabelled"), partition=0)
    joiner.on_label(table, Label(frame_id="orphan", label="car"), partition=1)
    clock.now += 31
    assert joiner.expire(table, partition=1).orphan_labels == 1
    assert joiner.expire(table, partition=0).unlabelled_frames == 0, "not yet"
    clock.now += 30
    assert joiner.expire(table, partition=1).unlabelled_frames == 0, "another partition's"
    assert joiner.expire(table, partition=0).unlabelled_frames == 1
    assert table == {}


class CountingTable(dict[str, Any]):
    """A dict that counts the entries read (each read decodes JSON in the faust table)."""

    reads = 0

    def get(self, key: str, default: Any = None) -> Any:
        self.reads += 1
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.reads += 1
        return super().__getitem__(key)


def test_a_sweep_reads_only_the_entries_that_fall_due() -> None:
    clock = Clock()
    table = CountingTable()
    joiner = Joiner(CLASSES, frame_ttl_s=60, label_ttl_s=60, clock=clock)
    for i in range(1000):
        joiner.on_frame(table, frame(f"f{i}"), partition=i % 2)
        clock.now += 0.01  # ten seconds of frames
    joiner.expire(table, partition=0)  # the first sweep of a partition indexes it once
    table.reads = 0
    clock.now += 50.5  # the first 50 frames' time has come
    gone = joiner.expire(table, partition=0).unlabelled_frames
    assert gone == 25 and len(table) == 975
    assert table.reads <= 2 * gone + 1, table.reads
    # A frame delivered again stays until its later expiry.
    joiner.on_frame(table, frame("f60"), partition=0)
    clock.now += 1
    joiner.expire(table, partition=0)
    assert "f60" in table and "f58" not in table and "f62" not in table


def test_entries_recovered_from_the_changelog_expire_too() -> None:
    clock = Clock()
    table: dict[str, Any] = {}
    writer = Joiner(CLASSES, frame_ttl_s=60, label_ttl_s=60, clock=clock)
    writer.on_frame(table, frame("a"), partition=1)
    writer.on_label(table, Label(frame_id="b", label="car"), partition=1)
    # Another worker (a restart, a rebalance) holds the recovered table.
    reader = Joiner(CLASSES, frame_ttl_s=60, label_ttl_s=60, clock=clock)
    clock.now += 61
    gone = reader.expire(table, partition=1)
    assert (gone.unlabelled_frames, gone.orphan_labels, table) == (1, 1, {})
    # And again after a later recovery that brought entries back.
    writer.on_frame(table, frame("c"), partition=1)
    reader.forget_due_times()
    clock.now += 61
    assert reader.expire(table, partition=1).unlabelled_frames == 1
