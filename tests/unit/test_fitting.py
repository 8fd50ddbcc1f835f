"""Fitting an image to the model's input: each policy's pixels, its geometry, the identity."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared.fitting import FIT_POLICIES, FitPolicy, fit_image, plan_fit, reduced_decode_size
from shared.image_errors import ImageError, WrongSizeError


def columns(width: int, height: int) -> np.ndarray:
    """An ``height x width`` image whose column ``x`` is ``10 * (x + 1)`` in every channel."""
    row = (10 * np.arange(1, width + 1, dtype=np.uint8))[None, :, None]
    return np.ascontiguousarray(np.broadcast_to(row, (height, width, 3)))


def test_letterbox_keeps_the_aspect_ratio_and_pads_the_short_side_with_black() -> None:
    wide = columns(4, 2)
    out = fit_image(wide, (4, 4), "letterbox")
    assert out.shape == (4, 4, 3)
    assert np.array_equal(out[1:3], wide), "the image, unscaled, in the middle rows"
    assert not out[0].any() and not out[3].any(), "one padding row above, one below"
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))  # 2 wide, 4 high
    out = fit_image(tall, (4, 4), "letterbox")
    assert np.array_equal(out[:, 1:3], tall)
    assert not out[:, 0].any() and not out[:, 3].any()


def test_letterbox_scales_down_to_fit_inside() -> None:
    grey = np.full((2, 4, 3), 200, np.uint8)
    out = fit_image(grey, (2, 2), "letterbox")
    assert np.array_equal(out[0], np.full((2, 3), 200)), "4x2 scaled to 2x1"
    assert not out[1].any(), "and the other row is padding"


def test_center_crop_covers_the_target_and_keeps_the_centre() -> None:
    wide = columns(4, 2)
    assert np.array_equal(fit_image(wide, (2, 2), "center-crop"), wide[:, 1:3])
    tall = np.ascontiguousarray(columns(6, 2).transpose(1, 0, 2))  # 2 wide, rows 10..60
    assert np.array_equal(fit_image(tall, (2, 2), "center-crop"), tall[2:4])


def test_stretch_resizes_to_exactly_the_target() -> None:
    wide = columns(8, 2)
    out = fit_image(wide, (4, 4), "stretch")
    assert out.shape == (4, 4, 3)
    assert all(np.array_equal(out[0], row) for row in out), "every row alike: no padding"
    assert list(out[0, :, 0]) == sorted(out[0, :, 0]) and out[0, 0, 0] < out[0, 3, 0]
    reference = Image.fromarray(wide).resize((4, 4), Image.Resampling.BILINEAR)
    assert np.array_equal(out, np.asarray(reference))


def test_refuse_raises_wrong_size_with_both_sizes() -> None:
    with pytest.raises(WrongSizeError, match="image is 4x2, expected 2x2") as info:
        fit_image(columns(4, 2), (2, 2), "refuse")
    assert isinstance(info.value, ImageError) and info.value.reason == "wrong_size"


@pytest.mark.parametrize("policy", FIT_POLICIES)
def test_an_image_of_the_target_size_comes_back_untouched(policy: FitPolicy) -> None:
    px = np.random.default_rng(1).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    assert fit_image(px, (5, 3), policy) is px
    assert np.array_equal(fit_image(Image.fromarray(px), (5, 3), policy), px)


@pytest.mark.parametrize("policy", ["letterbox", "center-crop", "stretch"])
def test_fitting_is_deterministic_and_takes_pil_images_of_any_mode(policy: FitPolicy) -> None:
    px = np.random.default_rng(2).integers(0, 256, (91, 37, 3), dtype=np.uint8)
    first = fit_image(px, (64, 64), policy)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert fit_image(px.copy(), (64, 64), policy).tobytes() == first.tobytes()
    grey = Image.fromarray(px[:, :, 0], mode="L")
    assert fit_image(grey, (64, 64), policy).shape == (64, 64, 3)


def test_the_geometry_of_each_policy() -> None:
    hd, square = (1920, 1080), (64, 64)
    letterbox = plan_fit(hd, square, "letterbox")
    assert (letterbox.content, letterbox.offset) == ((64, 36), (0, 14))
    assert plan_fit(hd, square, "center-crop").box == (420.0, 0.0, 1500.0, 1080.0)
    stretch = plan_fit(hd, square, "stretch")
    assert (stretch.box, stretch.content) == ((0.0, 0.0, 1920.0, 1080.0), square)
    tall = plan_fit((37, 91), square, "letterbox")
    assert (tall.content, tall.offset) == ((26, 64), (19, 0))
    assert plan_fit(square, square, "refuse").identity
    with pytest.raises(ValueError, match="unknown fit policy"):
        plan_fit(hd, square, "squash")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        plan_fit((0, 10), square, "stretch")


def test_a_reduced_decode_keeps_what_the_fit_needs_and_only_where_it_pays() -> None:
    hd, square = (1920, 1080), (64, 64)
    assert reduced_decode_size(hd, square, "letterbox") == (64, 36)
    assert reduced_decode_size(hd, square, "center-crop") == (114, 64)
    assert reduced_decode_size(hd, square, "stretch") == (64, 64)
    assert reduced_decode_size(hd, (224, 224), "center-crop") == (399, 224)
    assert reduced_decode_size(hd, square, "refuse") is None
    assert reduced_decode_size((100, 100), square, "stretch") is None, "less than twice"
    assert reduced_decode_size((37, 91), square, "letterbox") is None, "an enlargement"


def test_a_reduced_image_is_fitted_with_the_geometry_of_its_source() -> None:
    """A 21x5 JPEG decoded at 1/4 is 6x2 (the decoder rounds up): fitted as 21x5 it lands 3
    rows high in a 12x12 letterbox, as the full image does, not 4 as a 6x2 image would."""
    reduced = np.full((2, 6, 3), 90, np.uint8)
    rows = fit_image(reduced, (12, 12), "letterbox", source_size=(21, 5))[:, :, 0].max(axis=1)
    assert list(rows) == [0] * 4 + [90] * 3 + [0] * 5
    alone = fit_image(reduced, (12, 12), "letterbox")[:, :, 0].max(axis=1)
    assert list(alone) == [0] * 4 + [90] * 4 + [0] * 4


def test_an_array_that_is_not_rgb_uint8_is_refused() -> None:
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        fit_image(np.zeros((4, 4), np.uint8), (2, 2), "stretch")
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        fit_image(np.zeros((4, 4, 3), np.float32), (2, 2), "stretch")
