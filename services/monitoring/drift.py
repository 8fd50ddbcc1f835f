"""Label-free drift signals."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DriftFinding", "DriftPolicy", "detect_drift", "psi"]


def psi(expected: Mapping[str, float], actual: Mapping[str, float], floor: float = 1e-4) -> float:
    """Population stability index of ``actual`` against ``expected`` (shares per category).

    Sum over categories of ``(a - e) * ln(a / e)``; shares are floored at ``floor`` so a
    category missing on one side counts as rare rather than infinite. Rules of thumb: below
    0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a large one."""
    keys = set(expected) | set(actual)
    e_total = sum(expected.values()) or 1.0
    a_total = sum(actual.values()) or 1.0
    total = 0.0
    for k in keys:
        e = max(expected.get(k, 0.0) / e_total, floor)
        a = max(actual.get(k, 0.0) / a_total, floor)
        total += (a - e) * math.log(a / e)
    return total


class DriftPolicy(BaseModel):
    """When a window's label-free signals say the input has changed.

    The defaults come from the simulator: a day model's predicted class mix between day
    windows moves by a PSI of about 0.01 and its mean confidence by about 0.02, while at
    night or in fog the mix moves by a PSI well above 0.25 and the confidence falls by 0.2
    or more. Labels take seconds to minutes to come; these signals come with the frames."""

    model_config = ConfigDict(frozen=True)

    psi_threshold: float = Field(default=0.25, gt=0)
    """PSI of the predicted class mix against the version's first window above this drifts."""

    confidence_drop: float = Field(default=0.15, gt=0, le=1)
    """Mean confidence this far below the first window's drifts (also per camera)."""

    min_samples: int = Field(default=100, ge=1)
    """Predictions a window needs before its signals count."""

    min_camera_samples: int = Field(default=30, ge=1)
    """Predictions a camera needs, in the window and in the reference, before its own
    confidence counts. A window that closes while a backlog drains can hold only a handful
    of one camera's frames, and the mean of a handful is noise, not drift."""

    label_requests_per_window: int = Field(default=40, ge=0)
    """Least confident frames of the drifting cameras asked to be labelled per window."""


@dataclass(frozen=True)
class DriftFinding:
    """Why a window drifts, and where."""

    reasons: tuple[str, ...]
    cameras: tuple[str, ...]
    """Cameras whose confidence fell the most (all cameras seen when none stands out)."""


def detect_drift(
    *,
    samples: int,
    psi_value: float | None,
    mean_confidence: float | None,
    reference_confidence: float | None,
    camera_confidence: Mapping[str, float],
    reference_camera_confidence: Mapping[str, float],
    policy: DriftPolicy,
    camera_samples: Mapping[str, int] | None = None,
    reference_camera_samples: Mapping[str, int] | None = None,
) -> DriftFinding | None:
    """The drift a window shows against its version's reference window, or None.

    A camera's own confidence is compared only where both sides saw at least
    ``policy.min_camera_samples`` of its predictions; a side whose counts are not given
    (a reference kept before counts were) is taken as large enough."""
    if samples < policy.min_samples:
        return None
    reasons = []
    if psi_value is not None and psi_value > policy.psi_threshold:
        reasons.append(f"class mix PSI {psi_value:.2f} > {policy.psi_threshold:.2f}")
    if (
        mean_confidence is not None
        and reference_confidence is not None
        and reference_confidence - mean_confidence > policy.confidence_drop
    ):
        reasons.append(f"mean confidence {mean_confidence:.2f} (was {reference_confidence:.2f})")

    def enough(counts: Mapping[str, int] | None, cam: str) -> bool:
        return counts is None or counts.get(cam, 0) >= policy.min_camera_samples

    drops = {
        cam: reference_camera_confidence[cam] - conf
        for cam, conf in camera_confidence.items()
        if cam in reference_camera_confidence
        and enough(camera_samples, cam)
        and enough(reference_camera_samples, cam)
    }
    cameras = sorted(
        (cam for cam, d in drops.items() if d > policy.confidence_drop),
        key=lambda cam: -drops[cam],
    )
    if cameras and not reasons:
        reasons.append("confidence fell on " + ", ".join(f"{c} (-{drops[c]:.2f})" for c in cameras))
    if not reasons:
        return None
    return DriftFinding(tuple(reasons), tuple(cameras or sorted(camera_confidence)))
