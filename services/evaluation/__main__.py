"""Run the evaluation service: ``streamloop serve evaluation`` (or ``python -m ...``)."""

from __future__ import annotations

import sys

import torch

from services.evaluation.handler import make_handler
from services.evaluation.service import Evaluator
from services.evaluation.settings import EvaluationSettings
from shared.artifacts import ArtifactStore
from shared.bus import RetryPolicy
from shared.events import ModelTrained
from shared.example_log import examples_loader
from shared.redis_registry import RedisRegistry
from shared.redis_store import connect
from shared.service import service_runtime
from shared.topics import Topics


def main() -> int:
    settings = EvaluationSettings()
    torch.set_num_threads(settings.torch_threads)
    with (
        service_runtime("evaluation", settings) as rt,
        examples_loader(settings.kafka, settings.task) as examples,
    ):
        evaluator = Evaluator(
            settings,
            load_examples=examples,
            store=ArtifactStore(settings.artifacts.root),
            registry=RedisRegistry(connect(settings.redis)),
            publisher=rt.producer,
        )
        loop = rt.consumer_loop(
            [Topics.MODELS_TRAINED],
            ModelTrained,
            group_id=settings.group_id,
            handler=make_handler(evaluator),
            max_poll_records=1,
            retry=RetryPolicy(max_attempts=3, backoff_s=2.0, max_backoff_s=30.0),
            max_poll_interval_ms=900_000,
        )
        rt.run(loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
