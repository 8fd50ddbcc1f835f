"""Where the simulator's frames and labels go: ``frames.raw`` and ``labels`` on Kafka."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from services.simulator.fleet import PlannedLabel, SimFrame
from services.simulator.scenario import Scenario
from shared.events import FrameRaw, Label
from shared.ports import TracingPublisher
from shared.topics import Topics

__all__ = ["KafkaSink"]


class KafkaSink:
    """Publishes simulated frames to ``frames.raw`` and labels to ``labels``."""

    def __init__(self, producer: TracingPublisher, scenario: Scenario, run_id: str) -> None:
        self._producer = producer
        self._attrs = {"scenario": scenario.name, "run_id": run_id}

    def frame(self, frame: SimFrame, data: bytes, content_type: str) -> None:
        assert content_type in ("image/png", "image/jpeg")
        event = FrameRaw(
            frame_id=frame.frame_id,
            camera_id=frame.camera_id,
            captured_at=datetime.now(UTC),
            content_type=content_type,
            image_b64=base64.b64encode(data).decode(),
            condition=frame.condition,
            attributes=self._attrs,
            source="simulator",
        )
        self._producer.publish(
            Topics.FRAMES_RAW,
            event,
            key=frame.camera_id,
            attributes={"streamloop.frame_id": frame.frame_id},
        )

    def label(self, label: PlannedLabel) -> None:
        event = Label(
            frame_id=label.frame_id,
            label=label.label,
            camera_id=label.camera_id,
            annotator="simulator",
            requested=label.requested,
            source="simulator",
        )
        self._producer.publish(Topics.LABELS, event, key=label.frame_id)

    def flush(self) -> None:
        self._producer.flush()
