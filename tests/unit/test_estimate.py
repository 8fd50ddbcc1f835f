"""Estimated accuracy without labels (``services.monitoring.estimate``) and the trigger rule it
drives: how close, how sure, when it fires, and what labels then make of it."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from services.monitoring.drift import DriftPolicy
from services.monitoring.estimate import (
    EstimateAccumulator,
    EstimatePolicy,
    LabelPrior,
    chi_square_critical,
    normal_quantile,
)
from services.monitoring.monitor import Monitor, MonitorPolicy, Outputs
from services.monitoring.trigger import (
    Judgement,
    RetrainTrigger,
    TriggerPolicy,
    wilson_interval,
)
from services.monitoring.windows import Observation, WindowPolicy
from shared.events import AccuracyEstimate

CLASSES = ("car", "truck", "bus", "motorcycle")
PRIOR = {"car": 5 / 9, "truck": 2 / 9, "bus": 1 / 9, "motorcycle": 1 / 9}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def prior_of(weights: dict[str, float], labels: int = 1000) -> LabelPrior:
    return LabelPrior(counts={c: w * labels for c, w in weights.items()})


def test_quantiles_match_the_tables() -> None:
    assert normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert normal_quantile(0.01) == pytest.approx(-2.326348, abs=1e-6)
    assert chi_square_critical(1, 0.05) == pytest.approx(3.841, rel=0.03)
    assert chi_square_critical(3, 0.01) == pytest.approx(11.345, rel=0.02)
    assert chi_square_critical(9, 0.01) == pytest.approx(21.666, rel=0.02)
    with pytest.raises(ValueError):
        normal_quantile(1.0)


def calibrated_block(rng: random.Random, n: int, mean: float) -> tuple[EstimateAccumulator, int]:
    """``n`` predictions of a calibrated model (each right with its stated chance), the
    classes drawn from the prior: the accumulator and how many were right."""
    acc, right = EstimateAccumulator(), 0
    for _ in range(n):
        p = min(0.999, max(0.3, rng.gauss(mean, 0.08)))
        truth = rng.choices(CLASSES, weights=list(PRIOR.values()))[0]
        ok = rng.random() < p
        predicted = truth if ok else rng.choice([c for c in CLASSES if c != truth])
        acc.add(predicted, p)
        right += ok
    return acc, right


def test_a_calibrated_models_estimate_covers_its_accuracy_about_95_times_in_100() -> None:
    rng = random.Random(3)
    policy, prior = EstimatePolicy(), prior_of(PRIOR)
    covered, errors, capped = 0, [], 0
    for _ in range(400):
        acc, right = calibrated_block(rng, 200, 0.93)
        e = acc.estimate(CLASSES, prior, policy)
        assert e is not None
        covered += e.low <= right / 200 <= e.high
        errors.append(abs(e.value - right / 200))
        capped += e.method == "class-mix"
    assert 0.88 <= covered / 400 <= 0.99
    assert sum(errors) / len(errors) < 0.03
    # By day the predicted mix nearly matches the prior (its errors move it a little): the
    # mix bound rarely steps in, and when it does it is near the truth anyway (errors above).
    assert capped / 400 <= 0.10


def test_confident_but_collapsed_predictions_are_caught_by_the_class_mix() -> None:
    # A day model at night: every frame called "bus" at 0.99, right only on the buses.
    rng = random.Random(5)
    acc, right = EstimateAccumulator(), 0
    for _ in range(200):
        truth = rng.choices(CLASSES, weights=list(PRIOR.values()))[0]
        acc.add("bus", 0.99)
        right += truth == "bus"
    e = acc.estimate(CLASSES, prior_of(PRIOR), EstimatePolicy())
    assert e is not None and e.method == "class-mix"
    assert e.value == pytest.approx(1 / 9, abs=1e-9)
    assert abs(e.value - right / 200) < 0.06
    assert e.high < 0.75
    # Without a prior there is no bound, and calibration alone is fooled.
    blind = acc.estimate(CLASSES, None, EstimatePolicy())
    assert blind is not None and blind.method == "confidence" and blind.value > 0.98


def test_too_few_frames_give_no_estimate() -> None:
    acc = EstimateAccumulator()
    for _ in range(49):
        acc.add("car", 0.9)
    assert acc.estimate(CLASSES, None, EstimatePolicy(min_frames=50)) is None
    acc.add("car", 0.9)
    assert acc.estimate(CLASSES, None, EstimatePolicy(min_frames=50)) is not None


def test_the_label_prior_forgets_old_labels_at_its_half_life() -> None:
    prior = LabelPrior()
    for _ in range(100):
        prior.add("car", half_life=100)
    for _ in range(100):
        prior.add("bus", half_life=100)
    # 100 labels at a half-life of 100 weigh (1 - 1/2) / (1 - 2 ** -0.01) = 72.1 in all;
    # the cars then lose half of that to the 100 buses that follow.
    assert prior.counts["bus"] == pytest.approx(72.1, rel=0.01)
    assert prior.counts["car"] == pytest.approx(72.1 / 2, rel=0.01)
    assert prior.weight == pytest.approx(72.1 * 1.5, rel=0.01)


# --- the trigger rule, through the monitor -----------------------------------------------

POLICY = MonitorPolicy(
    window=WindowPolicy(labelled_per_window=90, uncertain_per_camera=5),
    trigger=TriggerPolicy(
        threshold=0.75,
        consecutive=2,
        min_labels=40,
        cooldown_s=600,
        estimate_frames=100,
        confirm_labels=40,
        estimate="fire",
        watch_labels=False,  # the estimate's rules alone; the labels' CUSUM: test_trigger_cusum
    ),
    drift=DriftPolicy(min_samples=50, label_requests_per_window=0),
)


class Fleet:
    """Frames as the monitor sees them, the classes drawn from ``PRIOR``. ``day``: right 95 %
    of the time, calibrated at about 0.95. ``night``: every frame called ``bus`` at 0.99
    (right 1 time in 9). ``dim``: right 95 % of the time but calibrated at about 0.5 (a model
    whose calibration does not hold: the estimate is wrong, the labels say so)."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.i = 0

    def frames(self, n: int, condition: str) -> list[Observation]:
        out = []
        for _ in range(n):
            self.i += 1
            truth = self.rng.choices(CLASSES, weights=list(PRIOR.values()))[0]
            if condition == "night":
                predicted, conf = "bus", 0.99
            else:
                right = self.rng.random() < 0.95
                predicted = truth if right else self.rng.choice([c for c in CLASSES if c != truth])
                conf = self.rng.uniform(0.9, 1.0) if condition == "day" else 0.5
            out.append(
                Observation(
                    frame_id=f"f{self.i}",
                    camera_id=f"cam-{self.i % 4 + 1}",
                    condition=condition,
                    predicted=predicted,
                    confidence=0.999,
                    calibrated=conf,
                    served_at=T0 + timedelta(seconds=self.i / 20),
                    label=truth if self.i % 3 == 0 else None,
                )
            )
        return out


def play(monitor: Monitor, observations: list[Observation], delay: int = 30) -> Outputs:
    """Predictions as they come, each label ``delay`` frames later (labels come late)."""
    out, waiting = Outputs(), []
    for o in observations:
        out.extend(monitor.on_prediction(o, "v1", "live", o.served_at))
        if o.label is not None:
            waiting.append(o)
        while waiting and (o.served_at - waiting[0].served_at).total_seconds() * 20 >= delay:
            out.extend(monitor.on_label(waiting.pop(0), "v1", "live", o.served_at))
    for w in waiting:
        out.extend(monitor.on_label(w, "v1", "live", w.served_at))
    return out


def kinds(out: Outputs) -> list[str]:
    return [a.kind for a in out.alerts]


def test_the_estimate_fires_before_the_labels_and_the_labels_confirm_it() -> None:
    monitor, fleet = Monitor("m", CLASSES, POLICY), Fleet()
    day = play(monitor, fleet.frames(900, "day"))
    assert day.retrains == [] and day.alerts == []
    windows = [w for w in day.windows if w.estimate is not None]
    assert windows and all(w.estimate_error is not None for w in windows)
    assert all(abs(w.estimate_error or 0) < 0.1 for w in windows)
    assert all(w.per_camera_estimate for w in windows)

    first = fleet.frames(120, "night")
    early = play(monitor, first)
    # Within the first full block of night (100 frames, 5 s), before any night label counted.
    assert len(early.retrains) == 1, early.retrains
    request = early.retrains[0]
    assert request.evidence is not None and request.evidence.method == "class-mix"
    assert request.evidence.high < 0.75 and request.window_ids == []
    assert request.idempotency_key == "drop:m:v1:live:est-10"
    assert "accuracy_drop_estimated" in kinds(early)
    assert request.slices == [f"camera=cam-{i}" for i in range(1, 5)]

    later = play(monitor, fleet.frames(900, "night"))
    assert later.retrains == []  # one request per drop: the label rule does not fire again
    assert kinds(later).count("estimate_confirmed") == 1
    assert monitor.trigger.confirmed == 1 and monitor.trigger.false_alarms == 0
    night_windows = [w for w in later.windows if w.accuracy is not None and w.accuracy < 0.5]
    assert len(night_windows) >= 2
    assert all(abs(w.estimate_error or 1) < 0.1 for w in night_windows[1:])


def test_a_request_the_labels_contradict_is_a_false_alarm_and_closes_the_drop() -> None:
    monitor, fleet = Monitor("m", CLASSES, POLICY), Fleet(2)
    play(monitor, fleet.frames(600, "day"))
    out = play(monitor, fleet.frames(600, "dim"))
    assert len(out.retrains) == 1 and out.retrains[0].evidence is not None
    assert out.retrains[0].evidence.method == "confidence"
    assert kinds(out).count("false_alarm") == 1
    alarm = next(a for a in out.alerts if a.kind == "false_alarm")
    assert alarm.details["accuracy"] >= 0.75 and alarm.details["false_alarms"] == 1
    assert monitor.trigger.false_alarms == 1 and monitor.trigger.confirmed == 0
    # The drop closed: once the cooldown has passed, a real drop fires again.
    assert monitor.trigger.state()["drops"] == {}


def test_without_the_estimate_rule_the_labels_fire_later() -> None:
    policy = POLICY.model_copy(
        update={"trigger": POLICY.trigger.model_copy(update={"estimate": "off"})}
    )
    monitor, fleet = Monitor("m", CLASSES, policy), Fleet()
    play(monitor, fleet.frames(900, "day"))
    assert play(monitor, fleet.frames(120, "night")).retrains == []
    late = play(monitor, fleet.frames(900, "night"))
    assert len(late.retrains) == 1 and late.retrains[0].evidence is None
    assert late.retrains[0].window_ids


def test_a_restarted_monitor_keeps_the_pending_judgement_and_the_open_drop() -> None:
    monitor, fleet = Monitor("m", CLASSES, POLICY), Fleet()
    play(monitor, fleet.frames(900, "day"))
    assert len(play(monitor, fleet.frames(110, "night")).retrains) == 1
    docs = monitor.take_dirty()
    again = Monitor("m", CLASSES, POLICY)
    again.load(docs.items())
    assert again.prior.counts == monitor.prior.counts
    out = play(again, fleet.frames(900, "night"))
    assert out.retrains == []
    assert kinds(out).count("estimate_confirmed") == 1


def test_a_steady_day_never_fires_on_the_estimate() -> None:
    monitor, fleet = Monitor("m", CLASSES, POLICY), Fleet(9)
    out = play(monitor, fleet.frames(20 * 60 * 5, "day"))  # five simulated minutes
    assert out.retrains == [] and out.alerts == []
    assert monitor.trigger.false_alarms == 0


def confirming() -> MonitorPolicy:
    return POLICY.model_copy(
        update={"trigger": POLICY.trigger.model_copy(update={"estimate": "confirm"})}
    )


def test_confirming_fires_on_the_first_labels_of_the_new_frames_before_the_windows_would() -> None:
    monitor, fleet = Monitor("m", CLASSES, confirming()), Fleet()
    play(monitor, fleet.frames(900, "day"))
    suspected = play(monitor, fleet.frames(110, "night"))
    assert suspected.retrains == [] and kinds(suspected) == ["accuracy_drop_estimated"]
    assert suspected.alerts[0].severity == "warning"
    night = fleet.frames(900, "night")
    out, fired_at = Outputs(), None
    for i in range(0, len(night), 10):
        out.extend(play(monitor, night[i : i + 10], delay=0))
        if out.retrains and fired_at is None:
            fired_at = i
    assert len(out.retrains) == 1 and fired_at is not None
    request = out.retrains[0]
    # Decisive on the first 20 labels (3 of them right): the Wilson interval at 99 % lies
    # wholly below 0.75, long before the 40 that decide in any case.
    assert request.evidence is not None and "confirmed by 20 labels" in request.reason
    # The confirming labels name the slice that fell: the night, on every camera.
    assert request.slices == [f"camera=cam-{i}" for i in range(1, 5)] + ["condition=night"]
    assert request.idempotency_key == "drop:m:v1:live:est-10"
    assert kinds(out).count("estimate_confirmed") == 1
    # 20 labels of night at one frame in three: about 60 frames after the suspicion, long
    # before two windows of 90 labels would have been bad.
    assert fired_at < 100
    # The windows' rule alone, on the same frames, fires much later.
    off_policy = POLICY.model_copy(
        update={"trigger": POLICY.trigger.model_copy(update={"estimate": "off"})}
    )
    off, again = Monitor("m", CLASSES, off_policy), Fleet()
    play(off, again.frames(900, "day"))
    late_night = again.frames(1010, "night")
    fired = [
        i
        for i in range(0, len(late_night), 10)
        if play(off, late_night[i : i + 10], delay=0).retrains
    ]
    assert len(fired) == 1 and fired[0] > 110 + fired_at + 150


def test_a_suspicion_the_labels_contradict_fires_nothing_and_counts_a_false_alarm() -> None:
    monitor, fleet = Monitor("m", CLASSES, confirming()), Fleet(2)
    play(monitor, fleet.frames(600, "day"))
    out = play(monitor, fleet.frames(600, "dim"))
    assert out.retrains == []
    assert kinds(out).count("accuracy_drop_estimated") == 1 and kinds(out).count("false_alarm") == 1
    assert monitor.trigger.false_alarms == 1


# --- judging a suspicion sequentially ----------------------------------------------------


def test_the_wilson_interval_matches_its_textbook_values() -> None:
    low, high = wilson_interval(50, 100, 0.95)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = wilson_interval(0, 20, 0.95)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.1611, abs=1e-4)
    low, high = wilson_interval(20, 20, 0.95)
    assert low == pytest.approx(0.8389, abs=1e-4) and high == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(0, 0, 0.95)


def suspicion_judged(accuracy: float, rng: random.Random, policy: TriggerPolicy) -> Judgement:
    """A suspected drop of v1, then labels right with probability ``accuracy`` until the
    trigger judges it."""
    trigger = RetrainTrigger("m", policy)
    low = AccuracyEstimate(value=0.2, low=0.1, high=0.3, frames=200, method="class-mix")
    assert trigger.observe_estimate("v1", "est-1", low, T0, [], T0) is not None
    for i in range(1, policy.confirm_labels + 1):
        at = T0 + timedelta(seconds=i)
        judged = trigger.observe_label("v1", at, rng.random() < accuracy, at)
        if judged is not None:
            assert judged.labelled == i
            return judged
    raise AssertionError("no judgement at confirm_labels")


def test_a_suspicion_is_judged_as_soon_as_the_labels_are_decisive_and_rarely_wrongly() -> None:
    """Simulated judgements (threshold 0.75, 99 % Wilson interval from 20 labels, at most
    100): a night the model gets right 30 % of the time is confirmed on 20 labels; a model
    right 95 % of the time is called a false alarm within about 40; a true accuracy at the
    threshold goes to the full hundred about as often as not, and the early verdicts are
    seldom wrong."""
    policy = TriggerPolicy(confirm_min_labels=20, confirm_labels=100)
    rng = random.Random(5)
    night = [suspicion_judged(0.30, rng, policy) for _ in range(2000)]
    assert all(j.confirmed for j in night)
    assert sorted(j.labelled for j in night)[1000] == 20  # the median
    fine = [suspicion_judged(0.95, rng, policy) for _ in range(2000)]
    # Wrongly confirmed: a model right 95 % of the time, "confirmed" as a drop.
    assert sum(j.confirmed for j in fine) / len(fine) <= 0.01
    assert sorted(j.labelled for j in fine)[1000] <= 45
    # Just above the threshold (0.85): early verdicts in either direction stay rare errors.
    near = [suspicion_judged(0.85, rng, policy) for _ in range(2000)]
    early_confirmed = [j for j in near if j.confirmed and j.labelled < 100]
    assert len(early_confirmed) / len(near) <= 0.02
