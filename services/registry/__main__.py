"""Run the registry service: ``streamloop serve registry`` or ``python -m services.registry``."""

from __future__ import annotations

import sys

from services.registry.http import ImportTarget, serve_api
from services.registry.replay import read_lifecycle
from services.registry.service import RegistryService
from services.registry.settings import RegistrySettings
from shared.events import Event
from shared.redis_registry import RedisRegistry
from shared.redis_store import connect
from shared.service import service_runtime
from shared.topics import Topics


def main() -> int:
    settings = RegistrySettings()
    with service_runtime("registry", settings) as rt:
        store = RedisRegistry(connect(settings.redis))
        service = RegistryService(
            settings.model_name,
            promotion=settings.promotion,
            live_promotion=settings.live_promotion,
            live_min_labels=settings.live_min_labels,
            rollback_margin=settings.rollback_margin,
            live_min_accuracy=settings.live_min_accuracy,
            promotion_test=settings.promotion_test,
            false_promotion_rate=settings.false_promotion_rate,
            publisher=rt.producer,
            read_model=store,
        )
        service.replay(read_lifecycle(settings.kafka))
        api = serve_api(
            store,
            settings.model_name,
            settings.api_host,
            settings.api_port,
            auth=settings.http_auth,
            publisher=rt.producer,
            imports=ImportTarget(settings.artifacts.root, settings.task, settings.import_max_bytes),
        )

        topics = [Topics.MODELS_TRAINED, Topics.MODELS_EVALUATED, Topics.MODELS_LIFECYCLE]
        loop = rt.consumer_loop(
            [*topics, Topics.METRICS], Event, group_id=settings.group_id, handler=service.on_message
        )
        try:
            rt.run(loop)
        finally:
            api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
