"""The ports: the protocols and plain types that services' logic talks to.

Nothing here imports a Kafka, Redis, faust or Ray client, so a logic module that needs a
message, a publisher or a store loads none of them. The real adapters live beside these in
``shared/`` (``bus`` for Kafka, ``redis_store`` and ``redis_registry`` for Redis, ``streams``
for faust); the in-process implementations at the end of this module stand in for them in
unit tests and single-process tools.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Literal, Protocol, TypeVar

from opentelemetry.context import Context

from shared.events import Event
from shared.telemetry import Headers, extract_context

if TYPE_CHECKING:
    from shared.registry import RegistryView, VersionView

__all__ = [
    "BatchHandler",
    "Claims",
    "ClaimsUnavailableError",
    "Handler",
    "Lease",
    "Leases",
    "MemoryClaims",
    "MemoryLeases",
    "MemoryValues",
    "Message",
    "Publisher",
    "RegistryReader",
    "Rejected",
    "Rejection",
    "TracingPublisher",
    "Unavailable",
    "Values",
]

E = TypeVar("E", bound=Event)


class Unavailable(RuntimeError):
    """A dependency did not answer; the same call can succeed later."""


# --- messages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Message(Generic[E]):
    """One decoded record as handlers see it."""

    event: E
    topic: str
    """StreamLoop's name of the topic (without ``KafkaSettings.topic_prefix``)."""
    partition: int
    offset: int
    key: str | None
    headers: Headers
    timestamp_ms: int
    context: Context | None = None
    """The trace context the consumer loop extracted from ``headers`` (None when the message
    was built elsewhere); read it through ``trace_context``."""

    def trace_context(self) -> Context:
        """The producer's trace context, to parent what the handler publishes for this
        record: extracted from the headers once per record, by the consumer loop."""
        return self.context if self.context is not None else extract_context(self.headers)


class Rejected(Exception):
    """Raised by a handler for input that can never succeed: the record goes to the DLQ at
    once, without retries, with ``reason`` as its ``dlq.error`` header."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Rejection(Generic[E]):
    """A batch handler's verdict that one message of its batch is refused (see ``Rejected``)."""

    message: Message[E]
    reason: str
    detail: str


Handler = Callable[[Message[E]], None]
BatchHandler = Callable[[list[Message[E]]], Sequence[Rejection[E]] | None]
"""Handles one poll's decodable messages; returns those it refuses (dead-lettered by the loop
after it returns) or None."""


# --- publishing -------------------------------------------------------------------------


class Publisher(Protocol):
    """The part of ``EventProducer`` that service logic needs (fakes implement it in tests)."""

    def publish(self, topic: str, event: Event, *, key: str | None = None) -> object: ...

    def flush(self, timeout_s: float | None = None) -> None: ...


class TracingPublisher(Protocol):
    """A ``Publisher`` that continues a given trace: ``context`` parents the publish span
    (a batch handler passes each record's own), ``attributes`` are added to it."""

    def publish(
        self,
        topic: str,
        event: Event,
        *,
        key: str | None = None,
        context: Context | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> object: ...

    def flush(self, timeout_s: float | None = None) -> None: ...


# --- stores -----------------------------------------------------------------------------


class Claims(Protocol):
    """First-writer-wins keys with a time to live (duplicate detection)."""

    def claim(self, items: Sequence[tuple[str, str]], ttl_s: int) -> list[str | None]:
        """For each ``(key, value)`` in order: store ``value`` if the key is free (for
        ``ttl_s`` seconds). Returns, per item, the value already stored, or None when this
        call claimed the key. Raises ``ClaimsUnavailableError`` when the store cannot be reached."""
        ...


class ClaimsUnavailableError(Unavailable):
    """The claims store cannot be reached; callers degrade (see each service's docs)."""


@dataclass(frozen=True)
class Lease:
    """What ``Leases.acquire`` found: ``acquired`` (the caller now holds the key), ``held``
    (another owner holds a live lease) or ``done`` (the work finished; ``value`` says how)."""

    state: Literal["acquired", "held", "done"]
    value: str = ""


class Leases(Protocol):
    """Exactly-once work keyed by an idempotency key.

    A worker ``acquire``s a key with a lease it must ``renew`` while it works; when it dies
    the lease runs out and the key is free again. ``finish`` replaces the lease with a long
    lived "done" record, so the same key never runs twice."""

    def acquire(self, key: str, owner: str, lease_s: int) -> Lease: ...

    def renew(self, key: str, owner: str, lease_s: int) -> bool:
        """Extend the caller's lease; False when it no longer holds it."""
        ...

    def finish(self, key: str, owner: str, value: str, ttl_s: int) -> bool:
        """Mark the key done with ``value``; False when the caller no longer held it."""
        ...

    def release(self, key: str, owner: str) -> None:
        """Give the key up without finishing (the work may run again later)."""
        ...


class Values(Protocol):
    """Small values by key, each kept for ``ttl_s`` seconds (None: until replaced). Both
    methods raise ``Unavailable`` when the store cannot be reached."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes, ttl_s: int | None = None) -> None: ...


class RegistryReader(Protocol):
    """Read access to the registry. Every method raises ``RegistryUnavailableError`` when
    the store cannot be reached; an unknown model reads as empty."""

    def view(self, model_name: str) -> RegistryView:
        """Everything about ``model_name``, read as one consistent snapshot."""
        ...

    def versions(self, model_name: str) -> list[VersionView]:
        """Every version, in registration order."""
        ...

    def get_version(self, model_name: str, version: str) -> VersionView | None:
        """One version, or None when it is not registered."""
        ...

    def aliases(self, model_name: str) -> dict[str, str]:
        """``alias -> version`` (only the aliases that are set)."""
        ...

    def champion(self, model_name: str) -> VersionView | None:
        """The champion, or None when there is none."""
        ...


# --- in process -------------------------------------------------------------------------

LEASE_PREFIX = "lease:"
DONE_PREFIX = "done:"
"""How a lease and a finished key are told apart in a store's value."""


class MemoryClaims:
    """``Claims`` in a dict (tests, and single-process tools)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, tuple[str, float]] = {}
        self._clock = clock
        self.available = True
        """Set False to simulate an outage."""

    def claim(self, items: Sequence[tuple[str, str]], ttl_s: int) -> list[str | None]:
        if not self.available:
            raise ClaimsUnavailableError("memory claims switched off")
        now = self._clock()
        out: list[str | None] = []
        for key, value in items:
            held = self._data.get(key)
            if held is not None and held[1] > now:
                out.append(held[0])
            else:
                self._data[key] = (value, now + ttl_s)
                out.append(None)
        return out


class MemoryLeases:
    """``Leases`` in a dict (unit tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, tuple[str, float]] = {}
        self._clock = clock

    def _get(self, key: str) -> str | None:
        held = self._data.get(key)
        if held is None or held[1] <= self._clock():
            self._data.pop(key, None)
            return None
        return held[0]

    def acquire(self, key: str, owner: str, lease_s: int) -> Lease:
        current = self._get(key)
        if current is None:
            self._data[key] = (LEASE_PREFIX + owner, self._clock() + lease_s)
            return Lease("acquired")
        if current.startswith(DONE_PREFIX):
            return Lease("done", current[len(DONE_PREFIX) :])
        return Lease("held", current[len(LEASE_PREFIX) :])

    def renew(self, key: str, owner: str, lease_s: int) -> bool:
        if self._get(key) != LEASE_PREFIX + owner:
            return False
        self._data[key] = (LEASE_PREFIX + owner, self._clock() + lease_s)
        return True

    def finish(self, key: str, owner: str, value: str, ttl_s: int) -> bool:
        if self._get(key) != LEASE_PREFIX + owner:
            return False
        self._data[key] = (DONE_PREFIX + value, self._clock() + ttl_s)
        return True

    def release(self, key: str, owner: str) -> None:
        if self._get(key) == LEASE_PREFIX + owner:
            del self._data[key]


class MemoryValues:
    """``Values`` in a dict (unit tests); ``clock`` decides when a value has expired."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._clock = clock

    def get(self, key: str) -> bytes | None:
        held = self._data.get(key)
        if held is None or (held[1] is not None and held[1] <= self._clock()):
            return None
        return held[0]

    def put(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        self._data[key] = (value, None if ttl_s is None else self._clock() + ttl_s)
