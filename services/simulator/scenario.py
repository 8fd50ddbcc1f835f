"""Scenario files: what the simulated camera fleet does over time.

A scenario is a TOML file (see ``scenarios/`` beside this module for the built-in ones):
rate, cameras, content type, label coverage / delay / noise, the traffic mix, and a
``[[schedule]]`` of conditions. Each schedule entry applies from ``at_s`` seconds of scenario
time on, to the cameras it names (all when it names none), with one ``condition``, a
weighted mix ``conditions``, or a ``darkness`` ramp from day towards night::

    [[schedule]]
    at_s = 180
    darkness = { from = 0.0, to = 1.0, over_s = 600 }

Darkness goes linearly from ``from`` at ``at_s`` to ``to`` ``over_s`` seconds later and stays
there until a later entry takes over (0 is day, 1 is night; see ``render.render_dusk``). For
each camera the latest entry that has started wins.

Cameras belong to a ``site`` (default 0, shared by the built-in scenarios): a camera's look
depends on the site and its number, never on the seed.

Scenario time is ``frame_index / rate``, not the wall clock, so a scenario run with the same
seed produces the same frames in the same order however fast it is published.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.simulator.render import CONDITIONS

__all__ = [
    "BUILTIN_DIR",
    "DarknessRamp",
    "LabelPolicy",
    "Scenario",
    "ScheduleEntry",
    "builtin_names",
    "load",
]

BUILTIN_DIR = Path(__file__).resolve().parent / "scenarios"


class LabelPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    coverage: float = Field(default=0.3, ge=0.0, le=1.0)
    """Share of frames labelled without being asked."""
    delay_s: float = Field(default=10.0, ge=0.0)
    """Mean delay from capture to label."""
    jitter_s: float = Field(default=0.0, ge=0.0)
    """The delay varies uniformly by up to this much either way (never below zero)."""
    noise: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of labels that name a wrong class."""


class DarknessRamp(BaseModel):
    """Light falling (or rising) linearly: darkness ``from`` to ``to`` over ``over_s``
    seconds. Written ``{ from = 0.0, to = 1.0, over_s = 600 }`` in a scenario file."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True)

    start: float = Field(alias="from", ge=0.0, le=1.0)
    """Darkness when the entry starts: 0 is day, 1 is night."""
    end: float = Field(alias="to", ge=0.0, le=1.0)
    """Darkness ``over_s`` seconds later, and from then on."""
    over_s: float = Field(gt=0.0)
    """Scenario seconds the ramp takes."""

    def at(self, elapsed_s: float) -> float:
        """Darkness ``elapsed_s`` scenario seconds after the entry started (clamped to the
        ramp's ends)."""
        f = min(max(elapsed_s / self.over_s, 0.0), 1.0)
        return self.start + (self.end - self.start) * f


class ScheduleEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    at_s: float = Field(ge=0.0)
    condition: str | None = None
    conditions: dict[str, float] | None = None
    darkness: DarknessRamp | None = None
    cameras: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_of(self) -> ScheduleEntry:
        given = [self.condition, self.conditions, self.darkness]
        if sum(x is not None for x in given) != 1:
            raise ValueError("give exactly one of condition, conditions or darkness")
        if self.darkness is not None:
            return self
        names = [self.condition] if self.condition else list(self.conditions or {})
        unknown = [n for n in names if n not in CONDITIONS]
        if unknown:
            raise ValueError(f"unknown condition(s) {unknown}; known: {list(CONDITIONS)}")
        if self.conditions is not None and (
            any(w < 0 for w in self.conditions.values()) or sum(self.conditions.values()) <= 0
        ):
            raise ValueError("condition weights must be >= 0 and not all zero")
        return self

    def darkness_at(self, t: float) -> float | None:
        """The darkness level at scenario time ``t`` for a ramp entry; None otherwise."""
        if self.darkness is None:
            return None
        return self.darkness.at(t - self.at_s)

    def weights(self) -> dict[str, float]:
        """Condition weights of a ``condition`` or ``conditions`` entry. Raises ValueError
        for a darkness ramp, whose condition depends on the time (see ``darkness_at``)."""
        if self.darkness is not None:
            raise ValueError("a darkness ramp has no fixed condition weights")
        if self.condition is not None:
            return {self.condition: 1.0}
        total = sum((self.conditions or {}).values())
        return {k: v / total for k, v in (self.conditions or {}).items()}


class Scenario(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    seed: int = 0
    """Draws the frames: class, condition and pixels of frame *i* depend on it and on *i*."""
    site: int = Field(default=0, ge=0)
    """The site the cameras stand at: ``cam-N`` looks the same (background, road, lamps,
    sensor) in every scenario of one site, as a real camera does whatever the weather; a
    model trained on one scenario's frames meets the same cameras in the next."""
    rate: float = Field(default=20.0, ge=0.0)
    """Frames per second for the whole fleet; 0 publishes as fast as possible."""
    cameras: int = Field(default=4, ge=1, le=10_000)
    duration_s: float = Field(default=0.0, ge=0.0)
    """Scenario seconds to run; 0 runs until stopped."""
    content_type: Literal["image/png", "image/jpeg"] = "image/jpeg"
    labels: LabelPolicy = LabelPolicy()
    classes: dict[str, float] = Field(default_factory=dict)
    """Traffic mix weights by class; configured classes not named here get weight 1."""
    schedule: tuple[ScheduleEntry, ...] = (ScheduleEntry(at_s=0.0, condition="day"),)

    def camera_ids(self) -> list[str]:
        return [f"cam-{i + 1}" for i in range(self.cameras)]

    def entry_for(self, camera_id: str, t: float) -> ScheduleEntry:
        """The schedule entry in force for ``camera_id`` at scenario time ``t``."""
        best: ScheduleEntry | None = None
        for entry in self.schedule:
            applies = entry.at_s <= t and (not entry.cameras or camera_id in entry.cameras)
            if applies and (best is None or entry.at_s >= best.at_s):
                best = entry
        return best or ScheduleEntry(at_s=0.0, condition="day")

    def class_weights(self, classes: tuple[str, ...]) -> list[float]:
        """Normalised weights for ``classes`` (the configured class list)."""
        raw = [max(0.0, self.classes.get(c, 1.0)) for c in classes]
        total = sum(raw) or 1.0
        return [w / total for w in raw]


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def load(name_or_path: str | Path) -> Scenario:
    """A built-in scenario by name (``day-to-night``) or a scenario file by path.

    Raises FileNotFoundError naming the built-in scenarios when neither exists, and
    ValueError (pydantic's ValidationError) for a file that is not a valid scenario."""
    path = Path(name_or_path)
    if not path.is_file():
        path = BUILTIN_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no scenario {str(name_or_path)!r}; built-in: {', '.join(builtin_names())}"
        )
    with path.open("rb") as f:
        data = tomllib.load(f)
    return Scenario.model_validate(data)
