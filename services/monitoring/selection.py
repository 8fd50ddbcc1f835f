"""Which frames to ask people to label: active learning under a budget per camera and minute.

Labels cost money, and a random sample spends them where the model is already right. Each
camera gets at most ``per_camera_minute`` label requests per minute of serving time, filled
in this order:

1. **disagreements**: frames on which the champion and the challenger (shadow) predicted
   different classes. Only those decide which of the two is better (the registry's
   sequential test moves on discordant frames only), and one of the two is wrong on each;
2. **least confident**: the champion's frames with the lowest calibrated confidence, below
   ``max_confidence`` (a frame the model is sure of teaches it little).

A camera's minute is chosen when its first prediction of the next minute arrives (serving
time, so a backlog replays the same choices); a camera that stops sending frames leaves its
last minute unasked. The drift alert's own requests (``services.monitoring.monitor``) come on
top of this budget: a drift episode is worth more labels.

Pure; its state is plain JSON in the monitor's table.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LabelSelector", "Pick", "SelectionPolicy"]


class SelectionPolicy(BaseModel):
    """The label budget."""

    model_config = ConfigDict(frozen=True)

    per_camera_minute: int = Field(default=10, ge=0)
    """Label requests per camera per minute; 0 asks for none (the drift alert's requests
    stay)."""

    max_confidence: float = Field(default=0.8, gt=0.0, le=1.0)
    """Only frames with a calibrated confidence below this are asked for as least confident."""


@dataclass(frozen=True)
class Pick:
    """A frame to ask a label for, and why."""

    frame_id: str
    camera_id: str
    reason: str
    confidence: float | None


class CameraMinute(BaseModel):
    """One camera's candidates in its current minute."""

    minute: datetime
    disagreements: list[tuple[str, str]] = Field(default_factory=list)
    """(frame id, reason), in arrival order, at most the budget."""
    uncertain: list[tuple[float, str]] = Field(default_factory=list)
    """(negated confidence, frame id): a heap of the least confident, at most the budget."""


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


class LabelSelector(BaseModel):
    """The candidates of every camera's current minute (see the module docstring)."""

    cameras: dict[str, CameraMinute] = Field(default_factory=dict)

    def _slot(self, camera_id: str, at: datetime, policy: SelectionPolicy) -> list[Pick]:
        """The camera's minute for ``at``; what the minute it replaces chose."""
        minute = _minute(at)
        held = self.cameras.get(camera_id)
        if held is not None and held.minute >= minute:
            return []
        self.cameras[camera_id] = CameraMinute(minute=minute)
        return self._choose(camera_id, held, policy) if held is not None else []

    def on_prediction(
        self,
        frame_id: str,
        camera_id: str,
        confidence: float,
        served_at: datetime,
        policy: SelectionPolicy,
    ) -> list[Pick]:
        """Count one champion prediction; the requests of a minute it closed."""
        if policy.per_camera_minute == 0:
            return []
        out = self._slot(camera_id, served_at, policy)
        held = self.cameras[camera_id]
        if _minute(served_at) < held.minute or confidence >= policy.max_confidence:
            return out  # a late frame of a minute already chosen, or a sure one
        item = (-confidence, frame_id)
        if len(held.uncertain) < policy.per_camera_minute:
            heapq.heappush(held.uncertain, item)
        elif item > held.uncertain[0]:
            heapq.heapreplace(held.uncertain, item)
        return out

    def on_disagreement(
        self,
        frame_id: str,
        camera_id: str,
        served_at: datetime,
        reason: str,
        policy: SelectionPolicy,
    ) -> list[Pick]:
        """Count one frame the champion and challenger disagree on; the requests of a minute
        it closed."""
        if policy.per_camera_minute == 0:
            return []
        out = self._slot(camera_id, served_at, policy)
        held = self.cameras[camera_id]
        if _minute(served_at) >= held.minute and len(held.disagreements) < policy.per_camera_minute:
            held.disagreements.append((frame_id, reason))
        return out

    @staticmethod
    def _choose(camera_id: str, held: CameraMinute, policy: SelectionPolicy) -> list[Pick]:
        picks: list[Pick] = []
        seen: set[str] = set()
        for frame_id, reason in held.disagreements:
            if len(picks) < policy.per_camera_minute and frame_id not in seen:
                seen.add(frame_id)
                picks.append(Pick(frame_id, camera_id, reason, None))
        for neg, frame_id in sorted(held.uncertain, reverse=True):
            if len(picks) < policy.per_camera_minute and frame_id not in seen:
                seen.add(frame_id)
                picks.append(
                    Pick(
                        frame_id,
                        camera_id,
                        f"least confident of {camera_id} in its minute ({-neg:.2f})",
                        -neg,
                    )
                )
        return picks
