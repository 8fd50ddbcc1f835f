from __future__ import annotations

import numpy as np
import pytest

from services.simulator.render import CONDITIONS, DEFAULT_CLASSES, CameraStyle, render_frame

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
