"""Training's handler of retrain requests: the trainer, timed and counted."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Histogram

from services.training.service import Trainer
from shared.events import RetrainRequest
from shared.ports import Message

__all__ = ["make_handler"]

REQUESTS = Counter(
    "streamloop_training_requests",
    "Retrain requests handled, by outcome (trained, duplicate, skipped, ignored).",
    ["outcome"],
)
DURATION = Histogram(
    "streamloop_training_duration_seconds",
    "Wall time of a training run, snapshot to published model.",
    buckets=(5, 15, 30, 60, 120, 300, 600),
)


def make_handler(trainer: Trainer) -> Callable[[Message[RetrainRequest]], None]:
    """Handle one request with ``trainer``; its failure propagates (the loop retries)."""

    def handle(msg: Message[RetrainRequest]) -> None:
        with DURATION.time():
            outcome = trainer.handle(msg.event)
        REQUESTS.labels(outcome.status).inc()

    return handle
