"""Scenarios, the fleet and the annotators, without Kafka."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from services.simulator.fleet import Annotators, Fleet, PlannedLabel, SimFrame
from services.simulator.runner import Simulator
from services.simulator.scenario import LabelPolicy, Scenario, builtin_names, load

CLASSES = ("car", "truck", "bus", "motorcycle")


class ListSink:
    def __init__(self) -> None:
        self.frames: list[tuple[SimFrame, bytes, str]] = []
        self.labels: list[PlannedLabel] = []

    def frame(self, frame: SimFrame, data: bytes, content_type: str) -> None:
        self.frames.append((frame, data, content_type))

    def label(self, label: PlannedLabel) -> None:
        self.labels.append(label)

    def flush(self) -> None:
        pass


def test_the_built_in_scenarios_load_and_unknown_names_say_what_exists(tmp_path: Path) -> None:
    assert {"steady-day", "day-to-night", "fog-bank"} <= set(builtin_names())
    for name in builtin_names():
        assert load(name).name == name
    with pytest.raises(FileNotFoundError, match="day-to-night"):
        load("no-such-scenario")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[schedule]]\nat_s = 0\ncondition = "snow"\n')
    with pytest.raises(ValidationError, match="unknown condition"):
        load(bad)


def test_the_schedule_applies_per_camera_and_the_latest_entry_wins() -> None:
    fog = load("fog-bank")
    assert fog.entry_for("cam-1", 60).condition == "day"
    assert fog.entry_for("cam-1", 130).condition == "fog"
    assert fog.entry_for("cam-2", 130).condition == "day"
    assert fog.entry_for("cam-4", 250).condition == "fog"
    assert fog.entry_for("cam-1", 700).weights() == {"day": 0.8, "fog": 0.2}


def test_frames_are_deterministic_for_a_seed_and_follow_the_schedule() -> None:
    scenario = load("day-to-night")
    a = Fleet(scenario, CLASSES, run_id="a")
    b = Fleet(scenario, CLASSES, run_id="b")
    assert np.array_equal(a.frame(17).pixels, b.frame(17).pixels)
    assert a.frame(17).label == b.frame(17).label
    other = Fleet(scenario.model_copy(update={"seed": 99}), CLASSES, run_id="a")
    assert not np.array_equal(a.frame(17).pixels, other.frame(17).pixels)
    # 20 frames/s: night falls at scenario second 180, i.e. frame 3600.
    assert {a.frame(i).condition for i in range(3590, 3600)} == {"day"}
    assert {a.frame(i).condition for i in range(3600, 3610)} == {"night"}
    assert [a.frame(i).camera_id for i in range(5)] == ["cam-1", "cam-2", "cam-3", "cam-4", "cam-1"]
    mix = Counter(a.frame(i).label for i in range(900))
    assert mix["car"] > mix["truck"] > mix["bus"] > 0, "the traffic mix weights are honoured"


def test_annotators_label_the_coverage_after_the_delay_with_the_configured_noise() -> None:
    fleet = Fleet(load("steady-day"), CLASSES, run_id="r")
    policy = LabelPolicy(coverage=0.3, delay_s=10.0, jitter_s=2.0, noise=0.1)
    ann = Annotators(policy, CLASSES, seed=1)
    frames = [fleet.frame(i) for i in range(2000)]
    planned = sum(ann.observe(f, now=0.0) for f in frames)
    assert 0.26 < planned / 2000 < 0.34
    assert ann.due(7.9) == []
    labels = ann.due(12.1)
    assert len(labels) == planned and all(8.0 <= lab.due <= 12.0 for lab in labels)
    wrong = sum(lab.label != lab.true_label for lab in labels)
    assert 0.05 < wrong / planned < 0.15


def test_requested_frames_are_labelled_once_and_unknown_ones_are_ignored() -> None:
    fleet = Fleet(load("steady-day"), CLASSES, run_id="r")
    ann = Annotators(LabelPolicy(coverage=0.0, delay_s=1.0), CLASSES, seed=1)
    frame = fleet.frame(3)
    ann.observe(frame, now=0.0)
    assert ann.request(frame.frame_id, now=0.0) is True
    assert ann.request(frame.frame_id, now=0.0) is False, "already labelled"
    assert ann.request("someone-elses-frame", now=0.0) is False
    (label,) = ann.due(5.0)
    assert label.requested and label.frame_id == frame.frame_id
    assert ann.requests_unknown == 1 and ann.requests_repeated == 1


def test_a_run_publishes_every_frame_and_drains_its_labels() -> None:
    scenario = Scenario(name="t", seed=3, rate=0, labels=LabelPolicy(coverage=0.5, delay_s=0.05))
    fleet = Fleet(scenario, CLASSES, run_id="run", rate=20.0)
    sink = ListSink()
    sim = Simulator(fleet, Annotators(scenario.labels, CLASSES, 3), sink, rate=0)
    stats = sim.run(max_frames=200)
    assert stats.frames == len(sink.frames) == 200
    assert stats.labels == len(sink.labels) > 60
    assert {c for _, _, c in sink.frames} == {"image/jpeg"}
    assert len({f.frame_id for f, _, _ in sink.frames}) == 200
    assert sum(stats.summary()["frames_by_class"].values()) == 200  # type: ignore[attr-defined]
