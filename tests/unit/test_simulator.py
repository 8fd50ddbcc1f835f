"""Scenarios, the fleet and the annotators, without Kafka."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from services.simulator.fleet import Annotators, Fleet, PlannedLabel, SimFrame
from services.simulator.render import CameraStyle, render_frame
from services.simulator.runner import Simulator
from services.simulator.scenario import (
    DarknessRamp,
    LabelPolicy,
    Scenario,
    ScheduleEntry,
    builtin_names,
    load,
)

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
    assert {"steady-day", "day-to-night", "fog-bank", "gradual-dusk"} <= set(builtin_names())
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


def test_a_camera_looks_the_same_in_every_scenario_of_its_site() -> None:
    # The demo bootstraps on labelled-day and then watches day-to-night: the same cameras,
    # though the two scenarios draw different frames.
    bootstrap, demo = load("labelled-day"), load("day-to-night")
    assert bootstrap.seed != demo.seed and bootstrap.site == demo.site == 0
    first, second = Fleet(bootstrap, CLASSES, run_id="a"), Fleet(demo, CLASSES, run_id="b")
    for cam in ("cam-1", "cam-4"):
        assert first.camera_style(cam) == second.camera_style(cam)
    assert first.camera_style("cam-1") != first.camera_style("cam-2")
    elsewhere = Fleet(demo.model_copy(update={"site": 5}), CLASSES, run_id="c")
    assert elsewhere.camera_style("cam-1") != second.camera_style("cam-1")
    with pytest.raises(ValidationError, match="site"):
        Scenario(name="x", site=-1)


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


def test_gradual_dusk_ramps_darkness_from_day_to_night_over_ten_minutes() -> None:
    dusk = load("gradual-dusk")
    for camera in dusk.camera_ids():
        before = dusk.entry_for(camera, 179.9)
        assert before.condition == "day" and before.darkness_at(179.9) is None
        levels = {t: dusk.entry_for(camera, t).darkness_at(t) for t in (180, 330, 480, 780, 3600)}
        assert levels == {180: 0.0, 330: 0.25, 480: 0.5, 780: 1.0, 3600: 1.0}


def test_frames_under_a_ramp_are_drawn_at_its_level_and_carry_day_dusk_or_night() -> None:
    scenario = load("gradual-dusk")
    fleet = Fleet(scenario, CLASSES, run_id="a")
    # 20 frames/s: the ramp starts at frame 3600 and ends at frame 15600.
    first = fleet.frame(3599)
    assert (first.condition, first.darkness) == ("day", None)
    by_index = {i: fleet.frame(i) for i in (3600, 6000, 9600, 13200, 15600, 20000)}
    assert [f.condition for f in by_index.values()] == [
        "day",
        "day",
        "dusk",
        "night",
        "night",
        "night",
    ]
    levels = [f.darkness for f in by_index.values()]
    assert levels == pytest.approx([0.0, 0.2, 0.5, 0.8, 1.0, 1.0])
    again = Fleet(scenario, CLASSES, run_id="b").frame(9600)
    assert np.array_equal(again.pixels, by_index[9600].pixels)
    assert again.label == by_index[9600].label
    # At full darkness the ramp draws exactly the night frame of the same generator state.
    night = by_index[20000]
    rng = np.random.default_rng([scenario.seed, 20000])
    rng.choice(len(CLASSES), p=scenario.class_weights(CLASSES))
    assert night.camera_id == "cam-1"
    style = CameraStyle.for_camera(0, scenario.site)
    assert np.array_equal(night.pixels, render_frame(night.label, "night", rng, style))


def test_the_recorded_condition_travels_with_the_labels() -> None:
    fleet = Fleet(load("gradual-dusk"), CLASSES, run_id="r")
    ann = Annotators(LabelPolicy(coverage=1.0, delay_s=0.0), CLASSES, seed=1)
    frame = fleet.frame(9601)
    ann.observe(frame, now=0.0)
    (label,) = ann.due(1.0)
    assert label.condition == frame.condition == "dusk"


def write_ramp(tmp_path: Path, ramp: str, extra: str = "") -> Path:
    path = tmp_path / "ramp.toml"
    path.write_text(f'name = "r"\n[[schedule]]\nat_s = 60\ndarkness = {ramp}\n{extra}')
    return path


@pytest.mark.parametrize(
    ("ramp", "extra", "message"),
    [
        ("{ from = 0.0, to = 1.0, over_s = 0 }", "", r"darkness\.over_s\s+Input should be greater"),
        ("{ from = 0.0, to = 1.5, over_s = 60 }", "", r"darkness\.to\s+Input should be less"),
        ("{ from = -1, to = 1.0, over_s = 60 }", "", r"darkness\.from\s+Input should be greater"),
        ("{ from = 0.0, to = 1.0 }", "", r"darkness\.over_s\s+Field required"),
        ("{ from = 0.0, to = 1.0, over = 60 }", "", r"darkness\.over\s+Extra inputs"),
        ('"night"', "", r"darkness\s+Input should be a valid dictionary"),
        (
            "{ from = 0.0, to = 1.0, over_s = 60 }",
            'condition = "night"',
            "give exactly one of condition, conditions or darkness",
        ),
    ],
)
def test_bad_ramps_are_refused_with_what_is_wrong(
    tmp_path: Path, ramp: str, extra: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        load(write_ramp(tmp_path, ramp, extra))


def test_a_ramp_can_run_either_way_and_has_no_fixed_condition_weights(tmp_path: Path) -> None:
    dawn = load(write_ramp(tmp_path, "{ from = 1, to = 0.2, over_s = 40 }"))
    (entry,) = dawn.schedule
    assert entry.darkness == DarknessRamp(start=1.0, end=0.2, over_s=40.0)
    assert [entry.darkness_at(t) for t in (60, 80, 100, 500)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    with pytest.raises(ValueError, match="no fixed condition weights"):
        entry.weights()
    assert ScheduleEntry(at_s=0, condition="fog").darkness_at(10) is None


def test_the_frames_labelled_unasked_have_the_class_mix_of_all_frames_under_a_ramp() -> None:
    """The coverage draw is independent of the frame's own draws, in the dusk's ramp (where
    the class is the frame generator's first draw) as in a schedule of conditions."""
    scenario = load("gradual-dusk")
    fleet = Fleet(scenario, CLASSES, run_id="r")
    for start in (0, 9600):  # day, then the middle of the ramp
        ann = Annotators(scenario.labels, CLASSES, seed=scenario.seed)
        labelled = [f for f in map(fleet.frame, range(start, start + 2000)) if ann.observe(f, 0.0)]
        cars = sum(f.label == "car" for f in labelled) / len(labelled)
        assert 0.26 < len(labelled) / 2000 < 0.34
        assert 0.48 < cars < 0.63, f"{cars:.2f} of the labelled frames are cars (5 in 9 drawn)"
