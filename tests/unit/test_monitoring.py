"""Monitoring logic: windows from labelled predictions, PSI, and the retrain trigger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.monitoring.drift import psi
from services.monitoring.trigger import RetrainTrigger, TriggerPolicy
from services.monitoring.windows import Observation, WindowBook, WindowPolicy, summarise
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


def test_summary_counts_only_labelled_for_accuracy_and_everything_for_the_mix() -> None:
    window = summarise(
        [
            obs(0, "car", "car"),
            obs(1, "car", "truck", camera="cam-2", cond="night"),
            obs(2, "truck", "truck"),
            obs(3, "bus", None),
        ],
        CLASSES,
        model_name="m",
        model_version="v",
        window_id="v:live:1",
        kind="count",
        shadow=False,
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


def test_windows_close_by_label_count_with_stable_ids_and_a_reference_mix() -> None:
    book = WindowBook("m", "v", False, CLASSES, WindowPolicy(labelled_per_window=3))
    closed = [book.add(obs(i, "car", "car" if i % 2 == 0 else None)) for i in range(12)]
    windows = [w for w in closed if w is not None]
    assert [w.window_id for w in windows] == ["v:live:1", "v:live:2"]
    assert [w.sample_count for w in windows] == [5, 6]
    assert windows[0].psi is None and windows[1].psi == pytest.approx(0.0)
    replay = WindowBook("m", "v", False, CLASSES, WindowPolicy(labelled_per_window=3))
    again = [
        w
        for w in (replay.add(obs(i, "car", "car" if i % 2 == 0 else None)) for i in range(12))
        if w
    ]
    assert [w.window_id for w in again] == ["v:live:1", "v:live:2"]


def test_a_quiet_window_closes_by_time_once_it_has_enough_labels() -> None:
    book = WindowBook(
        "m",
        "v",
        True,
        CLASSES,
        WindowPolicy(labelled_per_window=100, max_window_s=60, min_labelled_time_window=2),
    )
    book.add(obs(0, "car", "car"))
    assert book.tick(T0 + timedelta(seconds=120)) is None  # one label only
    book.add(obs(1, "bus", "car"))
    assert book.tick(T0 + timedelta(seconds=30)) is None  # not old enough
    w = book.tick(T0 + timedelta(seconds=120))
    assert w is not None and w.window_kind == "time" and w.shadow and w.window_id == "v:shadow:1"


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


def test_a_restarted_trigger_replaying_the_windows_names_the_same_drop() -> None:
    windows = [window(1, 0.9), window(2, 0.4), window(3, 0.4)]
    keys = []
    for _ in range(2):
        trig = RetrainTrigger("m", TriggerPolicy(consecutive=2, cooldown_s=0))
        fired = [r for r in (trig.observe(w, T0) for w in windows) if r]
        keys.append([r.idempotency_key for r in fired])
    assert keys[0] == keys[1] == ["drop:m:v1:live:2"]
