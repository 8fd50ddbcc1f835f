from __future__ import annotations

import numpy as np
import pytest

from services.simulator.render import (
    CONDITIONS,
    DEFAULT_CLASSES,
    CameraStyle,
    condition_for_darkness,
    render_dusk,
    render_frame,
)

# A chroma-key camera: flat pure-green background, no lane lines, no sensor noise. Every part
# of a vehicle has some red or blue in it, so red + blue marks its silhouette exactly.
KEY = CameraStyle(
    sky=(0.0, 0.8, 0.0),
    verge=(0.0, 0.8, 0.0),
    road=(0.0, 0.8, 0.0),
    horizon=-0.2,
    road_top=-0.1,
    lane_offset=0.5,
    shoulder_line=False,
    noise=0.0,
)
UNKNOWN = "tractor"


def frames(condition: str, n: int = 40, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cams = [CameraStyle.for_camera(i, 3) for i in range(4)]
    return np.stack(
        [
            render_frame(DEFAULT_CLASSES[i % 4], condition, rng, cams[i % 4]).astype(np.float32)
            for i in range(n)
        ]
    )


def mean_silhouette(label: str, seed: int, n: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        f = render_frame(label, "day", rng, KEY).astype(np.int32)
        masks.append((f[..., 0] + f[..., 2]) > 24)
    mean: np.ndarray = np.mean(masks, axis=0)
    return mean


@pytest.mark.parametrize("condition", CONDITIONS)
def test_same_generator_state_gives_the_same_frame(condition: str) -> None:
    cam = CameraStyle.for_camera(2, 11)
    a = render_frame("truck", condition, np.random.default_rng(42), cam)
    b = render_frame("truck", condition, np.random.default_rng(42), cam)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("condition", CONDITIONS)
def test_other_seeds_and_successive_calls_differ(condition: str) -> None:
    a = render_frame("car", condition, np.random.default_rng(1))
    b = render_frame("car", condition, np.random.default_rng(2))
    assert not np.array_equal(a, b)
    rng = np.random.default_rng(1)
    render_frame("car", condition, rng)
    assert not np.array_equal(render_frame("car", condition, rng), a)


def test_unknown_class_is_deterministic_too() -> None:
    a = render_frame(UNKNOWN, "fog", np.random.default_rng(9))
    b = render_frame(UNKNOWN, "fog", np.random.default_rng(9))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("label", [*DEFAULT_CLASSES, UNKNOWN])
@pytest.mark.parametrize("condition", CONDITIONS)
def test_shape_and_dtype(label: str, condition: str) -> None:
    img = render_frame(label, condition, np.random.default_rng(0))
    assert img.shape == (64, 64, 3)
    assert img.dtype == np.uint8
    assert render_frame(label, condition, np.random.default_rng(0), size=48).shape == (48, 48, 3)


def test_night_is_darker_and_flatter_than_day_with_bright_lamps() -> None:
    day, night = frames("day"), frames("night")
    assert night.mean() < 0.5 * day.mean()
    assert night.std(axis=(1, 2, 3)).mean() < day.std(axis=(1, 2, 3)).mean()
    # Headlights stay saturated spots in an otherwise dark frame.
    assert (night.max(axis=(1, 2, 3)) >= 200).mean() > 0.9


def test_fog_has_lower_contrast_and_is_brighter_than_day() -> None:
    day, fog = frames("day"), frames("fog")
    assert fog.std(axis=(1, 2, 3)).mean() < 0.6 * day.std(axis=(1, 2, 3)).mean()
    assert fog.mean() > day.mean()


def test_rain_is_darker_than_day() -> None:
    assert frames("rain").mean() < 0.9 * frames("day").mean()


def test_unknown_condition_raises() -> None:
    with pytest.raises(ValueError, match="unknown condition"):
        render_frame("car", "snow", np.random.default_rng(0))


def test_bad_label_and_size_raise() -> None:
    with pytest.raises(ValueError):
        render_frame("", "day", np.random.default_rng(0))
    with pytest.raises(ValueError):
        render_frame("car", "day", np.random.default_rng(0), size=8)


def test_camera_styles_are_reproducible_and_distinct() -> None:
    assert CameraStyle.for_camera(3, 7) == CameraStyle.for_camera(3, 7)
    assert CameraStyle.for_camera(3, 7) != CameraStyle.for_camera(4, 7)
    assert CameraStyle.for_camera(3, 7) != CameraStyle.for_camera(3, 8)
    with pytest.raises(ValueError):
        CameraStyle.for_camera(-1, 7)


def test_each_class_has_its_own_silhouette() -> None:
    labels = [*DEFAULT_CLASSES, UNKNOWN]
    first = {c: mean_silhouette(c, 1) for c in labels}
    second = {c: mean_silhouette(c, 2) for c in labels}
    # Two independent samples of one class give the noise floor of the comparison.
    noise = {c: float(np.abs(first[c] - second[c]).mean()) for c in labels}
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            gap = float(np.abs(first[a] - second[b]).mean())
            floor = max(noise[a], noise[b])
            assert gap > 1.5 * floor, (a, b, gap, floor)


def test_silhouette_key_sees_the_vehicle() -> None:
    area = mean_silhouette("car", 3, n=10).mean()
    assert 0.05 < area < 0.5


DUSK_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.mark.parametrize("label", [*DEFAULT_CLASSES, UNKNOWN])
def test_dusk_at_its_ends_is_exactly_day_and_night(label: str) -> None:
    cam = CameraStyle.for_camera(1, 4)
    for seed in range(3):
        for darkness, condition in ((0.0, "day"), (1.0, "night")):
            dusk = render_dusk(label, darkness, np.random.default_rng(seed), cam)
            plain = render_frame(label, condition, np.random.default_rng(seed), cam)
            assert np.array_equal(dusk, plain), (label, seed, condition)


def test_dusk_is_deterministic_and_advances_the_generator() -> None:
    cam = CameraStyle.for_camera(2, 11)
    a = render_dusk("bus", 0.4, np.random.default_rng(42), cam)
    assert np.array_equal(a, render_dusk("bus", 0.4, np.random.default_rng(42), cam))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    rng = np.random.default_rng(42)
    render_dusk("bus", 0.4, rng, cam)
    assert not np.array_equal(render_dusk("bus", 0.4, rng, cam), a)


def test_frames_get_darker_as_darkness_rises() -> None:
    cams = [CameraStyle.for_camera(i, 3) for i in range(4)]
    means = np.asarray(
        [
            [
                render_dusk(DEFAULT_CLASSES[i % 4], d, np.random.default_rng([8, i]), cams[i % 4])
                .astype(np.float32)
                .mean()
                for d in DUSK_LEVELS
            ]
            for i in range(24)
        ]
    )
    # The same scene (one generator state) at each level: every frame darkens step by step.
    assert (np.diff(means, axis=1) < 0).all()
    fleet_means = means.mean(axis=0)
    assert fleet_means[-1] < 0.5 * fleet_means[0]
    # Light falls evenly rather than in one step at either end.
    steps = -np.diff(fleet_means)
    assert steps.min() > 0.5 * steps.max()


def test_lamps_come_up_as_the_light_falls() -> None:
    # Headlights stay the brightest spots: their excess over the frame's median grows with
    # darkness as the surroundings fade.
    cam = CameraStyle.for_camera(0, 3)
    excess = []
    for d in DUSK_LEVELS:
        f = render_dusk("car", d, np.random.default_rng(3), cam).astype(np.float32).mean(axis=2)
        excess.append(float(f.max() - np.median(f)))
    assert excess == sorted(excess) and excess[-1] > excess[0] + 60


@pytest.mark.parametrize("darkness", [-0.01, 1.01, float("nan")])
def test_darkness_outside_zero_to_one_raises(darkness: float) -> None:
    with pytest.raises(ValueError, match="darkness must be in"):
        render_dusk("car", darkness, np.random.default_rng(0))
    with pytest.raises(ValueError, match="darkness must be in"):
        condition_for_darkness(darkness)


def test_dusk_checks_label_and_size_like_render_frame() -> None:
    with pytest.raises(ValueError, match="label"):
        render_dusk("", 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="size"):
        render_dusk("car", 0.5, np.random.default_rng(0), size=8)


def test_darkness_reads_as_day_then_dusk_then_night() -> None:
    got = [condition_for_darkness(d) for d in (0.0, 0.2, 0.25, 0.5, 0.74, 0.75, 1.0)]
    assert got == ["day", "day", "dusk", "dusk", "dusk", "night", "night"]
