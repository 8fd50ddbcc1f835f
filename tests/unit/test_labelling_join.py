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
        pixels_b64="AAAAAAAAAAAAAAAA",
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
