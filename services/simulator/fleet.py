"""The simulated camera fleet and annotation team, without Kafka.

``Fleet.frame(i)`` is the i-th frame of a scenario: camera (round robin), class (the traffic
mix), condition (the schedule) and pixels all come from a generator seeded with
``(seed, i)``, so any frame can be recreated alone and a run is the same for the same seed.
Under a darkness ramp the frame is drawn at the ramp's level at its scenario time and carries
the condition that level reads as (``day``, ``dusk`` or ``night``).

``Annotators`` decides, also per frame and deterministically, whether a frame is labelled
unasked (the coverage), after what delay, and whether the label is wrong (the noise); frames
asked for on ``labels.requests`` are labelled too, once.
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from services.simulator.render import (
    CameraStyle,
    condition_for_darkness,
    render_dusk,
    render_frame,
)
from services.simulator.scenario import LabelPolicy, Scenario

__all__ = ["Annotators", "Fleet", "PlannedLabel", "SimFrame"]


@dataclass(frozen=True)
class SimFrame:
    index: int
    frame_id: str
    camera_id: str
    label: str
    """Ground truth."""
    condition: str
    scenario_t: float
    pixels: np.ndarray
    darkness: float | None = None
    """The light level it was drawn at under a darkness ramp (0 day, 1 night); else None."""


@dataclass(frozen=True, order=True)
class PlannedLabel:
    due: float
    seq: int
    frame_id: str
    camera_id: str
    label: str
    """What the annotator says (wrong with probability ``noise``)."""
    true_label: str
    condition: str
    requested: bool


class Fleet:
    def __init__(
        self,
        scenario: Scenario,
        classes: tuple[str, ...],
        *,
        run_id: str,
        size: int = 64,
        rate: float | None = None,
    ) -> None:
        """``rate`` (frames/s) maps frame indices to scenario time; default the scenario's."""
        self.scenario = scenario
        self.classes = classes
        self.run_id = run_id
        self.size = size
        self._rate = rate or scenario.rate or 20.0
        self._cameras = scenario.camera_ids()
        self._styles = {
            cam: CameraStyle.for_camera(i, scenario.site) for i, cam in enumerate(self._cameras)
        }
        self._class_p = np.asarray(scenario.class_weights(classes))

    def camera_style(self, camera_id: str) -> CameraStyle:
        """How ``camera_id`` looks at this scenario's site. Raises KeyError for an unknown one."""
        return self._styles[camera_id]

    def scenario_time(self, index: int) -> float:
        return index / self._rate

    def frame(self, index: int) -> SimFrame:
        rng = np.random.default_rng([self.scenario.seed, index])
        camera = self._cameras[index % len(self._cameras)]
        t = self.scenario_time(index)
        entry = self.scenario.entry_for(camera, t)
        # Draws stay in their order (condition, class, pixels): a scenario without a ramp
        # gives the frames it always gave.
        darkness = entry.darkness_at(t)
        if darkness is None:
            weights = entry.weights()
            names = list(weights)
            condition = names[int(rng.choice(len(names), p=list(weights.values())))]
        else:
            condition = condition_for_darkness(darkness)
        label = self.classes[int(rng.choice(len(self.classes), p=self._class_p))]
        style = self._styles[camera]
        if darkness is None:
            pixels = render_frame(label, condition, rng, style, self.size)
        else:
            pixels = render_dusk(label, darkness, rng, style, self.size)
        return SimFrame(
            index=index,
            frame_id=f"{self.run_id}-{index:08d}",
            camera_id=camera,
            label=label,
            condition=condition,
            scenario_t=t,
            pixels=pixels,
            darkness=darkness,
        )


COVERAGE_STREAM = 3
"""The annotators' coverage draw of a frame comes from ``[seed, index, COVERAGE_STREAM]``;
its label's delay and noise from ``[seed, index, 1]`` (unasked) or ``[seed, index, 2]``
(asked for); the frame itself from ``[seed, index]``."""


class Annotators:
    """Plans labels and hands them out when due. Thread-safe (requests come from a consumer
    thread)."""

    def __init__(
        self,
        policy: LabelPolicy,
        classes: tuple[str, ...],
        seed: int,
        *,
        remember: int = 200_000,
    ) -> None:
        self.policy = policy
        self.classes = classes
        self.seed = seed
        self._heap: list[PlannedLabel] = []
        self._seq = 0
        self._seen: OrderedDict[str, tuple[SimFrame, bool]] = OrderedDict()
        self._remember = remember
        self._lock = threading.Lock()
        self.requests_unknown = 0
        self.requests_repeated = 0

    def _plan(self, frame: SimFrame, now: float, requested: bool) -> PlannedLabel:
        rng = np.random.default_rng([self.seed, frame.index, 1 + int(requested)])
        p = self.policy
        delay = max(0.0, p.delay_s + (rng.uniform(-p.jitter_s, p.jitter_s) if p.jitter_s else 0))
        said = frame.label
        if p.noise and rng.random() < p.noise and len(self.classes) > 1:
            others = [c for c in self.classes if c != frame.label]
            said = others[int(rng.integers(len(others)))]
        self._seq += 1
        return PlannedLabel(
            now + delay,
            self._seq,
            frame.frame_id,
            frame.camera_id,
            said,
            frame.label,
            frame.condition,
            requested,
        )

    def observe(self, frame: SimFrame, now: float) -> bool:
        """Record a published frame; plan its label when it falls in the coverage. True
        when a label was planned."""
        # Not [seed, index, 0]: numpy seeds [seed, index, 0] as it seeds [seed, index], the
        # frame's own generator, and the coverage draw would follow the frame's class draw.
        rng = np.random.default_rng([self.seed, frame.index, COVERAGE_STREAM])
        labelled = bool(rng.random() < self.policy.coverage)
        light = SimFrame(
            frame.index,
            frame.frame_id,
            frame.camera_id,
            frame.label,
            frame.condition,
            frame.scenario_t,
            np.empty(0, np.uint8),
            frame.darkness,
        )
        with self._lock:
            self._seen[frame.frame_id] = (light, labelled)
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)
            if labelled:
                heapq.heappush(self._heap, self._plan(frame, now, requested=False))
        return labelled

    def request(self, frame_id: str, now: float) -> bool:
        """Someone asked for ``frame_id``'s label. True when a label was planned; False when
        the frame is not one of ours (or too old to remember) or is already labelled."""
        with self._lock:
            held = self._seen.get(frame_id)
            if held is None:
                self.requests_unknown += 1
                return False
            frame, labelled = held
            if labelled:
                self.requests_repeated += 1
                return False
            self._seen[frame_id] = (frame, True)
            heapq.heappush(self._heap, self._plan(frame, now, requested=True))
            return True

    def due(self, now: float) -> list[PlannedLabel]:
        """Labels whose time has come, in order; removed from the plan."""
        out: list[PlannedLabel] = []
        with self._lock:
            while self._heap and self._heap[0].due <= now:
                out.append(heapq.heappop(self._heap))
        return out

    def pending(self) -> int:
        with self._lock:
            return len(self._heap)

    def next_due(self) -> float | None:
        with self._lock:
            return self._heap[0].due if self._heap else None
