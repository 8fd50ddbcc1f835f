"""Image decoding: both JPEG paths agree, odd modes convert, damaged bytes are named, pixel
bombs are refused from the header, and a large JPEG decoded at a reduced scale fits to nearly
the pixels of a full decode."""

from __future__ import annotations

import io
import tracemalloc
from typing import Any

import numpy as np
import pytest
import simplejpeg
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from shared.fitting import FitPolicy, fit_image
from shared.images import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_CEILING,
    ImageError,
    TooManyPixelsError,
    decode_image,
    encode_image,
    pixels_from_b64,
    pixels_to_b64,
    read_image,
    sniff_content_type,
)
from tests.bombs import jpeg_declaring, png_declaring


def crop(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, 64, dtype=np.float32)[None, :, None]
    return np.clip(base + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(5))
def test_the_fast_jpeg_path_gives_exactly_what_pillow_gives(seed: int) -> None:
    data = encode_image(crop(seed), "image/jpeg")
    pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(decode_image(data, size=(64, 64)), pillow)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGB"])
def test_jpeg_colour_modes_become_rgb(mode: str) -> None:
    buf = io.BytesIO()
    Image.new(mode, (64, 64)).save(buf, format="JPEG")
    assert decode_image(buf.getvalue()).shape == (64, 64, 3)


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png"])
def test_damaged_or_wrong_images_raise_an_image_error_with_a_reason(content_type: str) -> None:
    data = encode_image(crop(1), content_type)
    cases = {
        data[: len(data) // 2]: "truncated_image",
        data[:8] + b"\x00" * 40: ("not_image", "truncated_image"),
        encode_image(crop(1)[:40], content_type): "wrong_size",
    }
    for bad, reason in cases.items():
        with pytest.raises(ImageError) as info:
            decode_image(bad, size=(64, 64))
        assert info.value.reason in ((reason,) if isinstance(reason, str) else reason)


def test_fitting_sniffing_and_the_pixel_codec() -> None:
    big = encode_image(np.zeros((80, 100, 3), np.uint8), "image/jpeg")
    assert decode_image(big, size=(64, 64), fit="stretch").shape == (64, 64, 3)
    assert sniff_content_type(big) == "image/jpeg"
    assert sniff_content_type(b"GIF89a") is None
    px = crop(2)
    assert np.array_equal(pixels_from_b64(pixels_to_b64(px), 64, 64), px)
    with pytest.raises(ValueError):
        pixels_from_b64(pixels_to_b64(px), 32, 32)


def scene(width: int, height: int) -> np.ndarray:
    """A smooth camera-like picture: waves over two gradients."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 127 + 100 * np.sin(x / 97) * np.cos(y / 53)
    return np.clip(np.stack([red, 255 * x / width, 255 * y / height], -1), 0, 255).astype(np.uint8)


@pytest.fixture
def nothing_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to decode pixels (or to let Pillow read the file) fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the image was handed to a decoder")

    monkeypatch.setattr(simplejpeg, "decode_jpeg", refuse)
    monkeypatch.setattr(Image, "open", refuse)


@pytest.mark.usefixtures("nothing_decodes")
@pytest.mark.parametrize("make", [png_declaring, jpeg_declaring])
def test_a_pixel_bomb_is_refused_from_its_header_without_decoding(make: Any) -> None:
    bomb = make(20_000, 20_000)
    assert len(bomb) < 1_000
    tracemalloc.start()
    try:
        with pytest.raises(TooManyPixelsError, match="20000x20000") as info:
            read_image(bomb, size=(64, 64), fit="letterbox")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == "too_many_pixels"
    assert peak < 256 * 1024, f"{peak} bytes allocated for a refused image"


def test_the_pixel_limit_is_inclusive_and_bounded() -> None:
    assert DEFAULT_MAX_PIXELS == 4096 * 4096
    with pytest.raises(TooManyPixelsError):
        read_image(png_declaring(4097, 4096))
    with pytest.raises(ImageError) as info:
        read_image(png_declaring(10, 10), max_pixels=100)  # passes the guard, then fails
    assert info.value.reason in ("not_image", "truncated_image")
    with pytest.raises(TooManyPixelsError):
        read_image(png_declaring(10, 11), max_pixels=100)
    jpeg = encode_image(scene(64, 48), "image/jpeg")
    assert read_image(jpeg, max_pixels=64 * 48).pixels.shape == (48, 64, 3)
    with pytest.raises(TooManyPixelsError):
        read_image(jpeg, max_pixels=64 * 48 - 1)
    with pytest.raises(ValueError, match="max_pixels"):
        read_image(jpeg, max_pixels=MAX_PIXELS_CEILING + 1)


def test_a_bomb_is_refused_before_the_size_check_of_refuse() -> None:
    with pytest.raises(TooManyPixelsError):
        read_image(png_declaring(20_000, 20_000), size=(64, 64), fit="refuse")


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg"])
def test_the_source_size_comes_back_with_the_fitted_pixels(content_type: str) -> None:
    data = encode_image(np.full((91, 37, 3), 200, np.uint8), content_type)
    got = read_image(data, size=(64, 64), fit="letterbox")
    assert (got.source_width, got.source_height) == (37, 91)
    assert got.pixels.shape == (64, 64, 3)
    assert not got.pixels[:, :19].any() and not got.pixels[:, 45:].any(), "19 + 19 columns"
    assert np.abs(got.pixels[:, 19:45].astype(int) - 200).max() <= 2


def test_a_jpeg_that_is_not_square_is_measured_width_first() -> None:
    data = encode_image(scene(96, 64), "image/jpeg")
    assert read_image(data, size=(96, 64), fit="refuse").pixels.shape == (64, 96, 3)
    with pytest.raises(ImageError, match="image is 96x64, expected 64x96"):
        read_image(data, size=(64, 96), fit="refuse")


@pytest.fixture(scope="module")
def hd_jpeg() -> bytes:
    return encode_image(scene(1920, 1080), "image/jpeg")


def full_decode_then_fit(data: bytes, size: tuple[int, int], fit: FitPolicy) -> np.ndarray:
    return fit_image(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), size, fit)


@pytest.mark.parametrize("fit", ["letterbox", "center-crop", "stretch"])
@pytest.mark.parametrize("size", [(64, 64), (224, 224), (96, 64)])
def test_a_large_jpeg_decoded_at_a_reduced_scale_fits_like_a_full_decode(
    hd_jpeg: bytes, fit: FitPolicy, size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[int, int]] = []
    decode = simplejpeg.decode_jpeg

    def spy(data: bytes, **kwargs: Any) -> np.ndarray:
        asked.append((kwargs.get("min_width", 0), kwargs.get("min_height", 0)))
        pixels: np.ndarray = decode(data, **kwargs)
        return pixels

    monkeypatch.setattr(simplejpeg, "decode_jpeg", spy)
    got = read_image(hd_jpeg, size=size, fit=fit)
    assert len(asked) == 1 and 0 < asked[0][0] <= 1920 // 2, "decoded at 1/2 or less"
    assert (got.source_width, got.source_height) == (1920, 1080)
    diff = np.abs(got.pixels.astype(int) - full_decode_then_fit(hd_jpeg, size, fit).astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 8


@pytest.mark.parametrize("fit", ["letterbox", "center-crop", "stretch"])
def test_pillows_path_reduces_a_large_jpeg_the_same_way(
    hd_jpeg: bytes, fit: FitPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where libjpeg-turbo's strict decode declines (CMYK, a damaged file), Pillow decodes
    at a reduced scale too."""

    def decline(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("declined")

    sizes: list[tuple[int, int]] = []
    draft = JpegImageFile.draft

    def spy(self: JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> Any:
        reduced = draft(self, mode, size)
        sizes.append(self.size)
        return reduced

    monkeypatch.setattr(simplejpeg, "decode_jpeg", decline)
    monkeypatch.setattr(JpegImageFile, "draft", spy)
    got = decode_image(hd_jpeg, size=(64, 64), fit=fit)
    assert len(sizes) == 1 and sizes[0][0] <= 1920 // 2, "decoded at 1/2 or less"
    diff = np.abs(got.astype(int) - full_decode_then_fit(hd_jpeg, (64, 64), fit).astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 8
