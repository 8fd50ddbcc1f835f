"""Failures of a dependency rather than of a record.

A record that cannot be handled (bad input, a bug it triggers) fails the same way every time
and belongs in the dead-letter topic. A dependency that does not answer (Kafka, Redis, the
model tier) fails the record through no fault of its own: retrying later succeeds, and
dead-lettering would lose valid input. ``is_transient`` tells the two apart for the consumer
loop; stores and backends raise ``Unavailable`` (or let a client's connection error through).
"""

from __future__ import annotations

import redis.exceptions
from kafka.errors import KafkaError

from shared.ports import Unavailable

__all__ = ["Unavailable", "is_transient"]


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
