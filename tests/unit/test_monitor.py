"""The monitor as a whole: join rules, windows into trigger, drift and comparisons, restarts."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from services.monitoring.drift import DriftPolicy
from services.monitoring.join import FrameJoin
from services.monitoring.monitor import Monitor, MonitorPolicy, Outputs
from services.monitoring.selection import SelectionPolicy
from services.monitoring.trigger import TriggerPolicy
from services.monitoring.windows import Observation, WindowPolicy
from shared.events import Label, Prediction

CLASSES = ("car", "truck", "bus", "motorcycle")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def prediction(
    frame: str, version: str = "v1", *, shadow: bool = False, cls: str = "car"
) -> Prediction:
    return Prediction(
        frame_id=frame,
        camera_id="cam-1",
        captured_at=T0,
        model_name="m",
        model_version=version,
        predicted_class=cls,
        probabilities={cls: 0.9},
        confidence=0.9,
        served_at=T0,
        latency_from_capture_ms=1.0,
        latency_from_ingest_ms=1.0,
        shadow=shadow,
        condition="day",
    )


def label(frame: str, cls: str = "car") -> Label:
    return Label(frame_id=frame, label=cls)


def test_the_join_passes_each_observation_on_once_whatever_the_order() -> None:
    join = FrameJoin(ttl_s=60)
    e, out = join.on_prediction(None, prediction("f1"), T0)
    assert [j.kind for j in out] == ["prediction"]
    e, out = join.on_label(e, label("f1"), T0)
    assert [(j.kind, j.stream, j.observation.label) for j in out] == [("label", "live", "car")]
    e, out = join.on_prediction(e, prediction("f1"), T0)  # redelivered
    assert out == []
    e, out = join.on_prediction(e, prediction("f1", "v2", shadow=True, cls="bus"), T0)
    kinds = [(j.kind, j.stream) for j in out]
    assert kinds == [("prediction", "shadow"), ("label", "shadow"), ("pair", "live")]
    pair = out[-1]
    assert pair.version == "v1" and pair.challenger == "v2" and pair.challenger_correct is False
    assert join.on_label(e, label("f1", "bus"), T0)[1] == []  # the first label wins
    assert join.due_at(e) == (T0 + timedelta(seconds=60)).timestamp()


def test_a_label_that_comes_first_waits_for_its_prediction() -> None:
    join = FrameJoin(ttl_s=60)
    e, out = join.on_label(None, label("f2", "truck"), T0)
    assert out == []
    _, out = join.on_prediction(e, prediction("f2", cls="car"), T0)
    assert [(j.kind, j.observation.label) for j in out] == [
        ("prediction", None),
        ("label", "truck"),
    ]


def test_a_label_that_answers_a_request_is_passed_on_as_requested_to_both_streams() -> None:
    join = FrameJoin(ttl_s=60)
    e, _ = join.on_prediction(None, prediction("f3"), T0)
    e, _ = join.on_label(e, Label(frame_id="f3", label="car", requested=True), T0)
    _, out = join.on_prediction(e, prediction("f3", "v2", shadow=True), T0)
    assert [(j.kind, j.observation.requested) for j in out] == [
        ("prediction", False),
        ("label", True),
        ("pair", True),
    ]
    restored = Observation.from_json(out[1].observation.to_json())
    assert restored.requested
    _, out = join.on_label(join.on_prediction(None, prediction("f4"), T0)[0], label("f4"), T0)
    assert [j.observation.requested for j in out] == [False]


POLICY = MonitorPolicy(
    # The first window is the drift reference (a growing one: tests/unit/test_monitoring.py).
    window=WindowPolicy(labelled_per_window=50, uncertain_per_camera=5, reference_samples=1),
    # The windows' rule alone (the estimate's rule: tests/unit/test_estimate.py; the labels'
    # CUSUM: tests/unit/test_trigger_cusum.py).
    trigger=TriggerPolicy(
        threshold=0.75,
        consecutive=2,
        min_labels=40,
        cooldown_s=600,
        estimate="off",
        watch_labels=False,
    ),
    drift=DriftPolicy(min_samples=50, label_requests_per_window=6),
    requests=SelectionPolicy(per_camera_minute=0),  # the drift's requests alone here
    compare_every=25,
)


class Stream:
    """A camera fleet as the monitor sees it: day frames a day model gets right with high
    confidence, night frames it mostly gets wrong (and calls ``truck``) with low confidence."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.i = 0

    def observations(self, n: int, condition: str) -> list[Observation]:
        out = []
        for _ in range(n):
            self.i += 1
            truth = self.rng.choice(CLASSES)
            if condition == "day":
                predicted, conf = truth, self.rng.uniform(0.85, 1.0)
            else:
                right = self.rng.random() < 0.4
                predicted, conf = (truth if right else "truck"), self.rng.uniform(0.3, 0.6)
            out.append(
                Observation(
                    frame_id=f"f{self.i}",
                    camera_id=f"cam-{self.i % 4 + 1}",
                    condition=condition,
                    predicted=predicted,
                    confidence=conf,
                    served_at=T0 + timedelta(seconds=self.i / 20),
                    label=truth if self.i % 3 == 0 else None,
                )
            )
        return out


def play(monitor: Monitor, observations: list[Observation], version: str = "v1") -> Outputs:
    out = Outputs()
    for o in observations:
        now = o.served_at
        out.extend(monitor.on_prediction(o, version, "live", now))
        if o.label is not None:
            out.extend(monitor.on_label(o, version, "live", now))
    return out


def test_a_steady_day_gives_windows_and_nothing_else() -> None:
    monitor = Monitor("m", CLASSES, POLICY)
    out = play(monitor, Stream().observations(1200, "day"))
    assert len(out.windows) == 8
    assert all(w.accuracy == 1.0 and w.psi is not None for w in out.windows[1:])
    assert out.retrains == [] and out.alerts == [] and out.label_requests == []


def test_night_fires_one_retrain_one_drift_alert_and_asks_for_the_least_confident_frames() -> None:
    monitor = Monitor("m", CLASSES, POLICY)
    stream = Stream()
    day = play(monitor, stream.observations(600, "day"))
    night = play(monitor, stream.observations(900, "night"))
    assert day.retrains == [] and day.alerts == []
    bad = [w for w in night.windows if w.accuracy is not None and w.accuracy < 0.75]
    assert len(bad) >= 4
    assert len(night.retrains) == 1
    request = night.retrains[0]
    assert request.idempotency_key == f"drop:m:{request.window_ids[0]}"
    assert request.window_ids == [w.window_id for w in night.windows if w.accuracy < 0.75][:2]
    kinds = [a.kind for a in night.alerts]
    assert kinds.count("drift_detected") == 1 and kinds.count("accuracy_drop") == 1
    drift = next(a for a in night.alerts if a.kind == "drift_detected")
    assert "PSI" in drift.message or "confidence" in drift.message
    # Every drifting window asks for its least confident frames, spread over the cameras.
    asked = night.label_requests
    assert len(asked) >= 6 and len({q.frame_id for q in asked}) == len(asked)
    assert {q.camera_id for q in asked} == {"cam-1", "cam-2", "cam-3", "cam-4"}
    assert all(q.confidence is not None and q.confidence <= 0.6 for q in asked)


def test_a_restarted_monitor_never_fires_the_same_drop_twice() -> None:
    observations = Stream().observations(600, "day") + Stream(2).observations(900, "night")
    first = Monitor("m", CLASSES, POLICY)
    saved: dict[str, dict] = {}
    fired = []
    for i, o in enumerate(observations):
        out = play(first, [o])
        fired += out.retrains
        saved.update(first.take_dirty())
        if fired:
            cut = i + 1
            break
    else:
        raise AssertionError("no retrain request")
    # Restart right after the request: the new monitor loads the saved documents and sees
    # the rest of the drop.
    second = Monitor("m", CLASSES, POLICY)
    second.load(saved.items())
    later = play(second, observations[cut:])
    assert later.retrains == []
    assert later.windows[0].window_id.endswith(
        f":{int(fired[0].window_ids[-1].rsplit(':', 1)[1]) + 1}"
    )


def test_the_comparison_counts_the_same_frames_for_champion_and_challenger() -> None:
    monitor = Monitor("m", CLASSES, POLICY.model_copy(update={"compare_early": 0}))
    comparisons = []
    for i in range(60):
        out = monitor.on_pair(
            "v1", "v2", champion_correct=i % 2 == 0, challenger_correct=i % 5 != 0, at=T0
        )
        comparisons += out.comparisons
    assert [c.labelled for c in comparisons] == [25, 50]
    c = comparisons[-1]
    assert (c.champion_correct, c.challenger_correct) == (25, 40)
    assert c.champion_accuracy == 0.5 and c.challenger_accuracy == 0.8
    assert (c.champion_version, c.challenger_version) == ("v1", "v2")
    # Of the 50: i even and a multiple of 5 (champion alone right) is 5 frames; i odd and
    # not a multiple of 5 (challenger alone right) is 20.
    assert (c.champion_only, c.challenger_only) == (5, 20)
    assert c.challenger_only - c.champion_only == c.challenger_correct - c.champion_correct


def test_a_young_pair_is_compared_on_every_discordant_frame() -> None:
    # Only discordant frames move the registry's sequential test: while the pair has at most
    # ``compare_early`` labels, each of them is published at once, so a clear winner is
    # promoted within a dozen labels instead of waiting for the next ``compare_every``.
    policy = POLICY.model_copy(update={"compare_every": 25, "compare_early": 40})
    monitor = Monitor("m", CLASSES, policy)
    rng = random.Random(7)
    published: list[tuple[int, int, int]] = []
    discordant_at: list[int] = []
    for n in range(1, 101):
        champion, challenger = rng.random() < 0.5, rng.random() < 0.9
        if champion != challenger:
            discordant_at.append(n)
        out = monitor.on_pair(
            "v1", "v2", champion_correct=champion, challenger_correct=challenger, at=T0
        )
        published += [
            (c.labelled, c.champion_only or 0, c.challenger_only or 0) for c in out.comparisons
        ]
    early = [n for n in discordant_at if n <= 40]
    assert [n for n, _, _ in published] == sorted(set(early) | {25, 50, 75, 100})
    # Every published count is the cumulative one at that frame.
    for n, champion_only, challenger_only in published:
        assert champion_only + challenger_only == sum(1 for d in discordant_at if d <= n)
    # Bounded: at most ``compare_early`` extra comparisons, however long the pair lives.
    assert len(published) <= 40 + 100 // 25


def test_a_pair_saved_before_discordant_counts_loads_and_counts_from_there() -> None:
    monitor = Monitor("m", CLASSES, POLICY.model_copy(update={"compare_early": 0}))
    old = {
        "champion": "v1",
        "challenger": "v2",
        "labelled": 24,
        "champion_correct": 12,
        "challenger_correct": 20,
        "since": T0.isoformat(),
        "until": T0.isoformat(),
    }
    monitor.load([("pair/v1:v2", old)])
    [c] = monitor.on_pair(
        "v1", "v2", champion_correct=False, challenger_correct=True, at=T0
    ).comparisons
    assert (c.labelled, c.champion_correct, c.challenger_correct) == (25, 12, 21)
    assert (c.champion_only, c.challenger_only) == (0, 1)
    assert monitor.take_dirty()["pair/v1:v2"]["challenger_only"] == 1


def test_a_camera_seen_a_handful_of_times_in_a_window_is_not_drift_but_a_full_camera_is() -> None:
    # While a backlog drains, a window can close with only a few frames of one camera; a
    # few unsure ones must not read as that camera's drift.
    policy = POLICY.model_copy(update={"drift": DriftPolicy(min_samples=50)})
    rng = random.Random(3)
    i = 0

    def window(cam_1: int, cam_1_confidence: float) -> list[Observation]:
        nonlocal i
        out = []
        cams = ["cam-1"] * cam_1 + [f"cam-{2 + k % 3}" for k in range(150 - cam_1)]
        for cam in cams:
            i += 1
            truth = rng.choice(CLASSES)
            out.append(
                Observation(
                    frame_id=f"f{i}",
                    camera_id=cam,
                    condition="day",
                    predicted=truth,
                    confidence=cam_1_confidence if cam == "cam-1" else rng.uniform(0.9, 1.0),
                    served_at=T0 + timedelta(seconds=i / 20),
                    label=truth if i % 3 == 0 else None,
                )
            )
        return out

    monitor = Monitor("m", CLASSES, policy)
    first = play(monitor, window(40, 0.95))
    few = play(monitor, window(3, 0.3))
    assert [w.sample_count for w in first.windows + few.windows] == [150, 150]
    assert few.alerts == []
    many = play(monitor, window(40, 0.6))
    assert [a.kind for a in many.alerts] == ["drift_detected"]
    assert "confidence fell on cam-1" in many.alerts[0].message
