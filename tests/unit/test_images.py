"""Image decoding: both JPEG paths agree, odd modes convert, damaged bytes are named."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.images import (
    ImageError,
    decode_image,
    encode_image,
    pixels_from_b64,
    pixels_to_b64,
    sniff_content_type,
)


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


def test_resize_sniffing_and_the_pixel_codec() -> None:
    big = encode_image(np.zeros((80, 100, 3), np.uint8), "image/jpeg")
    assert decode_image(big, size=(64, 64), resize=True).shape == (64, 64, 3)
    assert sniff_content_type(big) == "image/jpeg"
    assert sniff_content_type(b"GIF89a") is None
    px = crop(2)
    assert np.array_equal(pixels_from_b64(pixels_to_b64(px), 64, 64), px)
    with pytest.raises(ValueError):
        pixels_from_b64(pixels_to_b64(px), 32, 32)
