"""Synthetic highway-CCTV vehicle crops: one vehicle, side view, under a weather condition.

The simulator streams these frames in place of real cameras, so the renderer has to give a
classifier the same trouble real footage does: day frames are easy, while night (dark, low
contrast, the scene reduced to lamps and a faint silhouette) and fog (haze, blur) push a
day-trained model off its training distribution, yet each class stays recognisable to a model
that has seen such frames (light positions and silhouettes differ per class). Dusk, between
day and night, is drawn at any darkness level so that light can fall gradually.

Contracts:

- ``render_frame`` returns an ``H x W x 3`` ``uint8`` RGB array (StreamLoop's pixel layout),
  ``H == W == size``.
- The output depends only on ``label``, ``condition``, ``camera``, ``size`` and the state of
  ``rng``: the same inputs and generator state give an identical array. The generator is
  advanced, so successive calls give different frames.
- ``render_dusk`` takes the same inputs with a ``darkness`` level in [0, 1] in place of the
  condition: at 0 it returns exactly the ``day`` frame and at 1 exactly the ``night`` frame of
  the same generator state; in between, the same vehicle and scene with the light in between.
- Any non-empty class name renders. The four ``DEFAULT_CLASSES`` have hand-made silhouettes;
  any other name gets one derived from a stable hash of the name (same on every process and
  machine), so the class list can come from configuration.
- Pure numpy, vectorised: well under a millisecond per 64 x 64 frame on one core.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "CONDITIONS",
    "DEFAULT_CLASSES",
    "DUSK",
    "CameraStyle",
    "condition_for_darkness",
    "render_dusk",
    "render_frame",
]

CONDITIONS: tuple[str, ...] = ("day", "night", "fog", "rain")
"""The conditions ``render_frame`` draws, each at one fixed look."""
DUSK = "dusk"
"""The condition recorded for frames drawn by ``render_dusk`` between day and night."""
DEFAULT_CLASSES: tuple[str, ...] = ("car", "truck", "bus", "motorcycle")

_F32 = npt.NDArray[np.float32]
_RGB = tuple[float, float, float]

_MIN_SIZE = 16

# Common vehicle paints; every class draws from the same list so colour says nothing about class.
_PAINTS: tuple[_RGB, ...] = (
    (0.92, 0.92, 0.92),
    (0.72, 0.73, 0.75),
    (0.45, 0.46, 0.48),
    (0.10, 0.10, 0.11),
    (0.70, 0.10, 0.10),
    (0.12, 0.22, 0.55),
    (0.10, 0.14, 0.30),
    (0.15, 0.40, 0.22),
    (0.90, 0.75, 0.15),
    (0.85, 0.42, 0.10),
    (0.55, 0.62, 0.80),
)
_CARGO: tuple[_RGB, ...] = (
    (0.93, 0.93, 0.92),
    (0.80, 0.80, 0.78),
    (0.60, 0.62, 0.64),
    (0.20, 0.35, 0.60),
    (0.75, 0.20, 0.15),
)
_HEAD: _RGB = (1.0, 0.97, 0.85)
_TAIL: _RGB = (1.0, 0.12, 0.08)
_MARKER: _RGB = (1.0, 0.62, 0.10)
_SODIUM: _RGB = (1.0, 0.62, 0.30)
_LED: _RGB = (0.72, 0.82, 1.0)
_WINDOW_GLOW: _RGB = (1.0, 0.88, 0.62)
# Unlit colours of parts, as seen in daylight.
_TYRE = np.full(3, 0.06, dtype=np.float32)
_HEAD_PAINT = np.asarray(_HEAD, dtype=np.float32)
_TAIL_PAINT = np.asarray((0.75, 0.08, 0.06), dtype=np.float32)
_MARKER_PAINT = np.asarray((0.95, 0.55, 0.08), dtype=np.float32)
_SHADOW = np.zeros(3, dtype=np.float32)


@dataclass(frozen=True)
class CameraStyle:
    """Per-camera look: background palette, road position, typical scale, sensor noise.

    Vertical positions are fractions of the frame height, measured from the top. The
    defaults are a neutral camera; ``for_camera`` derives a distinct, reproducible one.
    """

    sky: _RGB = (0.58, 0.72, 0.90)
    verge: _RGB = (0.33, 0.48, 0.28)
    road: _RGB = (0.40, 0.40, 0.42)
    horizon: float = 0.30
    road_top: float = 0.50
    ground: float = 0.84
    lane_offset: float = 0.07
    shoulder_line: bool = True
    scale: float = 1.0
    noise: float = 0.015
    gains: _RGB = (1.0, 1.0, 1.0)
    lamp_x: float = 0.35
    sodium_lamps: bool = True

    @classmethod
    def for_camera(cls, camera_index: int, seed: int) -> CameraStyle:
        """The style of camera ``camera_index`` in the deployment identified by ``seed``.

        Deterministic in both arguments. Raises ValueError if either is negative.
        """
        if camera_index < 0 or seed < 0:
            raise ValueError(f"camera_index and seed must be >= 0, got {camera_index} and {seed}")
        g = np.random.default_rng([seed, camera_index, 0x5CA1])

        def jitter(base: _RGB, spread: float, hi: float = 1.0) -> _RGB:
            r, gg, b = (_clamp(c + float(g.uniform(-spread, spread)), 0.0, hi) for c in base)
            return (r, gg, b)

        horizon = float(g.uniform(0.15, 0.40))
        road_top = horizon + float(g.uniform(0.10, 0.25))
        ground = float(g.uniform(max(0.78, road_top + 0.2), 0.92))
        grey = float(g.uniform(0.30, 0.50))
        return cls(
            sky=jitter((0.60, 0.72, 0.88), 0.10),
            verge=jitter((0.35, 0.45, 0.30), 0.10),
            road=jitter((grey, grey, grey + 0.01), 0.025),
            horizon=horizon,
            road_top=road_top,
            ground=ground,
            lane_offset=float(g.uniform(0.03, 0.09)),
            shoulder_line=bool(g.random() < 0.6),
            scale=float(g.uniform(0.85, 1.05)),
            noise=float(g.uniform(0.008, 0.025)),
            gains=jitter((1.0, 1.0, 1.0), 0.06, hi=2.0),
            lamp_x=float(g.uniform(0.1, 0.9)),
            sodium_lamps=bool(g.random() < 0.5),
        )


_DEFAULT_CAMERA = CameraStyle()


def _clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


class _Part(NamedTuple):
    """One painted shape in vehicle coordinates: metres, x from rear (0) to front, y up.

    ``x0..x1``/``y0..y1`` is the bounding box. ``a``/``b``: corner radius (rbox), top
    insets left/right (trap; negative leans outwards), pane count and gap (row).
    """

    kind: str
    role: str
    x0: float
    y0: float
    x1: float
    y1: float
    a: float = 0.0
    b: float = 0.0
    alpha: float = 1.0


class _Light(NamedTuple):
    kind: str
    x: float
    y: float


class _Vehicle(NamedTuple):
    length: float
    height: float
    parts: list[_Part]
    lights: list[_Light]
    lit_windows: bool


def _wheel(x: float, r: float) -> list[_Part]:
    return [
        _Part("ellipse", "tyre", x - r, 0.0, x + r, 2 * r),
        _Part("ellipse", "hub", x - 0.5 * r, 0.5 * r, x + 0.5 * r, 1.5 * r),
    ]


def _lamp(kind: str, x: float, y: float, w: float, h: float) -> tuple[_Part, _Light]:
    return _Part("box", kind, x - w / 2, y - h / 2, x + w / 2, y + h / 2), _Light(kind, x, y)


def _shadow(length: float) -> _Part:
    return _Part("ellipse", "shadow", -0.05 * length, -0.12, 1.05 * length, 0.12, alpha=0.5)


def _assemble(
    length: float,
    height: float,
    parts: list[_Part],
    lamps: list[tuple[_Part, _Light]],
    lit_windows: bool = False,
) -> _Vehicle:
    return _Vehicle(
        length,
        height,
        [_shadow(length), *parts, *(p for p, _ in lamps)],
        [light for _, light in lamps],
        lit_windows,
    )


def _car(rng: np.random.Generator) -> _Vehicle:
    suv = rng.random() < 0.3
    hatch = rng.random() < 0.4
    length = rng.uniform(4.0, 4.8)
    r = rng.uniform(0.30, 0.35) + (0.05 if suv else 0.0)
    belt = rng.uniform(0.85, 0.98) + (0.22 if suv else 0.0)
    roof = belt + rng.uniform(0.45, 0.55)
    c0 = length * (rng.uniform(0.04, 0.10) if hatch else rng.uniform(0.17, 0.25))
    c1 = length * rng.uniform(0.70, 0.78)
    rear_in = rng.uniform(0.05, 0.20) if hatch else rng.uniform(0.35, 0.55)
    front_in = rng.uniform(0.55, 0.85)
    pillar = c0 + (c1 - c0) * rng.uniform(0.48, 0.58)
    parts = [
        _Part("rbox", "body", 0.0, 0.22, length, belt, a=0.22),
        _Part("trap", "body", c0, belt - 0.05, c1, roof, a=rear_in, b=front_in),
        _Part(
            "trap",
            "glass",
            c0 + 0.12,
            belt + 0.02,
            c1 - 0.10,
            roof - 0.08,
            a=rear_in * 0.9,
            b=front_in * 0.9,
        ),
        _Part("box", "body", pillar - 0.06, belt, pillar + 0.06, roof),
        _Part("box", "trim", 0.0, 0.22, length, 0.36),
        *_wheel(length * rng.uniform(0.16, 0.20), r),
        *_wheel(length * (1 - rng.uniform(0.15, 0.19)), r),
    ]
    lamps = [
        _lamp("head", length - 0.1, belt - 0.2, 0.22, 0.15),
        _lamp("tail", 0.08, belt - 0.18, 0.16, 0.18),
    ]
    return _assemble(length, roof, parts, lamps)


def _truck(rng: np.random.Generator) -> _Vehicle:
    length = rng.uniform(7.5, 10.0)
    r = rng.uniform(0.45, 0.52)
    cab_len = rng.uniform(1.9, 2.4)
    cab_h = rng.uniform(2.6, 3.0)
    box_h = rng.uniform(3.3, 3.9)
    box_end = length - cab_len - 0.2
    rear_axle = rng.uniform(1.1, 1.6)
    parts = [
        _Part("box", "trim", 0.3, 0.35, length - 0.2, 0.8),
        _Part("rbox", "cargo", 0.0, 0.85, box_end, box_h, a=0.08),
        _Part("rbox", "body", length - cab_len, 0.45, length, cab_h, a=0.3),
        _Part(
            "trap",
            "glass",
            length - cab_len + 0.35,
            cab_h * 0.58,
            length - 0.12,
            cab_h - 0.2,
            b=0.18,
        ),
        _Part("box", "trim", length - 0.25, 0.35, length + 0.05, 0.75),
        *_wheel(rear_axle, r),
        *_wheel(rear_axle + 2 * r + 0.12, r),
        *_wheel(length - cab_len * 0.5, r),
    ]
    lamps = [
        _lamp("head", length - 0.08, 0.75, 0.2, 0.2),
        _lamp("tail", 0.08, 0.8, 0.16, 0.22),
        _lamp("marker", 0.12, box_h - 0.12, 0.2, 0.16),
        _lamp("marker", box_end - 0.15, box_h - 0.12, 0.2, 0.16),
    ]
    return _assemble(length, box_h, parts, lamps)


def _bus(rng: np.random.Generator) -> _Vehicle:
    length = rng.uniform(10.5, 12.5)
    r = rng.uniform(0.48, 0.53)
    height = rng.uniform(2.9, 3.3)
    panes = int(rng.integers(5, 8))
    parts = [
        _Part("rbox", "body", 0.0, 0.3, length, height, a=0.35),
        _Part("box", "trim", 0.0, 0.3, length, 0.62),
        _Part(
            "row", "glass", 0.45, height * 0.52, length - 2.45, height - 0.28, a=float(panes), b=0.2
        ),
        _Part("box", "glass", length - 0.32, 0.95, length - 0.04, height - 0.18),
        _Part("box", "glass", length - 2.2, 0.42, length - 1.35, height - 0.32),
        *_wheel(rng.uniform(2.2, 2.8), r),
        *_wheel(length - rng.uniform(2.9, 3.2), r),
    ]
    lamps = [
        _lamp("head", length - 0.06, 0.72, 0.12, 0.2),
        _lamp("tail", 0.06, 0.95, 0.12, 0.3),
    ]
    return _assemble(length, height, parts, lamps, lit_windows=True)


def _motorcycle(rng: np.random.Generator) -> _Vehicle:
    length = rng.uniform(1.9, 2.3)
    k = length / 2.1
    r = rng.uniform(0.29, 0.34)
    lean = rng.uniform(-0.05, 0.12)
    parts = [
        *_wheel(r + 0.02, r),
        *_wheel(length - r - 0.02, r),
        _Part("trap", "trim", length - r - 0.08, r, length - r + 0.04, 1.02, a=-0.3, b=0.3),
        _Part("ellipse", "body", 0.55 * k, 0.32, 1.5 * k, 0.86),
        _Part("box", "trim", 0.35 * k, 0.74, 1.05 * k, 0.88),
        _Part("ellipse", "rider", 0.7 * k, 0.55, 1.3 * k, 0.98),
        _Part("trap", "rider", 0.72 * k, 0.86, 1.12 * k, 1.55, a=0.08 + lean, b=-lean),
        _Part("box", "rider", 1.0 * k, 1.24, length - 0.5, 1.36),
        _Part("ellipse", "helmet", 0.84 * k + lean, 1.55, 1.16 * k + lean, 1.88),
    ]
    lamps = [
        _lamp("head", length - 0.42, 0.98, 0.12, 0.12),
        _lamp("tail", 0.2, 0.86, 0.1, 0.08),
    ]
    return _assemble(length, 1.88, parts, lamps)


class _Blueprint(NamedTuple):
    """Proportions of an unknown class, fixed by the hash of its name."""

    length: float
    height: float
    clearance: float
    wheels: int
    wheel_r: float
    panes: int
    window_lo: float
    window_hi: float
    cab_frac: float
    corner: float
    light_h: float
    markers: bool
    lit_windows: bool


@functools.lru_cache(maxsize=256)
def _blueprint(name: str) -> _Blueprint:
    # blake2b rather than hash(): str hashes are salted per process.
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    g = np.random.default_rng(int.from_bytes(digest, "big"))
    height = float(g.uniform(1.3, 3.8))
    length = _clamp(height * float(g.uniform(1.3, 4.2)), 2.0, 14.0)
    lo = float(g.uniform(0.35, 0.6))
    return _Blueprint(
        length=length,
        height=height,
        clearance=float(g.uniform(0.15, 0.6)),
        wheels=int(g.integers(2, 6)),
        wheel_r=float(g.uniform(0.25, 0.6)),
        panes=int(g.integers(0, 8)),
        window_lo=lo,
        window_hi=float(g.uniform(lo + 0.15, 0.92)),
        cab_frac=float(g.uniform(0.15, 0.35)) if g.random() < 0.5 else 0.0,
        corner=float(g.uniform(0.0, 0.4)),
        light_h=float(g.uniform(0.1, 0.6)),
        markers=bool(g.random() < 0.5),
        lit_windows=bool(g.random() < 0.5),
    )


def _from_blueprint(bp: _Blueprint, rng: np.random.Generator) -> _Vehicle:
    length = bp.length * rng.uniform(0.92, 1.08)
    height = bp.height * rng.uniform(0.92, 1.08)
    r = min(bp.wheel_r, 0.45 * height)
    clear = min(bp.clearance, 0.4 * height)
    corner = min(bp.corner, 0.3 * (height - clear))
    body_end = length * (1 - bp.cab_frac)
    parts = [_Part("rbox", "body", 0.0, clear, body_end, height, a=corner)]
    if bp.cab_frac > 0:
        cab_h = clear + 0.75 * (height - clear)
        parts.append(_Part("rbox", "cargo", body_end + 0.1, clear, length, cab_h, a=corner))
        parts.append(
            _Part(
                "box",
                "glass",
                body_end + 0.3,
                clear + 0.55 * (cab_h - clear),
                length - 0.1,
                cab_h - 0.12,
            )
        )
    if bp.panes > 0:
        span = height - clear
        parts.append(
            _Part(
                "row",
                "glass",
                0.08 * length,
                clear + bp.window_lo * span,
                body_end - 0.3,
                clear + bp.window_hi * span,
                a=float(bp.panes),
                b=0.15,
            )
        )
    for i in range(bp.wheels):
        parts.extend(_wheel((0.12 + 0.76 * i / (bp.wheels - 1)) * length, r))
    y_light = clear + bp.light_h * (height - clear)
    lamps = [
        _lamp("head", length - 0.08, y_light, 0.18, 0.18),
        _lamp("tail", 0.08, y_light, 0.16, 0.2),
    ]
    if bp.markers:
        lamps.append(_lamp("marker", 0.12, height - 0.12, 0.2, 0.16))
        lamps.append(_lamp("marker", body_end - 0.15, height - 0.12, 0.2, 0.16))
    return _assemble(length, height, parts, lamps, bp.lit_windows)


_BUILDERS: dict[str, Callable[[np.random.Generator], _Vehicle]] = {
    "car": _car,
    "truck": _truck,
    "bus": _bus,
    "motorcycle": _motorcycle,
}


def _vehicle(label: str, rng: np.random.Generator) -> _Vehicle:
    builder = _BUILDERS.get(label)
    if builder is not None:
        return builder(rng)
    return _from_blueprint(_blueprint(label), rng)


class _Pose:
    """Affine map between pixel coordinates (x right, y down) and vehicle metres.

    ``cx, cy`` is the pixel under the middle of the vehicle at ground level; the vehicle is
    mirrored when ``flip`` is -1 (front to the left), rotated by ``theta`` and sheared.
    """

    def __init__(
        self, cx: float, cy: float, s: float, flip: float, theta: float, shear: float, half: float
    ) -> None:
        self.s, self.flip = s, flip
        c, sn = math.cos(theta), math.sin(theta)
        # pixel -> metres: u = ux*dx + uy*dy + half, v = vx*dx + vy*dy with dx, dy from (cx, cy)
        self._ux = (c - shear * sn) * flip / s
        self._uy = (sn + shear * c) * flip / s
        self._vx, self._vy = sn / s, -c / s
        # metres -> pixel: the inverse of the 2x2 above
        det = self._ux * self._vy - self._uy * self._vx
        self._xu, self._xv = self._vy / det, -self._uy / det
        self._yu, self._yv = -self._vx / det, self._ux / det
        self.cx, self.cy, self.half = cx, cy, half

    def grid(self, size: int) -> tuple[_F32, _F32]:
        """Vehicle coordinates (u, v) of every pixel centre, each ``size x size``."""
        dx = np.arange(size, dtype=np.float32) - np.float32(self.cx)
        dy = (np.arange(size, dtype=np.float32) - np.float32(self.cy))[:, None]
        u = dx * np.float32(self._ux) + (dy * np.float32(self._uy) + np.float32(self.half))
        v = dx * np.float32(self._vx) + dy * np.float32(self._vy)
        return u, v

    def to_pixel(self, u: float, v: float) -> tuple[float, float]:
        du = u - self.half
        return self.cx + self._xu * du + self._xv * v, self.cy + self._yu * du + self._yv * v

    def box_to_pixels(
        self, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[float, float, float, float]:
        """Pixel bounding box (xmin, ymin, xmax, ymax) of a vehicle-coordinate box."""
        px, py = self.to_pixel(x0, y0)
        ex, ey = self._xu * (x1 - x0), self._yu * (x1 - x0)
        fx, fy = self._xv * (y1 - y0), self._yv * (y1 - y0)
        return (
            px + min(ex, 0.0) + min(fx, 0.0),
            py + min(ey, 0.0) + min(fy, 0.0),
            px + max(ex, 0.0) + max(fx, 0.0),
            py + max(ey, 0.0) + max(fy, 0.0),
        )


def _distance(p: _Part, u: _F32, v: _F32) -> _F32:
    """Approximate signed distance in metres to the part's edge, positive inside."""
    if p.kind == "ellipse":
        rx, ry = (p.x1 - p.x0) / 2, (p.y1 - p.y0) / 2
        q = np.hypot(
            (u - np.float32(p.x0 + rx)) / np.float32(rx),
            (v - np.float32(p.y0 + ry)) / np.float32(ry),
        )
        inside: _F32 = (1 - q) * np.float32(min(rx, ry))
        return inside
    if p.kind == "rbox":
        hw, hh = (p.x1 - p.x0) / 2, (p.y1 - p.y0) / 2
        rad = min(p.a, hw, hh)
        qx = np.abs(u - np.float32(p.x0 + hw)) - np.float32(hw - rad)
        qy = np.abs(v - np.float32(p.y0 + hh)) - np.float32(hh - rad)
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
        rounded: _F32 = np.float32(rad) - outside
        return rounded
    d: _F32 = np.minimum(v - np.float32(p.y0), np.float32(p.y1) - v)
    if p.kind == "trap":
        t = (v - np.float32(p.y0)) * np.float32(1.0 / (p.y1 - p.y0))
        left = u - np.float32(p.x0) - t * np.float32(p.a)
        right = np.float32(p.x1) - u - t * np.float32(p.b)
        trap: _F32 = np.minimum(d, np.minimum(left, right))
        return trap
    d = np.minimum(d, np.minimum(u - np.float32(p.x0), np.float32(p.x1) - u))
    if p.kind == "row":
        pitch = (p.x1 - p.x0) / p.a
        pos = np.mod(u - np.float32(p.x0), np.float32(pitch))
        gap = np.float32(p.b / 2)
        d = np.minimum(d, np.minimum(pos - gap, np.float32(pitch) - gap - pos))
    return d


def _gauss(size: int, x: float, y: float, sigma_x: float, sigma_y: float) -> _F32:
    axis = np.arange(size, dtype=np.float32)
    gx = np.exp(-0.5 * ((axis - np.float32(x)) / np.float32(sigma_x)) ** 2)
    gy = np.exp(-0.5 * ((axis - np.float32(y)) / np.float32(sigma_y)) ** 2)
    return np.outer(gy, gx)


def _blur3(img: _F32) -> _F32:
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = p[:-2] + p[1:-1] + p[2:]
    out: _F32 = (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) * np.float32(1.0 / 9.0)
    return out


def _pick(rng: np.random.Generator, palette: tuple[_RGB, ...], spread: float) -> _F32:
    base = palette[int(rng.integers(len(palette)))]
    shade = float(rng.uniform(1 - spread, 1 + spread))
    return np.asarray([min(c * shade, 1.0) for c in base], dtype=np.float32)


def _background(rng: np.random.Generator, cam: CameraStyle, size: int) -> _F32:
    frac = (np.arange(size, dtype=np.float32) + 0.5) / np.float32(size)
    shift = rng.uniform(-0.04, 0.04)
    horizon, road_top = cam.horizon + shift, cam.road_top + shift
    sky = np.asarray(cam.sky, dtype=np.float32)
    verge = np.asarray(cam.verge, dtype=np.float32) * np.float32(rng.uniform(0.85, 1.15))
    road = np.asarray(cam.road, dtype=np.float32) * np.float32(rng.uniform(0.85, 1.15))
    fs = frac[:, None]
    sky_rows = sky + (1 - sky) * (0.45 * np.clip(fs / max(horizon, 1e-3), 0, 1))
    road_rows = road * (0.9 + 0.2 * fs)
    rows = np.where(fs < horizon, sky_rows, np.where(fs < road_top, verge, road_rows))
    img = np.repeat(rows[:, None, :], size, axis=1).astype(np.float32)

    # A tree line / fence along the verge: column-wise brightness that varies slowly.
    r0 = int(_clamp(round(horizon * size), 0, size))
    r1 = int(_clamp(round(road_top * size), r0, size))
    if r1 > r0:
        tex = rng.uniform(0.7, 1.25, size // 4 + 2).astype(np.float32)
        cols = np.interp(np.arange(size) / 4.0, np.arange(tex.size), tex).astype(np.float32)
        img[r0:r1] *= cols[None, :, None]

    xs = np.arange(size, dtype=np.float32)
    if cam.shoulder_line and r1 + 1 < size:
        img[r1 + 1] += (np.float32(0.85) - img[r1 + 1]) * np.float32(0.6)
    lane = round((cam.ground + cam.lane_offset + float(rng.uniform(-0.01, 0.01))) * size)
    if 0 <= lane < size:
        period = size * 0.5
        dash = np.mod(xs + np.float32(rng.uniform(0, period)), np.float32(period)) < period * 0.5
        img[lane, dash] += (np.float32(0.9) - img[lane, dash]) * np.float32(0.8)
    return img


class _Scene(NamedTuple):
    img: _F32
    vehicle_mask: _F32
    glass_mask: _F32
    pose: _Pose
    vehicle: _Vehicle


def _compose(label: str, rng: np.random.Generator, cam: CameraStyle, size: int) -> _Scene:
    veh = _vehicle(label, rng)
    img = _background(rng, cam, size)

    fill_w = rng.uniform(0.70, 0.88) * size / veh.length
    fill_h = rng.uniform(0.58, 0.74) * size / veh.height
    s = cam.scale * min(fill_w, fill_h)
    cy = (cam.ground + rng.uniform(-0.03, 0.03)) * size
    cy = _clamp(cy, veh.height * s + 1.0, size - 1.0)
    cx = size / 2 + rng.uniform(-0.07, 0.07) * size
    flip = 1.0 if rng.random() < 0.5 else -1.0
    pose = _Pose(
        cx, cy, s, flip, rng.uniform(-0.05, 0.05), rng.uniform(-0.08, 0.08), veh.length / 2
    )

    colours: dict[str, _F32] = {
        "body": _pick(rng, _PAINTS, 0.12),
        "cargo": _pick(rng, _CARGO, 0.08),
        "glass": (
            np.asarray((0.16, 0.20, 0.26), dtype=np.float32) * np.float32(rng.uniform(0.7, 1.5))
        ),
        "tyre": _TYRE,
        "hub": np.full(3, rng.uniform(0.45, 0.7), dtype=np.float32),
        "trim": np.full(3, rng.uniform(0.10, 0.22), dtype=np.float32),
        "rider": _pick(rng, _PAINTS[2:8], 0.2) * np.float32(0.6),
        "helmet": _pick(rng, _PAINTS, 0.1),
        "head": _HEAD_PAINT,
        "tail": _TAIL_PAINT,
        "marker": _MARKER_PAINT,
        "shadow": _SHADOW,
    }

    gu, gv = pose.grid(size)
    mask = np.zeros((size, size), dtype=np.float32)
    glass = np.zeros((size, size), dtype=np.float32)
    half_px = np.float32(0.5)
    for part in veh.parts:
        bx0, by0, bx1, by1 = pose.box_to_pixels(part.x0, part.y0, part.x1, part.y1)
        xa, xb = max(int(bx0) - 1, 0), min(int(bx1) + 3, size)
        ya, yb = max(int(by0) - 1, 0), min(int(by1) + 3, size)
        if xa >= xb or ya >= yb:
            continue
        d = _distance(part, gu[ya:yb, xa:xb], gv[ya:yb, xa:xb])
        m = d * np.float32(s * part.alpha)
        m += half_px * np.float32(part.alpha)
        np.maximum(m, 0.0, out=m)
        np.minimum(m, np.float32(part.alpha), out=m)
        region = img[ya:yb, xa:xb]
        region += m[:, :, None] * (colours[part.role] - region)
        if part.role == "shadow":
            continue
        np.maximum(mask[ya:yb, xa:xb], m, out=mask[ya:yb, xa:xb])
        if part.role == "glass":
            np.maximum(glass[ya:yb, xa:xb], m, out=glass[ya:yb, xa:xb])
    return _Scene(img, mask, glass, pose, veh)


def _light_glow(scene: _Scene, size: int, kind: str, strength: float, halo: float) -> _F32 | None:
    lights = [lt for lt in scene.vehicle.lights if lt.kind == kind]
    if not lights:
        return None
    core = _clamp(0.07 * scene.pose.s, 0.6, 1.5)
    glow = np.zeros((size, size), dtype=np.float32)
    for lt in lights:
        x, y = scene.pose.to_pixel(lt.x, lt.y)
        glow += _gauss(size, x, y, core, core) * np.float32(strength)
        glow += _gauss(size, x, y, core * 3.0, core * 3.0) * np.float32(halo)
    return glow


def _add_glow(img: _F32, glow: _F32 | None, colour: _RGB) -> None:
    if glow is not None:
        img += glow[:, :, None] * np.asarray(colour, dtype=np.float32)


def _night(scene: _Scene, rng: np.random.Generator, cam: CameraStyle, size: int) -> _F32:
    lamp_col = np.asarray(_SODIUM if cam.sodium_lamps else _LED, dtype=np.float32)
    lamp = _gauss(
        size,
        (cam.lamp_x + rng.uniform(-0.1, 0.1)) * size,
        rng.uniform(-0.1, 0.2) * size,
        rng.uniform(0.25, 0.45) * size,
        rng.uniform(0.3, 0.5) * size,
    ) * np.float32(rng.uniform(0.3, 0.55))
    pose, veh = scene.pose, scene.vehicle
    fx, fy = pose.to_pixel(veh.length, 0.0)
    beam = _gauss(size, fx + pose.flip * 0.22 * size, fy, 0.16 * size, 0.05 * size)
    ambient = np.float32(rng.uniform(0.04, 0.09))
    illum = ambient + lamp[:, :, None] * lamp_col
    illum += beam[:, :, None] * np.asarray((0.55, 0.53, 0.45), dtype=np.float32)
    # Lamps sit high and behind; the vehicle's side faces away from them.
    illum *= (1 - np.float32(0.55) * scene.vehicle_mask)[:, :, None]
    img = scene.img * illum

    _add_glow(img, _light_glow(scene, size, "head", 1.6, 0.45), _HEAD)
    _add_glow(img, _light_glow(scene, size, "tail", 1.0, 0.25), _TAIL)
    _add_glow(img, _light_glow(scene, size, "marker", 0.9, 0.15), _MARKER)
    if veh.lit_windows:
        img += scene.glass_mask[:, :, None] * (
            np.asarray(_WINDOW_GLOW, dtype=np.float32) * np.float32(rng.uniform(0.3, 0.5))
        )
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(cam.noise * 2 + 0.02)
    return img


def _fog(scene: _Scene, rng: np.random.Generator, cam: CameraStyle, size: int) -> _F32:
    img = scene.img
    _add_glow(img, _light_glow(scene, size, "head", 0.5, 0.15), _HEAD)
    grey = rng.uniform(0.72, 0.88)
    haze = np.asarray((grey, grey, grey * 1.03), dtype=np.float32)
    frac = np.arange(size, dtype=np.float32) / np.float32(size)
    t0 = rng.uniform(0.2, 0.36)
    # Transmission falls with distance: upper rows (verge, sky) are further away than the road,
    # and the vehicle is nearer than anything behind it.
    t_bg = np.float32(t0) * (np.float32(0.5) + np.float32(0.6) * frac)[:, None]
    t = t_bg + (np.float32(min(1.45 * t0, 0.6)) - t_bg) * scene.vehicle_mask
    img = img * t[:, :, None] + haze * (1 - t[:, :, None])
    img = _blur3(img)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(cam.noise * 0.7)
    return img


def _rain(scene: _Scene, rng: np.random.Generator, cam: CameraStyle, size: int) -> _F32:
    img = scene.img
    _add_glow(img, _light_glow(scene, size, "head", 0.8, 0.2), _HEAD)
    _add_glow(img, _light_glow(scene, size, "tail", 0.5, 0.1), _TAIL)
    dim = np.float32(rng.uniform(0.55, 0.75))
    grey = np.asarray((0.42, 0.45, 0.5), dtype=np.float32)
    img = (img * np.float32(0.85) + grey * np.float32(0.15)) * dim

    area = (size / 64) ** 2
    n = int(rng.integers(int(40 * area) + 1, int(90 * area) + 2))
    length = int(rng.integers(4, 10))
    slope = rng.uniform(-0.6, 0.6)
    steps = np.arange(length, dtype=np.float32)
    x0 = rng.uniform(0, size, n).astype(np.float32)
    y0 = rng.uniform(0, size, n).astype(np.float32)
    ys = (y0[:, None] + steps).astype(np.int64) % size
    xs = (x0[:, None] + np.float32(slope) * steps).astype(np.int64) % size
    streaks = np.zeros((size, size), dtype=np.float32)
    streaks[ys, xs] = rng.uniform(0.2, 0.45, (n, 1)).astype(np.float32)
    img += streaks[:, :, None] * (np.float32(0.85) - img)
    img = _blur3(img)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(cam.noise + 0.025)
    return img


def _day(scene: _Scene, rng: np.random.Generator, cam: CameraStyle, size: int) -> _F32:
    img = scene.img * np.float32(rng.uniform(0.9, 1.1))
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(cam.noise)
    return img


_CONDITION_FNS: dict[str, Callable[[_Scene, np.random.Generator, CameraStyle, int], _F32]] = {
    "day": _day,
    "night": _night,
    "fog": _fog,
    "rain": _rain,
}


def _check(label: str, size: int) -> None:
    if not label:
        raise ValueError("label must be a non-empty class name")
    if size < _MIN_SIZE:
        raise ValueError(f"size must be >= {_MIN_SIZE}, got {size}")


def _to_pixels(img: _F32, cam: CameraStyle) -> npt.NDArray[np.uint8]:
    img *= np.asarray(cam.gains, dtype=np.float32)
    out = np.clip(img, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)
    return out.astype(np.uint8)


def render_frame(
    label: str,
    condition: str,
    rng: np.random.Generator,
    camera: CameraStyle | None = None,
    size: int = 64,
) -> npt.NDArray[np.uint8]:
    """HxWx3 uint8 image of one vehicle of class ``label`` under ``condition``.

    ``camera`` defaults to a neutral ``CameraStyle()``. Raises ValueError for an unknown
    condition, an empty label, or ``size`` below 16. Deterministic given the generator state
    (see the module docstring); advances ``rng``.
    """
    apply = _CONDITION_FNS.get(condition)
    if apply is None:
        raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
    _check(label, size)
    cam = camera if camera is not None else _DEFAULT_CAMERA
    scene = _compose(label, rng, cam, size)
    return _to_pixels(apply(scene, rng, cam, size), cam)


# Darkness below the first bound is recorded as day, from the second on as night: a frame a
# quarter of the way to night still reads as daylight, one three quarters of the way as night.
_DUSK_FROM = 0.25
_NIGHT_FROM = 0.75


def condition_for_darkness(darkness: float) -> str:
    """The condition recorded for a frame drawn at ``darkness``: ``day`` below 0.25,
    ``night`` from 0.75 on, ``dusk`` in between. Raises ValueError outside [0, 1]."""
    if not 0.0 <= darkness <= 1.0:
        raise ValueError(f"darkness must be in [0, 1], got {darkness}")
    if darkness < _DUSK_FROM:
        return "day"
    return "night" if darkness >= _NIGHT_FROM else DUSK


def render_dusk(
    label: str,
    darkness: float,
    rng: np.random.Generator,
    camera: CameraStyle | None = None,
    size: int = 64,
) -> npt.NDArray[np.uint8]:
    """HxWx3 uint8 image of one vehicle of class ``label`` as the light falls: ``darkness``
    0 is day, 1 is night.

    The scene (vehicle, pose, background) is composed once; the day and night lighting of
    that scene are mixed by ``darkness``, so the ambient light dims linearly while the street
    lamp, head-, tail- and marker lights and lit windows fade in, and mean luminance falls
    steadily as ``darkness`` rises. At exactly 0 (1) the result is byte-identical to
    ``render_frame(label, "day" ("night"), ...)`` from the same generator state.

    Raises ValueError for ``darkness`` outside [0, 1], an empty label or ``size`` below 16.
    Deterministic given the generator state; advances ``rng``.
    """
    if not 0.0 <= darkness <= 1.0:
        raise ValueError(f"darkness must be in [0, 1], got {darkness}")
    if darkness == 0.0:
        return render_frame(label, "day", rng, camera, size)
    if darkness == 1.0:
        return render_frame(label, "night", rng, camera, size)
    _check(label, size)
    cam = camera if camera is not None else _DEFAULT_CAMERA
    scene = _compose(label, rng, cam, size)
    # The day lighting draws from a copy of the generator, the night lighting from the
    # generator itself: each sees the state a plain day or night render would, which is what
    # makes both ends of the ramp identical to those renders.
    day = _day(scene, copy.deepcopy(rng), cam, size)
    night = _night(scene, rng, cam, size)
    w = np.float32(darkness)
    return _to_pixels(day * (np.float32(1.0) - w) + night * w, cam)
