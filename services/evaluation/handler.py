"""Evaluation's handler of trained models: the evaluator, timed and its verdicts counted."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Histogram

from services.evaluation.service import Evaluator
from shared.events import ModelTrained
from shared.ports import Message

__all__ = ["make_handler"]

VERDICTS = Counter(
    "streamloop_evaluation_verdicts", "Gate verdicts on candidate models.", ["verdict"]
)
DURATION = Histogram(
    "streamloop_evaluation_duration_seconds",
    "Wall time of one evaluation, examples read to verdict published.",
    buckets=(1, 5, 15, 30, 60, 120, 300),
)


def make_handler(evaluator: Evaluator) -> Callable[[Message[ModelTrained]], None]:
    """Evaluate one trained model; its failure propagates (the loop retries)."""

    def handle(msg: Message[ModelTrained]) -> None:
        with DURATION.time():
            event = evaluator.handle(msg.event)
        if event is not None:
            VERDICTS.labels(event.verdict).inc()

    return handle
