"""The demo's bookkeeping: what counts as before, lowest, recovered, and the milestones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.simulator.scenario import DarknessRamp, ScheduleEntry, load
from shared.events import (
    AccuracyEstimate,
    Alert,
    LiveComparison,
    ModelLifecycle,
    RetrainRequest,
    WindowMetrics,
)
from streamloop.demo import LoopStory, drift_complete_s, drift_onset_s

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def window(
    version: str, n: int, minute: float, accuracy: float, shadow: bool = False
) -> WindowMetrics:
    at = T0 + timedelta(minutes=minute)
    return WindowMetrics(
        produced_at=at,
        model_name="m",
        model_version=version,
        window_id=f"{version}:{'shadow' if shadow else 'live'}:{n}",
        window_kind="count",
        window_start=at - timedelta(seconds=30),
        window_end=at,
        shadow=shadow,
        sample_count=600,
        labelled_count=200,
        label_coverage=0.33,
        accuracy=accuracy,
    )


def crowned(version: str, minute: float) -> ModelLifecycle:
    return ModelLifecycle(
        produced_at=T0 + timedelta(minutes=minute),
        model_name="m",
        action="alias_set",
        alias="champion",
        model_version=version,
    )


def test_the_built_in_drift_starts_at_night() -> None:
    assert drift_onset_s(load("day-to-night")) == 180
    assert drift_onset_s(load("steady-day")) is None


def test_a_gradual_drift_starts_when_the_light_starts_to_fall() -> None:
    dusk = load("gradual-dusk")
    assert drift_onset_s(dusk) == 180
    held = ScheduleEntry(at_s=60, darkness=DarknessRamp(start=0.0, end=0.0, over_s=10))
    assert drift_onset_s(dusk.model_copy(update={"schedule": (held,)})) is None


def test_a_gradual_drift_is_complete_when_the_light_stops_falling() -> None:
    assert drift_complete_s(load("gradual-dusk")) == 180 + 600
    assert drift_complete_s(load("day-to-night")) == 180
    assert drift_complete_s(load("steady-day")) is None


def test_recovery_is_the_first_good_window_of_a_champion_promoted_after_the_drift() -> None:
    story = LoopStory("m", onset=T0 + timedelta(minutes=10))
    for i, acc in enumerate([0.96, 0.98, 0.97, 0.95], start=1):
        story.observe(window("v1", i, 7 + 0.5 * i, acc))
    story.observe(window("v1", 5, 10.8, 0.40))
    story.observe(
        Alert(
            produced_at=T0 + timedelta(minutes=10.8),
            severity="warning",
            kind="drift_detected",
            message="drift",
        )
    )
    story.observe(window("v1", 6, 11.2, 0.20))
    story.observe(
        RetrainRequest(
            produced_at=T0 + timedelta(minutes=11.2),
            model_name="m",
            idempotency_key="drop:m:v1:live:5",
            reason="drop",
            trigger="monitor",
        )
    )
    story.observe(window("v2", 1, 12.0, 0.90, shadow=True))
    story.observe(crowned("v2", 12.5))
    assert not story.report(0.9).recovered
    story.observe(window("v2", 1, 12.9, 0.80))  # opened before the promotion: not counted
    story.observe(window("v2", 2, 13.5, 0.85))  # below 0.9 x before
    assert not story.report(0.9).recovered
    story.observe(window("v2", 3, 14.0, 0.93))
    r = story.report(0.9)
    assert r.before is not None and abs(r.before - (0.98 + 0.97 + 0.95) / 3) < 1e-9
    assert r.lowest == 0.20 and r.after == 0.93 and r.recovered_version == "v2"
    assert r.drift_to_recovery_s == 240.0
    assert r.milestones_s == {
        "accuracy_drop": 48.0,
        "drift_alert": 48.0,
        "retrain": 72.0,
        "promoted": 150.0,
    }
    assert r.retrain_requests == ["drop:m:v1:live:5"] and r.champions == ["v2"]
    assert not story.unaffected()


def test_the_lowest_counts_night_windows_that_began_with_late_day_labels() -> None:
    # Labels come late: the first windows of the night also count day frames served before
    # the onset, so they begin before it. They are the drop, and a quick promotion may leave
    # no later window of the old champion.
    story = LoopStory("m", onset=T0 + timedelta(minutes=10))
    for i, acc in enumerate([0.96, 0.98, 0.97], start=1):
        story.observe(window("v1", i, 8 + 0.5 * i, acc))
    story.observe(window("v1", 4, 10.2, 0.33))  # window_start 30 s before: 9.7 min
    story.observe(crowned("v2", 10.8))
    story.observe(window("v2", 1, 11.5, 0.84))
    r = story.report(0.9)
    assert r.lowest == 0.33 and not r.recovered and r.after == 0.84


def test_a_champion_that_already_knows_the_night_is_unaffected() -> None:
    story = LoopStory("m", onset=T0 + timedelta(minutes=10))
    story.observe(window("v1", 1, 9, 0.97))
    for i in range(2, 4):
        story.observe(window("v1", i, 9 + i, 0.95))
    assert not story.unaffected()  # two windows after the onset only
    story.observe(window("v1", 4, 14, 0.94))
    assert story.unaffected()


def test_a_dusk_is_not_judged_unaffected_before_its_light_stops_falling() -> None:
    # Minutes into a gradual drift the frames still look like day: good windows then say
    # nothing about the night to come.
    story = LoopStory("m", onset=T0 + timedelta(minutes=10), complete=T0 + timedelta(minutes=20))
    for i in range(1, 8):
        story.observe(window("v1", i, 10 + i, 0.95))
    assert not story.unaffected()
    for i in range(8, 11):
        story.observe(window("v1", i, 13 + i, 0.94))  # starting at minutes 20.5 to 22.5
    assert story.unaffected()


def test_early_comparisons_are_told_once_per_fifty_labels() -> None:
    story = LoopStory("m")
    for n in [1, 2, 4, 7, 11, 49, 50, 51, 60, 100, 150]:
        story.observe(
            LiveComparison(
                model_name="m",
                champion_version="v1",
                challenger_version="v2",
                labelled=n,
                champion_correct=0,
                challenger_correct=n,
                champion_accuracy=0.0,
                challenger_accuracy=1.0,
                since=T0,
                until=T0,
            )
        )
    told = [line for line in story.lines if "live comparison" in line]
    assert [line.split(" on ")[1].split()[0] for line in told] == ["1", "50", "100", "150"]


def test_the_summary_sets_the_estimate_beside_the_realised_accuracy() -> None:
    def estimated(w: WindowMetrics, value: float) -> WindowMetrics:
        e = AccuracyEstimate(value=value, low=value - 0.03, high=value + 0.03, frames=600,
                             method="confidence")  # fmt: skip
        return w.model_copy(update={"estimate": e, "estimate_error": value - (w.accuracy or 0)})

    story = LoopStory("m", onset=T0 + timedelta(minutes=10))
    for i, (acc, est) in enumerate([(0.96, 0.94), (0.98, 0.95), (0.97, 0.96)], start=1):
        story.observe(estimated(window("v1", i, 7 + 0.5 * i, acc), est))
    story.observe(estimated(window("v1", 4, 10.8, 0.30), 0.36))
    for kind in ("accuracy_drop_estimated", "estimate_confirmed"):
        story.observe(
            Alert(
                produced_at=T0 + timedelta(minutes=10.5 if "drop" in kind else 10.7),
                severity="warning",
                kind=kind,
                message=kind,
            )
        )
    story.observe(crowned("v2", 12.5))
    story.observe(estimated(window("v2", 2, 13.5, 0.95), 0.90))
    r = story.report(0.9)
    assert r.recovered and r.estimated_after == 0.90 and r.estimated_lowest == 0.36
    assert r.estimated_before is not None and abs(r.estimated_before - 0.95) < 1e-9
    assert r.estimate_mae is not None and abs(r.estimate_mae - 0.034) < 1e-9
    assert r.milestones_s["suspected"] == 30.0 and r.milestones_s["confirmed"] == 42.0
    text = str(r.table().columns[0]._cells) + str(r.table().columns[1]._cells)
    assert "drop suspected (estimate or labels)" in text and "95.0 % / 36.0 % / 90.0 %" in text
