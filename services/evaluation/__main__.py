"""Run the evaluation service: ``streamloop serve evaluation`` (or ``python -m ...``)."""

from __future__ import annotations

import logging
import sys

import torch
from prometheus_client import Counter, Histogram

from services.evaluation.service import Evaluator
from services.evaluation.settings import EvaluationSettings
from shared.artifacts import ArtifactStore
from shared.bus import ConsumerLoop, Message, RetryPolicy, stop_on_signals
from shared.datasets import ExampleTable, read_examples
from shared.events import ModelTrained
from shared.redis_store import connect
from shared.registry import RedisRegistry
from shared.service import service_runtime
from shared.topics import Topics

log = logging.getLogger("streamloop.evaluation")

VERDICTS = Counter(
    "streamloop_evaluation_verdicts", "Gate verdicts on candidate models.", ["verdict"]
)
DURATION = Histogram(
    "streamloop_evaluation_duration_seconds",
    "Wall time of one evaluation, examples read to verdict published.",
    buckets=(1, 5, 15, 30, 60, 120, 300),
)


def main() -> int:
    settings = EvaluationSettings()
    torch.set_num_threads(settings.torch_threads)
    with service_runtime("evaluation", settings) as rt:
        shape = (settings.task.image_height, settings.task.image_width, 3)

        def load_examples() -> ExampleTable:
            return read_examples(settings.kafka, shape=shape, classes=settings.task.classes)

        evaluator = Evaluator(
            settings,
            load_examples=load_examples,
            store=ArtifactStore(settings.artifacts.root),
            registry=RedisRegistry(connect(settings.redis)),
            publisher=rt.producer,
        )

        def handle(msg: Message[ModelTrained]) -> None:
            with DURATION.time():
                event = evaluator.handle(msg.event)
            if event is not None:
                VERDICTS.labels(event.verdict).inc()

        loop: ConsumerLoop[ModelTrained] = ConsumerLoop(
            settings.kafka,
            group_id=settings.group_id,
            topics=[Topics.MODELS_TRAINED],
            event_type=ModelTrained,
            producer=rt.producer,
            handler=handle,
            tracer=rt.tracer,
            max_poll_records=1,
            client_id="evaluation",
            retry=RetryPolicy(max_attempts=3, backoff_s=2.0, max_backoff_s=30.0),
            max_poll_interval_ms=900_000,
        )
        stop_on_signals(loop)
        loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
