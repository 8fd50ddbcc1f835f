"""Fit an image of any size to the model's input size, by a named policy.

Policies (``FitPolicy``), for a target of ``width x height``:

- ``letterbox`` (the default): scale the whole image to fit inside the target, keeping its
  aspect ratio, and centre it on black (0, 0, 0); the uncovered rows or columns are padding.
- ``center-crop``: scale the image to cover the target, keeping its aspect ratio, and keep
  the centre; what overhangs is cut off.
- ``stretch``: resize to exactly the target; the aspect ratio is not kept.
- ``refuse``: ``WrongSizeError`` unless the image already has the target size.

An image that already has the target size comes back untouched under every policy.

Resampling is Pillow's ``BILINEAR``. When Pillow reduces, it widens the kernel with the scale,
so every source pixel contributes and a reduction does not alias; with ``reducing_gap`` 3.0
a reduction by more than three first averages whole blocks (``Image.reduce``, cheap), and the
remaining factor of at most three goes through the bilinear kernel. Pillow documents that
from 3.0 on the result is indistinguishable from the plain filter in most cases (measured on
noise: values differ by 0.3 on average), and a 1080p frame reduced to 64 x 36 costs a quarter
of the plain filter's time, to 224 x 126 about half. Both steps are deterministic: the same
pixels in give the same pixels out.

The geometry (how large the image lands, where, and which part of it) is computed from the
*source* size, which may be larger than the pixels at hand: a JPEG decoded at a reduced DCT
scale (``shared.images``) is fitted as if it were the full image, so the reduced decode
changes the pixels a little but never where anything lands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, get_args

import numpy as np
from PIL import Image

from shared.image_errors import WrongSizeError

__all__ = [
    "DEFAULT_FIT",
    "FIT_POLICIES",
    "PAD_VALUE",
    "REDUCING_GAP",
    "FitPlan",
    "FitPolicy",
    "fit_image",
    "plan_fit",
    "reduced_decode_size",
]

FitPolicy = Literal["letterbox", "center-crop", "stretch", "refuse"]
"""How an image of another size is brought to the model's input size."""

FIT_POLICIES: Final[tuple[FitPolicy, ...]] = get_args(FitPolicy)
DEFAULT_FIT: Final[FitPolicy] = "letterbox"

PAD_VALUE: Final = 0
"""Value of every channel of letterbox padding (black)."""

REDUCING_GAP: Final = 3.0
"""Pillow's ``reducing_gap``: reductions beyond this factor average blocks first."""

Size = tuple[int, int]
"""``(width, height)`` in pixels, Pillow's order."""


@dataclass(frozen=True)
class FitPlan:
    """Where an image lands in the target, in source coordinates.

    The region ``box`` (left, upper, right, lower; fractional) of the source is resampled to
    ``content`` pixels and pasted at ``offset`` (x, y) into the target; the rest of the target
    is padding."""

    target: Size
    box: tuple[float, float, float, float]
    content: Size
    offset: Size

    @property
    def identity(self) -> bool:
        """True when the source already is the target: nothing to do."""
        return self.box == (0.0, 0.0, *map(float, self.target)) and self.content == self.target


def plan_fit(source: Size, target: Size, policy: FitPolicy) -> FitPlan:
    """The plan that fits an image of ``source`` size to ``target`` under ``policy``.

    Raises WrongSizeError under ``refuse`` when the sizes differ, and ValueError for an
    empty size or an unknown policy."""
    (sw, sh), (tw, th) = source, target
    if min(sw, sh, tw, th) <= 0:
        raise ValueError(f"sizes must be positive: source {sw}x{sh}, target {tw}x{th}")
    full = (0.0, 0.0, float(sw), float(sh))
    if source == target:
        return FitPlan(target, full, target, (0, 0))
    if policy == "refuse":
        raise WrongSizeError(f"image is {sw}x{sh}, expected {tw}x{th}")
    if policy == "stretch":
        return FitPlan(target, full, target, (0, 0))
    if policy == "letterbox":
        scale = min(tw / sw, th / sh)
        cw = max(1, min(tw, int(sw * scale + 0.5)))
        ch = max(1, min(th, int(sh * scale + 0.5)))
        return FitPlan(target, full, (cw, ch), ((tw - cw) // 2, (th - ch) // 2))
    if policy == "center-crop":
        scale = max(tw / sw, th / sh)
        bw, bh = min(sw, tw / scale), min(sh, th / scale)
        x0, y0 = (sw - bw) / 2, (sh - bh) / 2
        return FitPlan(target, (x0, y0, x0 + bw, y0 + bh), target, (0, 0))
    raise ValueError(f"unknown fit policy {policy!r}; expected one of {', '.join(FIT_POLICIES)}")


def reduced_decode_size(source: Size, target: Size, policy: FitPolicy) -> Size | None:
    """The smallest size a decoder may reduce ``source`` to before fitting it to ``target``
    without upsampling anything the fit keeps, or None when a reduced decode would not pay:
    the source is less than twice that size on some axis, or the policy is ``refuse``.

    A JPEG decoder scales by ``M/8`` during the inverse DCT; decoding at the smallest scale
    that is at least this size skips most of the work for a much larger image."""
    if policy == "refuse" or source == target:
        return None
    plan = plan_fit(source, target, policy)
    x0, y0, x1, y1 = plan.box
    # The fitted region must keep at least plan.content pixels after the reduction.
    need_w = math.ceil(plan.content[0] * source[0] / (x1 - x0) - 1e-9)
    need_h = math.ceil(plan.content[1] * source[1] / (y1 - y0) - 1e-9)
    if source[0] < 2 * need_w or source[1] < 2 * need_h:
        return None
    return (need_w, need_h)


def fit_image(
    image: np.ndarray | Image.Image,
    size: Size,
    policy: FitPolicy,
    *,
    source_size: Size | None = None,
) -> np.ndarray:
    """``image`` fitted to ``size`` (width, height) by ``policy``: an ``H x W x 3`` uint8 array.

    ``image`` is an ``H x W x 3`` uint8 RGB array or a PIL image (converted to RGB).
    ``source_size`` is the size of the original image when ``image`` is a reduced decode of
    it; the plan is then made for the original, so the result matches fitting the original
    up to resampling. An image of the target size is returned untouched (an array as it is).

    Raises WrongSizeError under ``refuse`` when the size differs, and ValueError for an array
    that is not ``H x W x 3`` uint8."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 array, got {image.shape} {image.dtype}")
        have: Size = (image.shape[1], image.shape[0])
    else:
        have = image.size
    source = source_size or have
    plan = plan_fit(source, size, policy)
    if plan.identity and have == size:
        return image if isinstance(image, np.ndarray) else _rgb_array(image)
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image.convert("RGB")
    sx, sy = have[0] / source[0], have[1] / source[1]
    x0, y0, x1, y1 = plan.box
    content = img.resize(
        plan.content,
        Image.Resampling.BILINEAR,
        box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy),
        reducing_gap=REDUCING_GAP,
    )
    if plan.content == size:
        return _rgb_array(content)
    canvas = Image.new("RGB", size, (PAD_VALUE,) * 3)
    canvas.paste(content, plan.offset)
    return _rgb_array(canvas)


def _rgb_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
