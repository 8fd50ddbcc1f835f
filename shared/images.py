"""Image bytes in and out: decode PNG/JPEG to the model's pixel layout, encode pixels back.

StreamLoop's pixel layout is an ``H x W x 3`` ``uint8`` RGB array, row-major. ``frames.valid``
carries it raw and ``examples`` as base64 (``pixels_to_b64`` / ``pixels_from_b64``), so
nothing after ingest decodes an image file again. ``read_image`` decodes an image of any size
and fits it to the model's input (``shared.fitting``); ingest and ``POST /predict`` both use
it, so the stream and the HTTP path see the same pixels.

Every failure is an ``ImageError`` (``shared.image_errors``, re-exported here) whose
``reason`` is a stable code (the DLQ's error header).
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from shared.fitting import FitPolicy, fit_image, plan_fit, reduced_decode_size
from shared.image_errors import (
    BadBase64Error,
    ContentTypeMismatchError,
    ImageError,
    ImageTooLargeError,
    NotImageError,
    TooManyPixelsError,
    TruncatedImageError,
    WrongSizeError,
)

__all__ = [
    "CONTENT_TYPES",
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS_CEILING",
    "BadBase64Error",
    "ContentTypeMismatchError",
    "DecodedImage",
    "ImageError",
    "ImageTooLargeError",
    "NotImageError",
    "TooManyPixelsError",
    "TruncatedImageError",
    "WrongSizeError",
    "b64decode_strict",
    "decode_image",
    "encode_image",
    "pixels_from_b64",
    "pixels_to_b64",
    "read_image",
    "sniff_content_type",
    "to_rgb_array",
]

ContentType = Literal["image/png", "image/jpeg"]
CONTENT_TYPES: dict[str, ContentType] = {"PNG": "image/png", "JPEG": "image/jpeg"}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def b64decode_strict(text: str) -> bytes:
    """Standard-alphabet base64 with padding; anything else raises ``BadBase64Error``."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadBase64Error(f"image_b64 is not valid base64: {exc}") from None


def sniff_content_type(data: bytes) -> ContentType | None:
    """``image/png`` or ``image/jpeg`` from the magic bytes, else None."""
    if data.startswith(_PNG_MAGIC):
        return "image/png"
    if data.startswith(_JPEG_MAGIC):
        return "image/jpeg"
    return None


DEFAULT_MAX_PIXELS: Final = 4096 * 4096
"""Default pixel limit of a decoded image: 4096 x 4096 (16.8 M pixels, 50 MB as RGB)."""

MAX_PIXELS_CEILING: Final = 64 * 1024 * 1024
"""Highest pixel limit allowed. It stays below Pillow's own decompression-bomb limit
(``Image.MAX_IMAGE_PIXELS``, about 89 M pixels), so Pillow never refuses or warns about an
image this module accepts, and every pixel bomb is refused here as ``too_many_pixels``."""


@dataclass(frozen=True)
class DecodedImage:
    """What ``read_image`` returns."""

    pixels: np.ndarray
    """``H x W x 3`` uint8 RGB; the fitted pixels when a size was asked for."""
    source_width: int
    """Width of the image as encoded (from its header)."""
    source_height: int
    """Height of the image as encoded."""


def read_image(
    data: bytes,
    *,
    content_type: str | None = None,
    max_bytes: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    size: tuple[int, int] | None = None,
    fit: FitPolicy = "refuse",
) -> DecodedImage:
    """Decode PNG or JPEG ``data`` and fit it to ``size`` (width, height) by ``fit``.

    In this order, each before any pixel is decoded: more than ``max_bytes`` bytes raise
    ``ImageTooLargeError``; bytes that are not PNG or JPEG ``NotImageError``; a
    ``content_type`` (when given) other than the bytes' ``ContentTypeMismatchError``; more
    than ``max_pixels`` pixels in the header ``TooManyPixelsError``; another size than
    ``size`` under ``refuse`` ``WrongSizeError``. Then the image is decoded (grey, palette and
    alpha images become RGB; alpha is dropped) and fitted (``shared.fitting``). A JPEG much
    larger than what the fit keeps is decoded at a reduced DCT scale (1/2 to 1/8), which
    skips most of the decoding work; the fit's geometry is still the full image's.

    Without ``size`` the pixels are the image's own. Raises an ``ImageError`` subclass for bad
    bytes, never anything else; ValueError for a ``max_pixels`` outside
    (0, ``MAX_PIXELS_CEILING``] or an unknown ``fit``.
    """
    if not 0 < max_pixels <= MAX_PIXELS_CEILING:
        raise ValueError(f"max_pixels must be in (0, {MAX_PIXELS_CEILING}], got {max_pixels}")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLargeError(f"image of {len(data)} bytes exceeds the limit of {max_bytes}")
    sniffed = sniff_content_type(data)
    if sniffed is None:
        raise NotImageError("bytes are neither PNG nor JPEG")
    if content_type is not None and sniffed != content_type:
        raise ContentTypeMismatchError(
            f"content_type says {content_type} but the bytes are {sniffed}"
        )
    source = _header_size(data, sniffed)
    if source is not None:
        _check_size(source, max_pixels, size, fit)
        if sniffed == "image/jpeg":
            fast = _fast_jpeg(data, source, size, fit)
            if fast is not None:
                return fast
    return _pillow(data, sniffed, max_pixels, size, fit)


def decode_image(
    data: bytes,
    *,
    content_type: str | None = None,
    max_bytes: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    size: tuple[int, int] | None = None,
    fit: FitPolicy = "refuse",
) -> np.ndarray:
    """The pixels of ``read_image`` (same arguments, same errors)."""
    return read_image(
        data,
        content_type=content_type,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        size=size,
        fit=fit,
    ).pixels


def _header_size(data: bytes, kind: ContentType) -> tuple[int, int] | None:
    """``(width, height)`` from the header alone, or None when this reader cannot tell
    (Pillow then reads the header and gives the verdict)."""
    if kind == "image/png":
        # Signature (8 bytes), then the IHDR chunk: length (4), type (4), width, height.
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", data[16:24])
        return (width, height) if width > 0 and height > 0 else None
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return (width, height)


def _check_size(
    source: tuple[int, int], max_pixels: int, size: tuple[int, int] | None, fit: FitPolicy
) -> None:
    width, height = source
    if width * height > max_pixels:
        raise TooManyPixelsError(
            f"image is {width}x{height} ({width * height} pixels), more than the limit of "
            f"{max_pixels}"
        )
    if size is not None:
        plan_fit(source, size, fit)  # WrongSizeError under refuse


def _fast_jpeg(
    data: bytes, source: tuple[int, int], size: tuple[int, int] | None, fit: FitPolicy
) -> DecodedImage | None:
    """libjpeg-turbo straight to an RGB array (about a third of Pillow's cost on small crops),
    at a reduced scale when the fit keeps much less than the image. None hands over to
    Pillow, for anything libjpeg-turbo will not decode strictly (CMYK, a damaged file), so
    that Pillow gives the verdict and the error."""
    least = reduced_decode_size(source, size, fit) if size is not None else None
    try:
        pixels: np.ndarray = simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            strict=True,
            min_width=least[0] if least else 0,
            min_height=least[1] if least else 0,
        )
    except ValueError:
        return None
    if size is not None:
        pixels = fit_image(pixels, size, fit, source_size=source)
    return DecodedImage(pixels, *source)


def _pillow(
    data: bytes,
    kind: ContentType,
    max_pixels: int,
    size: tuple[int, int] | None,
    fit: FitPolicy,
) -> DecodedImage:
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise TooManyPixelsError(f"{kind} declares too many pixels: {exc}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise NotImageError(f"cannot read {kind}: {exc}") from None
    source = img.size
    _check_size(source, max_pixels, size, fit)
    least = reduced_decode_size(source, size, fit) if size is not None else None
    if least is not None and kind == "image/jpeg":
        img.draft(None, least)  # the same reduced DCT scale libjpeg-turbo's path uses
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise TruncatedImageError(f"{kind} does not decode completely: {exc}") from None
    if size is None:
        pixels = np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    else:
        pixels = fit_image(img, size, fit, source_size=source)
    return DecodedImage(pixels, *source)


def to_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """An ``H x W x 3`` uint8 array from a PIL image or an array (``H x W``, ``H x W x 1|3|4``;
    floats in [0, 1] are scaled). Raises ValueError for other shapes."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(arr * 255.0 + 0.5, 0, 255)
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def encode_image(pixels: np.ndarray, content_type: str = "image/png", quality: int = 90) -> bytes:
    """PNG or JPEG bytes of an ``H x W x 3`` uint8 array."""
    buf = io.BytesIO()
    img = Image.fromarray(to_rgb_array(pixels), mode="RGB")
    if content_type == "image/png":
        img.save(buf, format="PNG", compress_level=1)
    elif content_type == "image/jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        raise ValueError(f"unsupported content type {content_type!r}")
    return buf.getvalue()


def pixels_to_b64(pixels: np.ndarray) -> str:
    """Base64 of the raw uint8 bytes (the ``pixels_b64`` field of an ``example``)."""
    return base64.b64encode(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).decode()


def pixels_from_b64(text: str, height: int, width: int, channels: int = 3) -> np.ndarray:
    """The array that ``pixels_to_b64`` encoded; ValueError when the size does not match."""
    raw = base64.b64decode(text)
    if len(raw) != height * width * channels:
        raise ValueError(f"{len(raw)} pixel bytes do not make {height}x{width}x{channels}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, channels)
