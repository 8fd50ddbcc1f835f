"""Prometheus metrics: the bus's own counters and the ``/metrics`` endpoint of every service."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, start_http_server

__all__ = ["BUS_METRICS", "BusMetrics", "serve_metrics"]


@dataclass(frozen=True)
class BusMetrics:
    consumed: Counter
    retries: Counter
    dead_lettered: Counter
    reconnects: Counter
    transactions: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry = REGISTRY) -> BusMetrics:
        return cls(
            consumed=Counter(
                "streamloop_bus_consumed_records",
                "Records polled by StreamLoop consumer loops.",
                ["topic"],
                registry=registry,
            ),
            retries=Counter(
                "streamloop_bus_handler_retries",
                "Handler calls retried after an exception.",
                ["topic"],
                registry=registry,
            ),
            dead_lettered=Counter(
                "streamloop_bus_dead_lettered_records",
                "Records sent to a dead-letter topic, by source topic and reason.",
                ["topic", "reason"],
                registry=registry,
            ),
            reconnects=Counter(
                "streamloop_bus_consumer_reconnects",
                "Consumers rebuilt after losing their group membership for good.",
                ["group"],
                registry=registry,
            ),
            transactions=Counter(
                "streamloop_bus_transactions",
                "Transactions of consumer loops (outputs and offsets together), by outcome "
                "(committed, aborted).",
                ["group", "outcome"],
                registry=registry,
            ),
        )


BUS_METRICS = BusMetrics.create()


def serve_metrics(port: int, addr: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` on ``port`` (0 picks a free one) in a daemon thread; return the port."""
    server, _thread = start_http_server(port, addr=addr)
    return int(server.server_address[1])
