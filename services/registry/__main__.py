"""Run the registry service: ``streamloop serve registry`` or ``python -m services.registry``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

from kafka import KafkaConsumer, TopicPartition

from services.registry.http import serve_api
from services.registry.service import RegistryService
from services.registry.settings import RegistrySettings
from shared.bus import ConsumerLoop, Message, stop_on_signals
from shared.events import DecodeError, Event, ModelLifecycle, decode
from shared.redis_store import connect
from shared.registry import RedisRegistry
from shared.service import service_runtime
from shared.settings import KafkaSettings
from shared.topics import Topics

log = logging.getLogger("streamloop.registry")


def read_lifecycle(settings: KafkaSettings) -> Iterator[tuple[ModelLifecycle, int]]:
    """Every event on ``models.lifecycle`` from the start up to its end offset now."""
    name = settings.topic_prefix + Topics.MODELS_LIFECYCLE
    consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, **settings.client_kwargs())
    try:
        tps = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        remaining = {tp for tp in tps if consumer.position(tp) < ends[tp]}
        while remaining:
            for tp, batch in consumer.poll(timeout_ms=500).items():
                for rec in batch:
                    if rec.offset >= ends[tp] or rec.value is None:
                        continue
                    try:
                        yield decode(rec.value, ModelLifecycle), rec.offset
                    except DecodeError as exc:
                        log.error(
                            "unreadable lifecycle record skipped",
                            extra={"offset": rec.offset, "reason": exc.reason},
                        )
            remaining = {tp for tp in remaining if consumer.position(tp) < ends[tp]}
    finally:
        consumer.close()


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
        )
        log.info(
            "registry api listening",
            extra={
                "url": api.url,
                "operator_actions": settings.http_auth.operator_token is not None,
                "reads_protected": settings.http_auth.read_token is not None,
            },
        )

        def handle(msg: Message[Event]) -> None:
            service.handle(msg.event, msg.offset if msg.topic == Topics.MODELS_LIFECYCLE else None)

        loop: ConsumerLoop[Event] = ConsumerLoop(
            settings.kafka,
            group_id=settings.group_id,
            topics=[
                Topics.MODELS_TRAINED,
                Topics.MODELS_EVALUATED,
                Topics.MODELS_LIFECYCLE,
                Topics.METRICS,
            ],
            event_type=Event,
            producer=rt.producer,
            handler=handle,
            tracer=rt.tracer,
            client_id="registry",
        )
        stop_on_signals(loop)
        try:
            loop.run()
        finally:
            api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
