"""A ten-class image set written as files, for a task of one's own (``streamloop shapes``).

Ten plain shapes drawn with Pillow, each at a random position, scale, colour and background
with a little pixel noise, on canvases of assorted sizes (40 to 200 pixels a side, square or
not), so that ingest's fit to the model's input is exercised. Next to the images goes
``labels.csv`` in the ``file,label`` form ``streamloop publish --labels`` reads. The same
``seed`` writes the same files, byte for byte.

The set needs no download and no simulator: it stands in for the photographs and labels a
user brings (docs/your-own-task.md).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from shared.images import encode_image

__all__ = ["CLASSES", "MAX_SIDE", "MIN_SIDE", "Written", "classes_env", "draw", "write_set"]

MIN_SIDE = 40
"""Smallest canvas side in pixels."""

MAX_SIDE = 200
"""Largest canvas side in pixels."""

Box = tuple[float, float, float, float]
"""Where a shape is drawn: left, top, right, bottom."""

_Painter = Callable[[ImageDraw.ImageDraw, Box, tuple[int, int, int], int], None]
"""Draws one shape in a box, in a colour, with a stroke width (for outlines)."""


def _circle(d: ImageDraw.ImageDraw, b: Box, fill: tuple[int, int, int], w: int) -> None:
    d.ellipse(b, fill=fill)


def _ring(d: ImageDraw.ImageDraw, b: Box, fill: tuple[int, int, int], w: int) -> None:
    d.ellipse(b, outline=fill, width=w)


def _square(d: ImageDraw.ImageDraw, b: Box, fill: tuple[int, int, int], w: int) -> None:
    d.rectangle(b, fill=fill)


def _frame(d: ImageDraw.ImageDraw, b: Box, fill: tuple[int, int, int], w: int) -> None:
    d.rectangle(b, outline=fill, width=w)


def _polygon(points: Callable[[Box], list[tuple[float, float]]]) -> _Painter:
    def paint(d: ImageDraw.ImageDraw, b: Box, fill: tuple[int, int, int], w: int) -> None:
        d.polygon(points(b), fill=fill)

    return paint


def _triangle(b: Box) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = b
    return [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]


def _diamond(b: Box) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = b
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]


def _star(b: Box) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = b
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    return [
        (
            cx + (r if i % 2 == 0 else r * 0.4) * math.sin(math.pi * i / 5),
            cy - (r if i % 2 == 0 else r * 0.4) * math.cos(math.pi * i / 5),
        )
        for i in range(10)
    ]


def _plus(d: ImageDraw.ImageDraw, b: Box, fill: tuple[int, int, int], w: int) -> None:
    x0, y0, x1, y1 = b
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 6
    d.rectangle((cx - half, y0, cx + half, y1), fill=fill)
    d.rectangle((x0, cy - half, x1, cy + half), fill=fill)


def _cross(d: ImageDraw.ImageDraw, b: Box, fill: tuple[int, int, int], w: int) -> None:
    x0, y0, x1, y1 = b
    width = max(2, round((x1 - x0) / 4))
    d.line((x0, y0, x1, y1), fill=fill, width=width)
    d.line((x0, y1, x1, y0), fill=fill, width=width)


def _stripes(d: ImageDraw.ImageDraw, b: Box, fill: tuple[int, int, int], w: int) -> None:
    x0, y0, x1, y1 = b
    step = (y1 - y0) / 5
    for i in (0, 2, 4):
        d.rectangle((x0, y0 + i * step, x1, y0 + (i + 1) * step), fill=fill)


_PAINTERS: dict[str, _Painter] = {
    "circle": _circle,
    "ring": _ring,
    "square": _square,
    "frame": _frame,
    "triangle": _polygon(_triangle),
    "diamond": _polygon(_diamond),
    "star": _polygon(_star),
    "plus": _plus,
    "cross": _cross,
    "stripes": _stripes,
}

CLASSES: tuple[str, ...] = tuple(_PAINTERS)
"""The ten class names, in the order ``classes_env`` gives them to the model."""


def classes_env() -> str:
    """``CLASSES`` as ``STREAMLOOP_TASK_CLASSES`` takes it: a JSON list."""
    return json.dumps(list(CLASSES), separators=(",", ":"))


def _colours(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A background and a shape colour whose brightness differs by at least 90 of 255, so
    every shape stands out whatever the two colours are."""
    while True:
        bg, fg = rng.integers(0, 256, (2, 3))
        if abs(float(fg.mean()) - float(bg.mean())) >= 90:
            return (
                (int(bg[0]), int(bg[1]), int(bg[2])),
                (int(fg[0]), int(fg[1]), int(fg[2])),
            )


def draw(label: str, rng: np.random.Generator) -> np.ndarray:
    """One ``H x W x 3`` uint8 image of ``label``, its size, place, scale and colours drawn
    from ``rng``. Raises KeyError for a label that is not in ``CLASSES``."""
    paint = _PAINTERS[label]
    width = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    # Some square, the rest up to 1.6 times as wide as tall or as tall as wide.
    ratio = 1.0 if rng.random() < 0.3 else float(rng.uniform(1 / 1.6, 1.6))
    height = int(np.clip(round(width * ratio), MIN_SIDE, MAX_SIDE))
    bg, fg = _colours(rng)
    image = Image.new("RGB", (width, height), bg)
    short = min(width, height)
    side = float(rng.uniform(0.5, 0.85)) * short
    left = float(rng.uniform(0, width - side))
    top = float(rng.uniform(0, height - side))
    stroke = max(2, round(side / 8))
    paint(ImageDraw.Draw(image), (left, top, left + side, top + side), fg, stroke)
    noise = rng.normal(0.0, 8.0, (height, width, 3))
    pixels = np.asarray(image, dtype=np.float64) + noise
    return np.clip(pixels, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Written:
    """What ``write_set`` wrote."""

    images: Path
    """The folder of image files."""

    labels: Path
    """The ``file,label`` CSV."""

    per_class: dict[str, int]
    """Images written per class."""


def write_set(out: Path, per_class: int, seed: int = 0) -> Written:
    """Write ``per_class`` images of each class under ``out/images`` and ``out/labels.csv``.

    Files are named ``shape-NNNNN`` in a shuffled order, so the class is not in the name and
    a folder published in name order interleaves the classes; about one in three is a JPEG,
    the rest PNG. Raises ValueError when ``per_class`` is below 1."""
    if per_class < 1:
        raise ValueError("per_class must be at least 1")
    rng = np.random.default_rng(seed)
    labels = [c for c in CLASSES for _ in range(per_class)]
    order = rng.permutation(len(labels))
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    for n, i in enumerate(order):
        label = labels[int(i)]
        pixels = draw(label, rng)
        jpeg = rng.random() < 1 / 3
        name = f"shape-{n:05d}.{'jpg' if jpeg else 'png'}"
        (images / name).write_bytes(encode_image(pixels, "image/jpeg" if jpeg else "image/png"))
        rows.append((name, label))
    csv_path = out / "labels.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        writer.writerows(rows)
    return Written(images, csv_path, {c: per_class for c in CLASSES})
