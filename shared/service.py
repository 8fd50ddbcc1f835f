"""What every service does before and after its own work: the composition root's helpers.

``service_runtime`` configures logging and tracing, serves ``/metrics``, waits for Kafka,
provisions the topics (when the settings say so) and opens the shared producer; on exit it
flushes and closes everything in reverse order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import trace

from shared.bus import EventProducer
from shared.kafka_admin import wait_for_kafka
from shared.metrics import serve_metrics
from shared.settings import ServiceSettings
from shared.telemetry import Telemetry, configure_logging, setup_telemetry
from shared.topics import provision

__all__ = ["Runtime", "service_runtime", "start_service"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """What ``service_runtime`` built for a service."""

    name: str
    tracer: trace.Tracer
    producer: EventProducer


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
            yield Runtime(name, telemetry.tracer, producer)
        finally:
            producer.close()
    finally:
        telemetry.shutdown()
        log.info("stopped", extra={"service": name})
