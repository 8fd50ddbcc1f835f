"""Failures of a dependency rather than of a record.

A record that cannot be handled (bad input, a bug it triggers) fails the same way every time
and belongs in the dead-letter topic. A dependency that does not answer (Kafka, Redis, the
model tier) fails the record through no fault of its own: retrying later succeeds, and
dead-lettering would lose valid input. ``is_transient`` tells the two apart for the consumer
loop; stores and backends raise ``Unavailable`` (or let a client's connection error through).
``poll_through_outage`` is the one poll of every kafka-python reader: an outage reads as an
empty poll, so a reader waits for the broker instead of dying with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis.exceptions
from kafka.errors import KafkaError

from shared.ports import Unavailable

__all__ = ["POLL_RETRY_S", "Unavailable", "is_transient", "poll_through_outage"]

log = logging.getLogger(__name__)

POLL_RETRY_S = 1.0
"""Pause after a poll that failed because no broker answered, before polling again."""


_TRANSIENT: tuple[type[BaseException], ...] = (
    Unavailable,
    ConnectionError,  # the builtin one: refused, reset, broken pipe
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc``, or an exception it was raised from, is a dependency's failure: one of
    the types above or a Kafka error the client marks retriable."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _TRANSIENT):
            return True
        if isinstance(current, KafkaError) and getattr(current, "retriable", False):
            return True
        current = current.__cause__ or current.__context__
    return False


def poll_through_outage(
    consumer: Any,
    *,
    timeout_ms: int,
    max_records: int | None = None,
    pause: Callable[[float], object],
    who: str = "",
) -> dict[Any, list[Any]]:
    """One ``poll`` of a kafka-python consumer. A retriable client error (no broker answers:
    kafka-python raises the failed connection out of a metadata wait inside ``poll`` when
    the poll's wait outlasts it) is an outage, not a reason to stop: it is logged, then
    ``pause(POLL_RETRY_S)`` (a ``time.sleep``, or a stop event's
    ``wait`` so that stopping is not held up), and the poll reads as empty. Other errors
    propagate."""
    try:
        polled: dict[Any, list[Any]] = consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
    except KafkaError as exc:
        if not exc.retriable:
            raise
        log.warning(
            "poll failed; Kafka unreachable, polling again",
            extra={"reader": who, "error": f"{type(exc).__name__}: {exc}"},
        )
        pause(POLL_RETRY_S)
        return {}
    return polled
