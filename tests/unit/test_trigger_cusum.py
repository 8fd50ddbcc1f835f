"""The labels' own drop detector (``RetrainTrigger.watch_label``): a CUSUM over the champion's
labels raises a suspicion, and fresh labels judge it like an estimated one."""

from __future__ import annotations

import random
import statistics
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from services.monitoring.monitor import Monitor, MonitorPolicy, Outputs
from services.monitoring.trigger import RetrainTrigger, Suspicion, TriggerPolicy
from services.monitoring.windows import Observation, WindowPolicy

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CLASSES = ["bus", "car", "motorcycle", "truck"]


def at(i: int) -> datetime:
    return T0 + timedelta(seconds=i / 6)


def alarms(trigger: RetrainTrigger, accuracy: float, n: int, rng: random.Random) -> list[int]:
    """Feed ``n`` labels right with probability ``accuracy``; the label counts at which the
    sum crossed (each suspicion then closed at once, as a false alarm would close it)."""
    out = []
    for i in range(n):
        if trigger.watch_label("v1", at(i), rng.random() < accuracy) is not None:
            out.append(i)
            trigger._drops.clear()
            trigger._pending.clear()
    return out


def test_good_models_practically_never_raise_a_suspicion() -> None:
    """300,000 labels each (about 14 hours at 6 labels/s): a model right 95 % or 90 % of the
    time never crosses; one right 85 % of the time (``cusum_ok``) rarely."""
    rng = random.Random(1)
    policy = TriggerPolicy()
    assert alarms(RetrainTrigger("m", policy), 0.95, 300_000, rng) == []
    assert alarms(RetrainTrigger("m", policy), 0.90, 300_000, rng) == []
    assert len(alarms(RetrainTrigger("m", policy), 0.85, 300_000, rng)) <= 30


@pytest.mark.parametrize(("accuracy", "median_at_most"), [(0.55, 35), (0.30, 16)])
def test_a_drop_is_suspected_within_a_few_dozen_labels(
    accuracy: float, median_at_most: int
) -> None:
    rng = random.Random(2)
    delays = []
    for _ in range(500):
        trigger = RetrainTrigger("m")
        assert alarms(trigger, 0.97, 300, rng) == []
        found = alarms(trigger, accuracy, 200, rng)
        assert found, "a drop went unnoticed for 200 labels"
        delays.append(found[0] + 1)
    assert statistics.median(delays) <= median_at_most


def test_the_suspicion_is_judged_on_fresh_labels_and_fires_one_request() -> None:
    trigger, rng = RetrainTrigger("m"), random.Random(3)
    i, suspicion = 0, None
    for i in range(400):  # day
        assert trigger.watch_label("v1", at(i), rng.random() < 0.97) is None
    while suspicion is None:  # night: right half the time
        i += 1
        trigger.observe_label("v1", at(i), rng.random() < 0.5, at(i), ("condition=night",))
        suspicion = trigger.watch_label("v1", at(i), rng.random() < 0.5)
    assert isinstance(suspicion, Suspicion) and suspicion.source == "labels"
    assert suspicion.estimate is None and suspicion.request is None
    assert suspicion.drop.startswith("v1:labels:") and suspicion.labelled >= 10
    assert suspicion.accuracy is not None and suspicion.accuracy < 0.75
    # The labels that raised it do not judge it; the next ones do, from 20 on.
    judged, n = None, 0
    while judged is None:
        i, n = i + 1, n + 1
        right = rng.random() < 0.5
        judged = trigger.observe_label("v1", at(i), right, at(i), ("condition=night",))
        assert trigger.watch_label("v1", at(i), right) is None  # one drop at a time
    assert judged.confirmed and judged.source == "labels" and n >= 20
    assert judged.request is not None and judged.request.evidence is None
    assert judged.request.idempotency_key == f"drop:m:{suspicion.drop}"
    assert judged.request.slices == ["condition=night"]
    assert "its labels dropped; confirmed by" in judged.request.reason
    assert trigger.confirmed == 1 and trigger.false_alarms == 0


def test_a_suspicion_fresh_labels_contradict_is_a_false_alarm_and_the_watch_goes_on() -> None:
    trigger, rng = RetrainTrigger("m"), random.Random(4)
    for i in range(200):
        trigger.watch_label("v1", at(i), True)
    bad_luck = [trigger.watch_label("v1", at(200 + k), False) for k in range(12)]
    assert [s for s in bad_luck if s is not None], "twelve wrong answers in a row must alarm"
    judged = None
    for k in range(100):
        t = at(300 + k)
        judged = judged or trigger.observe_label("v1", t, rng.random() < 0.97, t)
    assert judged is not None and not judged.confirmed and judged.request is None
    assert trigger.false_alarms == 1 and trigger.state()["drops"] == {}
    # The estimate is not distrusted for what the labels' sum got wrong.
    assert trigger.state()["distrusted"] == []


def test_the_sum_survives_a_restart() -> None:
    trigger = RetrainTrigger("m")
    for k in range(5):
        trigger.watch_label("v1", at(k), False)
    again = RetrainTrigger("m")
    again.restore(trigger.state())
    assert again.state()["cusum"] == trigger.state()["cusum"]
    step = TriggerPolicy().cusum_step(False)
    assert again.state()["cusum"]["v1"]["sum"] == pytest.approx(5 * step)


def test_the_watch_can_be_turned_off_and_must_straddle_the_threshold() -> None:
    trigger = RetrainTrigger("m", TriggerPolicy(watch_labels=False))
    assert all(trigger.watch_label("v1", at(k), False) is None for k in range(100))
    with pytest.raises(ValidationError, match="cusum_bad"):
        TriggerPolicy(threshold=0.75, cusum_bad=0.8)
    with pytest.raises(ValidationError, match="cusum_ok"):
        TriggerPolicy(threshold=0.9, cusum_ok=0.85)


def test_through_the_monitor_a_night_the_estimate_misses_is_found_by_its_labels() -> None:
    """A night the day model gets right about half the time while its confidence and class mix
    look like a day's: no estimate suspects it; the labels do, then confirm it, long before
    two windows of 200 labels could."""
    policy = MonitorPolicy(window=WindowPolicy(labelled_per_window=200))
    monitor, rng, out = Monitor("m", CLASSES, policy), random.Random(5), Outputs()
    for i in range(1, 2001):
        night = i > 1000
        truth = rng.choice(CLASSES)
        right = rng.random() < (0.5 if night else 0.96)
        obs = Observation(
            frame_id=f"f{i}",
            camera_id=f"cam-{i % 4 + 1}",
            condition="night" if night else "day",
            predicted=truth if right else rng.choice([c for c in CLASSES if c != truth]),
            confidence=0.95,
            calibrated=0.95,
            served_at=at(i),
            label=truth,
        )
        out.extend(monitor.on_prediction(obs, "v1", "live", at(i)))
        out.extend(monitor.on_label(obs, "v1", "live", at(i)))
        if out.retrains:
            break
    kinds = [a.kind for a in out.alerts]
    assert "accuracy_drop_estimated" not in kinds
    assert kinds.count("accuracy_drop_suspected") == 1 and kinds.count("drop_confirmed") == 1
    assert len(out.retrains) == 1 and out.retrains[0].evidence is None
    assert i - 1000 < 150, i  # night labels until the request; the windows' rule needs 400
    assert "condition=night" in out.retrains[0].slices
