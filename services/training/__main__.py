"""Run the training service: ``streamloop serve training`` or ``python -m services.training``."""

from __future__ import annotations

import logging
import sys
import uuid

from services.training.bootstrap import Bootstrapper
from services.training.handler import make_handler
from services.training.ray_fit import RayFitter
from services.training.service import Trainer, installed_code_version
from services.training.settings import TrainingSettings
from services.training.trainer import Fitter, fit
from shared.artifacts import ArtifactStore
from shared.bus import RetryPolicy
from shared.events import RetrainRequest
from shared.example_log import examples_loader
from shared.ray_cluster import init_ray
from shared.reader import RecordCounter
from shared.redis_registry import RedisRegistry
from shared.redis_store import RedisLeases, connect
from shared.service import service_runtime
from shared.topics import Topics

log = logging.getLogger("streamloop.training")


def main() -> int:
    settings = TrainingSettings()
    with (
        service_runtime("training", settings) as rt,
        examples_loader(settings.kafka, settings.task, progress=log) as examples,
    ):
        registry = RedisRegistry(redis_client := connect(settings.redis))
        fitter: Fitter = fit
        if settings.backend == "ray":
            init_ray(settings.ray_address, fallback_local=settings.ray.fallback_local)
            fitter = RayFitter(
                settings.ray, settings.ray.storage or str(settings.var_dir / "ray-train")
            )
        trainer = Trainer(
            settings,
            load_examples=examples,
            store=ArtifactStore(settings.artifacts.root),
            leases=RedisLeases(redis_client, "streamloop:training:request"),
            registry=registry,
            publisher=rt.producer,
            owner=f"training-{uuid.uuid4().hex[:8]}",
            code_version=installed_code_version(),
            fitter=fitter,
        )
        loop = rt.consumer_loop(
            [Topics.RETRAIN_REQUESTS],
            RetrainRequest,
            group_id=settings.group_id,
            handler=make_handler(trainer),
            max_poll_records=1,
            retry=RetryPolicy(max_attempts=3, backoff_s=2.0, max_backoff_s=30.0),
            # A run holds the poll loop for up to the time budget plus reading and storing.
            max_poll_interval_ms=int((settings.time_budget_s + settings.lease_s + 300) * 1000),
        )
        with RecordCounter(settings.kafka, Topics.EXAMPLES) as counter:
            bootstrapper = Bootstrapper(settings, registry, rt.producer, count_examples=counter)
            if settings.bootstrap:
                bootstrapper.start()
            rt.run(loop, bootstrapper)
    return 0


if __name__ == "__main__":
    sys.exit(main())
