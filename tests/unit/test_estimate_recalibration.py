"""The estimate recalibrated by the labels already in (``LabelledBias``): it follows a model
that is surer than it is right, per camera, one label delay late, and never uses a
prediction's own label."""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.monitoring.estimate import EstimateAccumulator, EstimatePolicy, LabelledBias
from services.monitoring.monitor import Monitor, MonitorPolicy
from services.monitoring.windows import Observation, WindowBook, WindowPolicy

CLASSES = ("car", "truck", "bus", "motorcycle")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_camera_surer_than_it_is_right_is_corrected_and_the_others_are_not() -> None:
    policy = EstimatePolicy()
    bias, rng = LabelledBias(), random.Random(3)
    for _ in range(300):
        bias.add("cam-1", 0.9, rng.random() < 0.45, policy)  # fog: says 0.9, right 45 %
        for cam in ("cam-2", "cam-3", "cam-4"):
            bias.add(cam, 0.9, rng.random() < 0.9, policy)  # day: calibrated
    fog, day = bias.chance("cam-1", 0.9, policy), bias.chance("cam-2", 0.9, policy)
    assert fog.p == pytest.approx(0.45, abs=0.15)
    assert day.p == pytest.approx(0.9, abs=0.1)
    assert 0 < fog.sd < 0.2
    # A camera without labels of its own takes the version's correction.
    version = bias.correction("cam-9", policy).p
    assert -0.2 < version < 0.0
    off = policy.model_copy(update={"recalibrate": False})
    assert bias.chance("cam-1", 0.9, off).p == 0.9
    assert LabelledBias().chance("cam-1", 0.9, policy).p == 0.9  # no labels: no correction


def test_few_labels_shrink_the_correction_towards_none() -> None:
    policy = EstimatePolicy(bias_prior_labels=10.0)
    bias = LabelledBias()
    for _ in range(3):
        bias.add("cam-1", 0.9, False, policy)
    # Three misses say -0.9 each; ten pseudo-labels of none make the version's about -0.2.
    assert bias.correction("cam-2", policy).p == pytest.approx(-0.9 * 3 / 13)
    assert -0.9 < bias.correction("cam-1", policy).p < -0.3
    for _ in range(200):
        bias.add("cam-1", 0.9, False, policy)
    # Many labels: the whole correction, whatever the decay.
    assert bias.correction("cam-1", policy).p == pytest.approx(-0.9, abs=0.05)


def test_the_correction_widens_the_interval() -> None:
    plain, corrected = EstimateAccumulator(), EstimateAccumulator()
    for _ in range(200):
        plain.add("car", 0.6)
        corrected.add("car", 0.6, 0.05)
    policy = EstimatePolicy()
    a = plain.estimate(CLASSES, None, policy)
    b = corrected.estimate(CLASSES, None, policy)
    assert a is not None and b is not None
    assert a.value == b.value
    assert (b.high - b.low) > 1.5 * (a.high - a.low)


def _day_then_night(
    recalibrate: bool, seed: int, **estimate: float
) -> tuple[list[float], list[float]]:
    """A day model on four cameras: calibrated by day; at night it says 0.85 and is right
    45 % of the time. Twenty frames a second, 30 % labelled ten seconds (200 frames) late,
    windows of 100 labels. The absolute estimate errors of the day windows and of the
    night windows (those whose labels are all of the night)."""
    rng = random.Random(seed)
    policy = WindowPolicy(
        labelled_per_window=100,
        estimate=EstimatePolicy(recalibrate=recalibrate, **estimate),
    )
    book = WindowBook(model_name="m", model_version="v1", stream="live")
    pending: deque[tuple[int, Observation]] = deque()
    errors: dict[str, list[float]] = {"day": [], "night": []}
    for i in range(12_000):
        night = i >= 4_000
        at = T0 + timedelta(seconds=i / 20)
        truth = rng.choice(CLASSES)
        chance = 0.85 if night else min(0.99, max(0.5, rng.gauss(0.93, 0.05)))
        right_rate = 0.45 if night else chance
        predicted = (
            truth if rng.random() < right_rate else rng.choice([c for c in CLASSES if c != truth])
        )
        o = Observation(
            frame_id=f"f{i}",
            camera_id=f"cam-{i % 4 + 1}",
            condition="night" if night else "day",
            predicted=predicted,
            confidence=chance,
            served_at=at,
            calibrated=chance,
        )
        book.add_prediction(o, at, policy)
        if rng.random() < 0.3:
            pending.append((i + 200, replace(o, label=truth)))
        while pending and pending[0][0] <= i:
            _, labelled = pending.popleft()
            closed = book.add_label(labelled, at, policy, CLASSES)
            if closed is None or closed.metrics.estimate_error is None:
                continue
            conditions = {
                k for k in closed.metrics.per_slice_accuracy if k.startswith("condition=")
            }
            if len(conditions) == 1:
                errors[conditions.pop().split("=")[1]].append(abs(closed.metrics.estimate_error))
    return errors["day"], errors["night"]


def test_recalibrated_night_windows_are_estimated_near_the_floor_of_their_labels() -> None:
    runs = [_day_then_night(True, seed) for seed in range(1, 5)]
    plain = [_day_then_night(False, seed) for seed in range(1, 5)]
    night = statistics.fmean(e for _, n in runs for e in n)
    day = statistics.fmean(e for d, _ in runs for e in d)
    assert all(len(n) >= 20 and len(d) >= 8 for d, n in runs)
    # Without labels a confidently wrong model is 0.4 off at night.
    assert statistics.fmean(e for _, n in plain for e in n) > 0.3
    # A window's own accuracy, 100 labels at 0.45, is itself off its expectation by
    # sqrt(2 / pi) * sqrt(0.45 * 0.55 / 100) = 0.04 on average: no estimate does better.
    floor = (2 / math.pi) ** 0.5 * (0.45 * 0.55 / 100) ** 0.5
    assert night < floor + 0.03
    assert day < statistics.fmean(e for d, _ in plain for e in d) + 0.015


def night_car(chance: float) -> Observation:
    """A prediction of ``car`` at night on cam-1, calibrated to ``chance``."""
    return Observation(
        frame_id="f0",
        camera_id="cam-1",
        condition="night",
        predicted="car",
        confidence=chance,
        served_at=T0,
        calibrated=chance,
    )


def test_a_window_counts_the_corrections_it_opened_with() -> None:
    policy = WindowPolicy(labelled_per_window=100)
    book = WindowBook(model_name="m", model_version="v1", stream="live")
    o = night_car(0.9)
    book.add_prediction(o, T0, policy)
    for i in range(50):
        book.add_label(replace(o, frame_id=f"g{i}", label="bus"), T0, policy, CLASSES)
    # The labels say the camera's 0.9 is worth nothing: the version's chance falls now ...
    assert book.add_prediction(replace(o, frame_id="f1"), T0, policy).p < 0.3
    # ... and the open window, opened before them, still counts 0.9 for both predictions.
    assert book.open.estimate.p_sum == pytest.approx(1.8)
    for i in range(50, 100):  # the window closes on its 100th label
        book.add_label(replace(o, frame_id=f"g{i}", label="bus"), T0, policy, CLASSES)
    book.add_label(replace(o, frame_id="h0", label="bus"), T0, policy, CLASSES)
    # The next window takes the corrections of every label the closed one counted, and
    # none of its own (h0 came after the close).
    assert book.window_bias is not None and book.window_bias.labels == 100
    book.add_prediction(replace(o, frame_id="f2"), T0, policy)
    assert book.open.estimate.p_sum < 0.3


def test_a_version_promoted_from_shadow_starts_live_with_its_shadow_corrections() -> None:
    monitor = Monitor("m", CLASSES, MonitorPolicy())
    o = night_car(0.8)
    for i in range(60):  # right every time while it said 0.8: it undersells itself
        shadow = replace(o, frame_id=f"s{i}")
        monitor.on_prediction(shadow, "v2", "shadow", T0)
        monitor.on_label(replace(shadow, label="car"), "v2", "shadow", T0)
    monitor.on_prediction(replace(o, frame_id="l0"), "v2", "live", T0)
    assert monitor.books["v2:live"].open.estimate.p_sum > 0.95
    monitor.on_prediction(replace(o, frame_id="l1"), "v3", "live", T0)
    assert monitor.books["v3:live"].open.estimate.p_sum == pytest.approx(0.8)


def test_labels_that_answer_requests_count_in_accuracy_but_not_in_the_estimates_error() -> None:
    """Asked-for frames are the ones the model is least sure of: the window's accuracy counts
    them, but the estimate is of every frame, so its error is measured on the labels nobody
    asked for, and its corrections and class prior learn from those only."""
    policy = WindowPolicy(labelled_per_window=100)
    monitor = Monitor("m", CLASSES, MonitorPolicy(window=policy))
    o = night_car(0.9)
    for i in range(200):
        monitor.on_prediction(replace(o, frame_id=f"p{i}"), "v1", "live", T0)
    out = []
    for i in range(100):  # 70 at random, right 63 times (0.9); 30 asked for, all wrong
        asked = i >= 70
        right = not asked and i % 10 != 0
        obs = replace(o, frame_id=f"p{i}", label="car" if right else "bus", requested=asked)
        out += monitor.on_label(obs, "v1", "live", T0).windows
    (m,) = out
    assert m.accuracy == pytest.approx(0.63) and m.labelled_count == 100
    assert m.sampled_accuracy == pytest.approx(0.9) and m.sampled_count == 70
    assert m.estimate is not None and m.estimate.value == pytest.approx(0.9)
    assert m.estimate_error == pytest.approx(0.0)  # against all 100 labels it would be +0.27
    book = monitor.books["v1:live"]
    assert book.bias.labels == 70
    # 63 right and 7 wrong at 0.9 say the chances were right (all 100 would say 0.27 less).
    assert abs(book.bias.correction("cam-1", policy.estimate).p) < 0.02
    assert sum(monitor.prior.counts.values()) == pytest.approx(70, abs=2)  # decayed a little
    assert set(monitor.prior.counts) == {"car", "bus"}


def test_with_too_few_labels_at_random_the_error_is_measured_on_all_of_them() -> None:
    policy = WindowPolicy(labelled_per_window=100)
    book = WindowBook(model_name="m", model_version="v1", stream="live")
    o = night_car(0.9)
    for i in range(60):
        book.add_prediction(replace(o, frame_id=f"p{i}"), T0, policy)
    closed = None
    for i in range(100):  # 20 at random, all right; 80 asked for, half right
        obs = replace(o, frame_id=f"g{i}", label="car" if i < 60 else "bus", requested=i >= 20)
        closed = book.add_label(obs, T0, policy, CLASSES) or closed
    assert closed is not None
    m = closed.metrics
    assert (m.sampled_count, m.sampled_accuracy, m.accuracy) == (20, 1.0, 0.6)
    assert policy.estimate.error_min_labels > 20
    assert m.estimate is not None and m.estimate.value == pytest.approx(0.9)
    assert m.estimate_error == pytest.approx(0.9 - 0.6)
