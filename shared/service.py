"""What every service does before and after its own work: the composition root's helpers.

``service_runtime`` configures logging and tracing, serves ``/metrics``, waits for Kafka,
provisions the topics (when the settings say so) and opens the shared producer; on exit it
flushes and closes everything in reverse order. The ``Runtime`` it yields builds the
service's consumer loops (``consumer_loop``) and runs them until SIGTERM/SIGINT (``run``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry import trace

from shared.bus import ConsumerLoop, EventProducer, stop_on_signals
from shared.events import Event
from shared.kafka_admin import wait_for_kafka
from shared.metrics import serve_metrics
from shared.ports import BatchHandler, Handler
from shared.settings import ServiceSettings, TransactionSettings
from shared.telemetry import Telemetry, configure_logging, setup_telemetry
from shared.topics import provision

__all__ = ["Runtime", "service_runtime", "start_service"]

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class Runtime:
    """What ``service_runtime`` built for a service."""

    name: str
    tracer: trace.Tracer
    producer: EventProducer
    settings: ServiceSettings

    def consumer_loop(
        self,
        topics: Sequence[str],
        event_type: type[E],
        *,
        group_id: str,
        handler: Handler[E] | None = None,
        batch_handler: BatchHandler[E] | None = None,
        producer: EventProducer | None = None,
        **options: Any,
    ) -> ConsumerLoop[E]:
        """A consumer loop of this service on ``topics`` (StreamLoop names): the service's
        Kafka settings, producer (for its outputs and dead letters; ``producer`` instead,
        from ``loop_producer``), tracer and client id; ``options`` are ``ConsumerLoop``'s
        (retry, max_poll_records, fetch settings...)."""
        return ConsumerLoop(
            self.settings.kafka,
            group_id=group_id,
            topics=list(topics),
            event_type=event_type,
            producer=producer or self.producer,
            handler=handler,
            batch_handler=batch_handler,
            tracer=self.tracer,
            client_id=self.name,
            **options,
        )

    @contextmanager
    def loop_producer(
        self, group_id: str, transactions: TransactionSettings
    ) -> Iterator[EventProducer]:
        """The producer for a consumer loop of ``group_id`` and its handler: a transactional
        one of its own (closed on exit) when ``transactions`` are on, the shared one when
        they are off."""
        tid = transactions.transactional_id(self.settings.kafka, group_id)
        if tid is None:
            yield self.producer
            return
        producer = EventProducer(
            self.settings.kafka,
            client_id=self.name,
            tracer=self.tracer,
            transactional_id=tid,
            transaction_timeout_ms=transactions.timeout_ms,
        )
        log.info("transactions on", extra={"group": group_id, "transactional_id": tid})
        try:
            yield producer
        finally:
            producer.close()

    def run(self, loop: ConsumerLoop[Any], *also_stop: Any) -> None:
        """Run ``loop`` until SIGTERM/SIGINT, which also stops ``also_stop`` (anything with
        a ``stop()``)."""
        stop_on_signals(loop, *also_stop)
        loop.run()


def start_service(name: str, settings: ServiceSettings) -> Telemetry:
    """Configure logging and tracing, serve ``/metrics``, wait for Kafka and provision the
    topics (when the settings say so). The caller shuts the returned telemetry down.

    Raises TimeoutError when Kafka does not answer within ``settings.kafka_wait_s``."""
    configure_logging(name, settings.telemetry)
    telemetry = setup_telemetry(name, settings.telemetry)
    try:
        port = serve_metrics(settings.metrics_port)
        log.info("starting", extra={"service": name, "metrics_port": port})
        wait_for_kafka(settings.kafka, timeout_s=settings.kafka_wait_s)
        if settings.provision_topics:
            report = provision(settings.kafka)
            if report.changed:
                # ("created" itself is a LogRecord attribute: logging refuses it in extra.)
                log.info(
                    "topics provisioned",
                    extra={
                        "topics_created": report.created,
                        "topics_updated": sorted(report.updated),
                        "partitions_added": report.partitions_added,
                    },
                )
    except BaseException:
        telemetry.shutdown()
        raise
    return telemetry


@contextmanager
def service_runtime(name: str, settings: ServiceSettings) -> Iterator[Runtime]:
    """``start_service``, then the shared producer; yields the service's ``Runtime`` and on
    exit flushes and closes everything in reverse order."""
    telemetry = start_service(name, settings)
    try:
        producer = EventProducer(settings.kafka, client_id=name, tracer=telemetry.tracer)
        try:
            yield Runtime(name, telemetry.tracer, producer, settings)
        finally:
            producer.close()
    finally:
        telemetry.shutdown()
        log.info("stopped", extra={"service": name})
