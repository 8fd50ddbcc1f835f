"""Run the simulator: ``streamloop serve simulator`` (settings from the environment) or
``streamloop simulate --scenario NAME`` (the same, with a live line of counts)."""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from services.simulator.fleet import Annotators, Fleet, PlannedLabel, SimFrame
from services.simulator.runner import Simulator, Stats
from services.simulator.scenario import Scenario, load
from services.simulator.settings import SimulatorSettings
from shared.bus import ConsumerLoop, EventProducer, Message, stop_on_signals
from shared.events import FrameRaw, Label, LabelRequest, new_id
from shared.service import service_runtime
from shared.topics import Topics

log = logging.getLogger("streamloop.simulator")


class KafkaSink:
    """Publishes simulated frames to ``frames.raw`` and labels to ``labels``."""

    def __init__(self, producer: EventProducer, scenario: Scenario, run_id: str) -> None:
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
            source="simulator",
        )
        self._producer.publish(Topics.LABELS, event, key=label.frame_id)

    def flush(self) -> None:
        self._producer.flush()


def resolve(settings: SimulatorSettings) -> tuple[Scenario, float]:
    """The scenario with the settings' overrides applied, and the frame rate of its file
    (which maps frame numbers to scenario time, whatever rate the run publishes at)."""
    scenario = load(settings.scenario)
    file_rate = scenario.rate or 20.0
    updates: dict[str, object] = {}
    if settings.rate is not None:
        updates["rate"] = settings.rate
    if settings.cameras is not None:
        updates["cameras"] = settings.cameras
    if settings.duration_s is not None:
        updates["duration_s"] = settings.duration_s
    if settings.seed is not None:
        updates["seed"] = settings.seed
    return scenario.model_copy(update=updates), file_rate


def run(settings: SimulatorSettings, on_progress: Callable[[Stats], None] | None = None) -> Stats:
    """Run the configured scenario against Kafka until its duration or SIGTERM/SIGINT."""
    scenario, file_rate = resolve(settings)
    run_id = settings.run_id or new_id()[:8]
    classes = settings.task.classes
    with service_runtime("simulator", settings) as rt:
        fleet = Fleet(
            scenario, classes, run_id=run_id, size=settings.task.image_width, rate=file_rate
        )
        annotators = Annotators(scenario.labels, classes, scenario.seed)
        sim = Simulator(
            fleet,
            annotators,
            KafkaSink(rt.producer, scenario, run_id),
            rate=scenario.rate,
            content_type=scenario.content_type,
        )

        def on_request(msg: Message[LabelRequest]) -> None:
            sim.request_label(msg.event.frame_id)

        requests: ConsumerLoop[LabelRequest] = ConsumerLoop(
            settings.kafka,
            group_id=settings.group_id,
            topics=[Topics.LABELS_REQUESTS],
            event_type=LabelRequest,
            producer=rt.producer,
            handler=on_request,
            tracer=rt.tracer,
            client_id="simulator",
        )
        thread = threading.Thread(target=requests.run, name="label-requests", daemon=True)
        thread.start()
        stop_on_signals(sim, requests)
        max_frames = None
        if scenario.duration_s > 0:
            max_frames = max(1, round(scenario.duration_s * (scenario.rate or file_rate)))
        log.info(
            "simulating",
            extra={"scenario": scenario.name, "run_id": run_id, "rate": scenario.rate},
        )
        t0 = time.monotonic()
        stats = sim.run(max_frames=max_frames, on_progress=on_progress)
        requests.stop()
        thread.join(30)
        summary = {
            "scenario": scenario.name,
            "run_id": run_id,
            "seed": scenario.seed,
            "label_coverage": scenario.labels.coverage,
            "wall_s": round(time.monotonic() - t0, 3),
            **stats.summary(),
            "label_requests_unknown": annotators.requests_unknown,
        }
        log.info("simulation finished", extra=summary)
        if settings.summary_path:
            Path(settings.summary_path).write_text(json.dumps(summary, indent=2))
        return stats


def main() -> int:
    run(SimulatorSettings())
    return 0


if __name__ == "__main__":
    sys.exit(main())
