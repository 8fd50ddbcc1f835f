"""Why an image cannot be used: one exception class per reason.

Every class is an ``ImageError`` whose ``reason`` is a stable, machine-readable code that
becomes the DLQ's ``error`` header (and the ``reason`` of a ``POST /predict`` refusal).
``shared.images`` re-exports them all; they live apart so that ``shared.fitting`` (which
``shared.images`` uses) can raise ``WrongSizeError`` too.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadBase64Error",
    "ContentTypeMismatchError",
    "ImageError",
    "ImageTooLargeError",
    "NotImageError",
    "TooManyPixelsError",
    "TruncatedImageError",
    "WrongSizeError",
]


class ImageError(ValueError):
    """An image that cannot be used. ``reason`` is a stable, machine-readable code."""

    reason: ClassVar[str] = "bad_image"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadBase64Error(ImageError):
    reason = "bad_base64"


class ImageTooLargeError(ImageError):
    """More encoded bytes than allowed."""

    reason = "too_large"


class TooManyPixelsError(ImageError):
    """More pixels than allowed, read from the header: the image is never decoded (a small
    file can declare a huge image, a decompression bomb)."""

    reason = "too_many_pixels"


class NotImageError(ImageError):
    reason = "not_image"


class ContentTypeMismatchError(ImageError):
    reason = "content_type_mismatch"


class TruncatedImageError(ImageError):
    reason = "truncated_image"


class WrongSizeError(ImageError):
    """Not the required size, under the ``refuse`` fit policy."""

    reason = "wrong_size"
