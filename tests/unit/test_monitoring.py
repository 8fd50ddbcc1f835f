"""Monitoring logic: windows from labelled predictions, PSI, and the retrain trigger."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.monitoring.drift import psi
from services.monitoring.trigger import RetrainTrigger, TriggerPolicy
from services.monitoring.windows import (
    Closed,
    Observation,
    WindowAccumulator,
    WindowBook,
    WindowPolicy,
)
from shared.events import WindowMetrics

CLASSES = ("car", "truck", "bus", "motorcycle")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def obs(
    i: int, predicted: str, label: str | None, camera: str = "cam-1", cond: str = "day"
) -> Observation:
    return Observation(
        frame_id=f"f{i}",
        camera_id=camera,
        condition=cond,
        predicted=predicted,
        confidence=0.8,
        served_at=T0 + timedelta(seconds=i),
        label=label,
    )


POLICY = WindowPolicy(labelled_per_window=3, uncertain_per_camera=2)


def feed(book: WindowBook, o: Observation, policy: WindowPolicy = POLICY) -> Closed | None:
    """A prediction, then (when it has one) its label, as the join passes them on."""
    book.add_prediction(replace(o, label=None), T0, policy)
    return book.add_label(o, T0, policy, CLASSES) if o.label is not None else None


def test_a_window_counts_labels_for_accuracy_and_every_prediction_for_the_mix() -> None:
    acc = WindowAccumulator()
    observations = [
        obs(0, "car", "car"),
        obs(1, "car", "truck", camera="cam-2", cond="night"),
        obs(2, "truck", "truck"),
        obs(3, "bus", None),
    ]
    for o in observations:
        acc.add_prediction(replace(o, label=None), T0, keep_uncertain=2)
        if o.label is not None:
            acc.add_label(o, T0)
    window = acc.metrics(
        CLASSES,
        model_name="m",
        model_version="v",
        window_id="v:live:1",
        kind="count",
        shadow=False,
        reference=None,
    )
    assert window.sample_count == 4 and window.labelled_count == 3
    assert window.label_coverage == pytest.approx(0.75)
    assert window.accuracy == pytest.approx(2 / 3)
    car, truck = window.per_class["car"], window.per_class["truck"]
    assert (car.precision, car.recall, car.support) == (0.5, 1.0, 1)
    assert (truck.precision, truck.recall, truck.support) == (1.0, 0.5, 2)
    # macro-F1 over classes present in the labels only (car, truck).
    assert window.macro_f1 == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert window.per_slice_accuracy == {
        "camera=cam-1": 1.0,
        "camera=cam-2": 0.0,
        "condition=day": 1.0,
        "condition=night": 0.0,
    }
    assert window.class_mix == {"car": 0.5, "truck": 0.25, "bus": 0.25, "motorcycle": 0.0}
    assert window.psi is None
    assert window.window_start == T0 and window.window_end == T0 + timedelta(seconds=3)


def test_the_least_confident_frames_are_kept_per_camera() -> None:
    acc = WindowAccumulator()
    for i, conf in enumerate([0.9, 0.2, 0.7, 0.4, 0.95]):
        acc.add_prediction(replace(obs(i, "car", None), confidence=conf), T0, keep_uncertain=2)
    acc.add_prediction(replace(obs(9, "bus", None, camera="cam-2"), confidence=0.99), T0, 2)
    assert acc.uncertain == {"cam-1": [(0.2, "f1"), (0.4, "f3")], "cam-2": [(0.99, "f9")]}


def test_windows_close_by_label_count_with_stable_ids_and_a_reference() -> None:
    def run() -> list[WindowMetrics]:
        book = WindowBook(model_name="m", model_version="v", stream="live")
        closed = [feed(book, obs(i, "car", "car" if i % 2 == 0 else None)) for i in range(12)]
        return [c.metrics for c in closed if c is not None]

    windows = run()
    assert [w.window_id for w in windows] == ["v:live:1", "v:live:2"]
    assert [w.sample_count for w in windows] == [5, 6]
    assert windows[0].psi is None and windows[1].psi == pytest.approx(0.0)
    assert [w.window_id for w in run()] == ["v:live:1", "v:live:2"]  # a replay: same ids


def test_a_book_survives_a_round_trip_through_json() -> None:
    book = WindowBook(model_name="m", model_version="v", stream="live")
    for i in range(7):
        feed(book, obs(i, "car", "car" if i % 2 == 0 else None))
    again = WindowBook.model_validate_json(book.model_dump_json())
    assert again == book
    closed_a = feed(book, obs(7, "bus", "car"))
    closed_b = feed(again, obs(7, "bus", "car"))
    assert closed_a is None and closed_b is None
    a, b = feed(book, obs(8, "car", "car")), feed(again, obs(8, "car", "car"))
    assert a is not None and b is not None
    envelope = {"event_id", "produced_at"}
    assert a.metrics.model_dump(exclude=envelope) == b.metrics.model_dump(exclude=envelope)


def test_a_quiet_window_closes_by_time_once_it_has_enough_labels() -> None:
    policy = WindowPolicy(labelled_per_window=100, max_window_s=60, min_labelled_time_window=2)
    book = WindowBook(model_name="m", model_version="v", stream="shadow")
    feed(book, obs(0, "car", "car"), policy)
    assert book.tick(T0 + timedelta(seconds=120), policy, CLASSES) is None  # one label only
    feed(book, obs(1, "bus", "car"), policy)
    assert book.tick(T0 + timedelta(seconds=30), policy, CLASSES) is None  # not old enough
    closed = book.tick(T0 + timedelta(seconds=120), policy, CLASSES)
    assert closed is not None
    w = closed.metrics
    assert w.window_kind == "time" and w.shadow and w.window_id == "v:shadow:1"


def test_psi_is_zero_for_equal_mixes_and_grows_with_the_shift() -> None:
    day = {"car": 0.6, "truck": 0.2, "bus": 0.1, "motorcycle": 0.1}
    assert psi(day, day) == pytest.approx(0.0)
    mild = psi(day, {"car": 0.5, "truck": 0.25, "bus": 0.15, "motorcycle": 0.1})
    wild = psi(day, {"car": 0.1, "truck": 0.1, "bus": 0.1, "motorcycle": 0.7})
    assert 0 < mild < 0.1 < 0.25 < wild
    assert psi(day, {"car": 1.0}) > 1.0  # missing categories count as rare, not infinite


def window(
    i: int, accuracy: float, labels: int = 200, version: str = "v1", shadow: bool = False
) -> WindowMetrics:
    return WindowMetrics(
        model_name="m",
        model_version=version,
        window_id=f"{version}:live:{i}",
        window_kind="count",
        window_start=T0,
        window_end=T0,
        shadow=shadow,
        sample_count=labels * 3,
        labelled_count=labels,
        label_coverage=1 / 3,
        accuracy=accuracy,
    )


def test_a_drop_fires_once_after_consecutive_bad_windows() -> None:
    trig = RetrainTrigger("m", TriggerPolicy(threshold=0.75, consecutive=2, cooldown_s=0))
    now = T0
    assert trig.observe(window(1, 0.92), now) is None
    assert trig.observe(window(2, 0.50), now) is None  # one bad window: not yet
    req = trig.observe(window(3, 0.45), now)
    assert req is not None and req.trigger == "monitor"
    assert req.idempotency_key == "drop:m:v1:live:2" and req.window_ids == [
        "v1:live:2",
        "v1:live:3",
    ]
    assert trig.observe(window(4, 0.40), now) is None  # the same drop never fires twice


def test_a_request_names_the_slices_below_the_threshold_in_the_window_that_fired() -> None:
    trig = RetrainTrigger("m", TriggerPolicy(threshold=0.75, consecutive=1, cooldown_s=0))
    slices = {"camera=cam-00": 0.5, "camera=cam-01": 0.8, "condition=night": 0.3}
    bad = window(1, 0.5).model_copy(update={"per_slice_accuracy": slices})
    req = trig.observe(bad, T0)
    assert req is not None and req.slices == ["camera=cam-00", "condition=night"]


def test_small_windows_and_shadow_windows_do_not_count_and_recovery_resets() -> None:
    trig = RetrainTrigger("m", TriggerPolicy(consecutive=2, min_labels=100, cooldown_s=0))
    assert trig.observe(window(1, 0.3, labels=20), T0) is None
    assert trig.observe(window(2, 0.3, shadow=True), T0) is None
    assert trig.observe(window(3, 0.3), T0) is None
    assert trig.observe(window(4, 0.9), T0) is None  # recovered: the run restarts
    assert trig.observe(window(5, 0.3), T0) is None
    assert trig.observe(window(6, 0.3), T0) is not None


def test_cooldown_holds_a_second_drop_back() -> None:
    trig = RetrainTrigger("m", TriggerPolicy(consecutive=1, cooldown_s=600))
    assert trig.observe(window(1, 0.3), T0) is not None
    assert trig.observe(window(2, 0.9), T0 + timedelta(seconds=10)) is None
    assert trig.observe(window(3, 0.3), T0 + timedelta(seconds=20)) is None  # cooling down
    assert trig.observe(window(4, 0.9), T0 + timedelta(seconds=30)) is None
    assert trig.observe(window(5, 0.3), T0 + timedelta(seconds=700)) is not None


def test_a_drop_that_outlives_its_request_is_asked_for_again_a_bounded_number_of_times() -> None:
    policy = TriggerPolicy(consecutive=2, cooldown_s=300, retry_after_s=600, max_attempts=3)
    trig = RetrainTrigger("m", policy)
    at = [T0 + timedelta(seconds=s) for s in (0, 30, 400, 640, 1250, 1900, 2600)]
    fired = [trig.observe(window(i + 1, 0.3), t) for i, t in enumerate(at)]
    keys = [r.idempotency_key if r else None for r in fired]
    # Attempt 1 at the second bad window; the cooldown (300 s) is not enough for a retry of
    # the same drop (600 s); then two more attempts and no fourth.
    assert keys == [
        None,
        "drop:m:v1:live:1",
        None,
        "drop:m:v1:live:1:attempt-2",
        "drop:m:v1:live:1:attempt-3",
        None,
        None,
    ]
    assert fired[3] is not None and "attempt 2 of 3" in fired[3].reason


def test_a_trigger_restored_mid_drop_continues_its_attempts() -> None:
    policy = TriggerPolicy(consecutive=1, cooldown_s=0, retry_after_s=600, max_attempts=2)
    first = RetrainTrigger("m", policy)
    assert first.observe(window(1, 0.3), T0) is not None
    again = RetrainTrigger("m", policy)
    again.restore(json.loads(json.dumps(first.state())))
    assert again.observe(window(2, 0.3), T0 + timedelta(seconds=60)) is None
    retry = again.observe(window(3, 0.3), T0 + timedelta(seconds=700))
    assert retry is not None and retry.idempotency_key == "drop:m:v1:live:1:attempt-2"
    assert again.observe(window(4, 0.3), T0 + timedelta(seconds=1400)) is None
    # State written before retries existed ("fired_for") counts as one attempt each.
    old = RetrainTrigger("m", policy)
    old.restore({"run": ["v1:live:1"], "run_version": "v1", "fired_for": ["v1:live:1"]})
    assert old.observe(window(2, 0.3), T0) is not None


def test_a_restarted_trigger_replaying_the_windows_names_the_same_drop() -> None:
    windows = [window(1, 0.9), window(2, 0.4), window(3, 0.4)]
    keys = []
    for _ in range(2):
        trig = RetrainTrigger("m", TriggerPolicy(consecutive=2, cooldown_s=0))
        fired = [r for r in (trig.observe(w, T0) for w in windows) if r]
        keys.append([r.idempotency_key for r in fired])
    assert keys[0] == keys[1] == ["drop:m:v1:live:2"]


def test_the_drift_reference_grows_over_the_first_windows_until_it_holds_enough() -> None:
    """Windows of 4 predictions (3 labelled), a reference of at least 10: the first three
    windows make it, each weighted by its predictions, and only the fourth is compared."""
    policy = WindowPolicy(labelled_per_window=3, reference_samples=10)
    book = WindowBook(model_name="m", model_version="v1", stream="live")
    predicted = ["car"] * 4 + ["car", "car", "truck", "truck"] + ["bus"] * 4 + ["car"] * 4
    closed = []
    for i, p in enumerate(predicted):
        c = feed(book, obs(i, p, p if i % 4 else None), policy)
        if c is not None:
            closed.append(c)
        if i == 7:
            ref = book.reference
            assert ref is not None and ref.samples == 8 and not ref.complete(policy)
            assert ref.mix["car"] == pytest.approx(0.75) and ref.mix["truck"] == pytest.approx(0.25)
    assert len(closed) == 4
    ref = book.reference
    assert ref is not None and ref.complete(policy) and ref.window_id == "v1:live:3"
    assert ref.samples == 12 and ref.camera_samples == {"cam-1": 12}
    assert ref.mix == pytest.approx({"car": 0.5, "truck": 1 / 6, "bus": 1 / 3, "motorcycle": 0})
    # The fourth window's PSI is against all three: all cars, where a third were buses.
    last = closed[-1].metrics
    assert last.psi == pytest.approx(psi(ref.mix, last.class_mix))
