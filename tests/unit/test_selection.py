"""Label requests under a budget per camera and minute (``services.monitoring.selection``):
disagreements first, then the least confident, through the join and the monitor."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from services.monitoring.join import FrameJoin
from services.monitoring.monitor import Monitor, MonitorPolicy
from services.monitoring.selection import LabelSelector, SelectionPolicy
from services.monitoring.trigger import TriggerPolicy
from services.monitoring.windows import Observation
from shared.events import Label, Prediction

CLASSES = ("car", "truck", "bus", "motorcycle")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
BUDGET = SelectionPolicy(per_camera_minute=3, max_confidence=0.8)


def test_each_camera_minute_asks_for_disagreements_first_then_the_least_confident() -> None:
    sel = LabelSelector()
    asked = []
    confidences = [0.95, 0.5, 0.7, 0.3, 0.79, 0.81, 0.6]
    for i, c in enumerate(confidences):
        asked += sel.on_prediction(f"a{i}", "cam-1", c, T0 + timedelta(seconds=i), BUDGET)
    asked += sel.on_disagreement("a6", "cam-1", T0 + timedelta(seconds=8), "disagree", BUDGET)
    asked += sel.on_prediction("b0", "cam-2", 0.1, T0 + timedelta(seconds=9), BUDGET)
    assert asked == []  # nothing until the camera's minute is over
    asked = sel.on_prediction("a9", "cam-1", 0.2, T0 + timedelta(seconds=61), BUDGET)
    assert [(p.frame_id, p.confidence) for p in asked] == [("a6", None), ("a3", 0.3), ("a1", 0.5)]
    assert asked[0].reason == "disagree" and "least confident" in asked[1].reason
    # cam-2's minute is its own; a frame of a minute already chosen is not counted.
    assert sel.on_prediction("a10", "cam-1", 0.05, T0 + timedelta(seconds=30), BUDGET) == []
    later = sel.on_prediction("a11", "cam-1", 0.9, T0 + timedelta(seconds=125), BUDGET)
    assert [p.frame_id for p in later] == ["a9"]


def test_a_zero_budget_asks_for_nothing_and_a_restart_keeps_the_minute() -> None:
    off = SelectionPolicy(per_camera_minute=0)
    sel = LabelSelector()
    for i in range(100):
        assert sel.on_prediction(f"f{i}", "cam-1", 0.1, T0 + timedelta(seconds=i), off) == []
    sel = LabelSelector()
    sel.on_prediction("f1", "cam-1", 0.4, T0, BUDGET)
    again = LabelSelector.model_validate(sel.model_dump(mode="json"))
    again.on_prediction("f2", "cam-1", 0.3, T0 + timedelta(seconds=1), BUDGET)
    picks = again.on_prediction("f3", "cam-1", 0.3, T0 + timedelta(seconds=70), BUDGET)
    assert [p.frame_id for p in picks] == ["f2", "f1"]


def prediction(frame: str, version: str, cls: str, *, shadow: bool = False) -> Prediction:
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
    )


def test_the_join_passes_on_a_disagreement_once_and_only_before_the_label() -> None:
    join = FrameJoin(ttl_s=60)
    e, _ = join.on_prediction(None, prediction("f1", "v1", "car"), T0)
    e, out = join.on_prediction(e, prediction("f1", "v2", "bus", shadow=True), T0)
    dis = [j for j in out if j.kind == "disagreement"]
    assert len(dis) == 1 and dis[0].challenger == "v2" and dis[0].challenger_predicted == "bus"
    assert dis[0].observation.predicted == "car"
    _, out = join.on_prediction(e, prediction("f1", "v2", "bus", shadow=True), T0)
    assert out == []
    # Agreement, or a frame already labelled, asks for nothing.
    e, _ = join.on_prediction(None, prediction("f2", "v1", "car"), T0)
    _, out = join.on_prediction(e, prediction("f2", "v2", "car", shadow=True), T0)
    assert [j.kind for j in out] == ["prediction"]
    e, _ = join.on_label(None, Label(frame_id="f3", label="car"), T0)
    e, _ = join.on_prediction(e, prediction("f3", "v1", "car"), T0)
    _, out = join.on_prediction(e, prediction("f3", "v2", "bus", shadow=True), T0)
    assert "disagreement" not in [j.kind for j in out]


def test_the_monitor_spends_at_most_the_budget_per_camera_minute() -> None:
    policy = MonitorPolicy(
        trigger=TriggerPolicy(estimate="off"),
        requests=SelectionPolicy(per_camera_minute=5, max_confidence=0.8),
    )
    monitor = Monitor("m", CLASSES, policy)
    rng = random.Random(4)
    asked = []
    for i in range(20 * 60 * 3):  # three minutes at 20 frames/s over 4 cameras
        at = T0 + timedelta(seconds=i / 20)
        obs = Observation(
            frame_id=f"f{i}",
            camera_id=f"cam-{i % 4}",
            condition="day",
            predicted=rng.choice(CLASSES),
            confidence=rng.random(),
            served_at=at,
        )
        asked += monitor.on_prediction(obs, "v1", "live", at).label_requests
        if i % 7 == 0:
            asked += monitor.on_disagreement(obs, "v1", "v2", "bus").label_requests
    # Minutes 0 and 1 of each camera are chosen (minute 2 is still open): 4 x 2 x 5.
    assert len(asked) == 40 and len({q.frame_id for q in asked}) == 40
    by_reason = [q.reason.startswith("disagreement") for q in asked]
    assert sum(by_reason) == 40  # disagreements (one in 7 frames) fill every budget first
    assert "selection/" in monitor.take_dirty()
