"""Image bytes in and out: decode PNG/JPEG to the model's pixel layout, encode pixels back.

StreamLoop's pixel layout is an ``H x W x 3`` ``uint8`` RGB array, row-major. ``frames.valid``
carries it as base64 of the raw bytes (``pixels_to_b64`` / ``pixels_from_b64``), so nothing
after ingest decodes an image file again.

Every failure is an ``ImageError`` whose ``reason`` is a stable code (the DLQ's error header).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import ClassVar, Literal

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

__all__ = [
    "CONTENT_TYPES",
    "BadBase64Error",
    "ContentTypeMismatchError",
    "ImageError",
    "ImageTooLargeError",
    "NotImageError",
    "TruncatedImageError",
    "WrongSizeError",
    "b64decode_strict",
    "decode_image",
    "encode_image",
    "pixels_from_b64",
    "pixels_to_b64",
    "sniff_content_type",
    "to_rgb_array",
]

ContentType = Literal["image/png", "image/jpeg"]
CONTENT_TYPES: dict[str, ContentType] = {"PNG": "image/png", "JPEG": "image/jpeg"}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class ImageError(ValueError):
    """An image that cannot be used. ``reason`` is a stable, machine-readable code."""

    reason: ClassVar[str] = "bad_image"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadBase64Error(ImageError):
    reason = "bad_base64"


class ImageTooLargeError(ImageError):
    reason = "too_large"


class NotImageError(ImageError):
    reason = "not_image"


class ContentTypeMismatchError(ImageError):
    reason = "content_type_mismatch"


class TruncatedImageError(ImageError):
    reason = "truncated_image"


class WrongSizeError(ImageError):
    reason = "wrong_size"


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


def decode_image(
    data: bytes,
    *,
    content_type: str | None = None,
    max_bytes: int | None = None,
    size: tuple[int, int] | None = None,
    resize: bool = False,
) -> np.ndarray:
    """Decode PNG or JPEG ``data`` to an ``H x W x 3`` uint8 RGB array.

    ``content_type`` (when given) must match the bytes. ``size`` is the required
    ``(width, height)``: other sizes raise ``WrongSizeError``, or are resized when ``resize``.
    The size is checked from the header, before the pixels are decoded, so a huge image costs
    nothing. Grey, palette and alpha images are converted to RGB (alpha is dropped).

    Raises an ``ImageError`` subclass; never anything else for bad bytes.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLargeError(f"image of {len(data)} bytes exceeds the limit of {max_bytes}")
    sniffed = sniff_content_type(data)
    if sniffed is None:
        raise NotImageError("bytes are neither PNG nor JPEG")
    if content_type is not None and sniffed != content_type:
        raise ContentTypeMismatchError(
            f"content_type says {content_type} but the bytes are {sniffed}"
        )
    if sniffed == "image/jpeg":
        pixels = _fast_jpeg(data, size, resize)
        if pixels is not None:
            return pixels
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise NotImageError(f"cannot read {sniffed}: {exc}") from None
    if size is not None and img.size != size and not resize:
        raise WrongSizeError(f"image is {img.size[0]}x{img.size[1]}, expected {size[0]}x{size[1]}")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise TruncatedImageError(f"{sniffed} does not decode completely: {exc}") from None
    if img.mode != "RGB":
        img = img.convert("RGB")
    if size is not None and img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _fast_jpeg(data: bytes, size: tuple[int, int] | None, resize: bool) -> np.ndarray | None:
    """libjpeg-turbo straight to an RGB array (about a third of Pillow's cost on small crops).
    None hands over to Pillow: for resizing, and for anything libjpeg-turbo will not decode
    strictly (CMYK, a damaged file), so that Pillow gives the verdict and the error."""
    try:
        width, height, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if size is not None and (width, height) != size:
        if not resize:
            raise WrongSizeError(f"image is {width}x{height}, expected {size[0]}x{size[1]}")
        return None
    try:
        pixels: np.ndarray = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError:
        return None
    return pixels


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
