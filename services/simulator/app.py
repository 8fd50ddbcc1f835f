"""The simulator as a service: a scenario played against Kafka, label requests answered."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from services.simulator.fleet import Annotators, Fleet
from services.simulator.runner import Simulator, Stats
from services.simulator.scenario import Scenario, load
from services.simulator.settings import SimulatorSettings
from services.simulator.sink import KafkaSink
from shared.bus import stop_on_signals
from shared.events import LabelRequest, new_id
from shared.ports import Message
from shared.service import service_runtime
from shared.topics import Topics

__all__ = ["resolve", "run"]

log = logging.getLogger("streamloop.simulator")


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

        requests = rt.consumer_loop(
            [Topics.LABELS_REQUESTS],
            LabelRequest,
            group_id=settings.group_id,
            handler=on_request,
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
