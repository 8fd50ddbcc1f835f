"""Redis: the one place that builds a client, and the small stores services keep there.

``Claims`` is the port a service's logic talks to; ``RedisClaims`` is the real adapter and
``MemoryClaims`` the in-process fake for unit tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import redis

from shared.errors import Unavailable
from shared.settings import RedisSettings

__all__ = [
    "Claims",
    "ClaimsUnavailableError",
    "Lease",
    "Leases",
    "MemoryClaims",
    "MemoryLeases",
    "RedisClaims",
    "RedisLeases",
    "connect",
]


def connect(settings: RedisSettings) -> redis.Redis:
    """A client for ``settings.url``; username and password from settings win over the URL's."""
    kwargs: dict[str, object] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
        "health_check_interval": 30,
        "retry_on_timeout": True,
    }
    if settings.username:
        kwargs["username"] = settings.username
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    return redis.Redis.from_url(settings.url, **kwargs)


class Claims(Protocol):
    """First-writer-wins keys with a time to live (duplicate detection)."""

    def claim(self, items: Sequence[tuple[str, str]], ttl_s: int) -> list[str | None]:
        """For each ``(key, value)`` in order: store ``value`` if the key is free (for
        ``ttl_s`` seconds). Returns, per item, the value already stored, or None when this
        call claimed the key. Raises ``ClaimsUnavailableError`` when the store cannot be reached."""
        ...


class ClaimsUnavailableError(Unavailable):
    """The claims store cannot be reached; callers degrade (see each service's docs)."""


class RedisClaims:
    """``Claims`` in Redis: one pipelined round trip of ``SET key value NX GET EX ttl`` per call."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self._redis = client
        self._prefix = namespace.rstrip(":") + ":"

    def claim(self, items: Sequence[tuple[str, str]], ttl_s: int) -> list[str | None]:
        if not items:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for key, value in items:
            pipe.set(self._prefix + key, value, nx=True, get=True, ex=ttl_s)
        try:
            replies = pipe.execute()
        except redis.RedisError as exc:
            raise ClaimsUnavailableError(str(exc)) from exc
        return [r.decode() if isinstance(r, bytes) else r for r in replies]


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


_LEASE_PREFIX = "lease:"
_DONE_PREFIX = "done:"

# Compare-and-set on the owner: only the holder of a lease may renew, finish or release it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_FINISH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLeases:
    """``Leases`` in Redis; ownership checks run as Lua scripts, so they are atomic."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self._redis = client
        self._prefix = namespace.rstrip(":") + ":"
        self._renew = client.register_script(_RENEW)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)

    def acquire(self, key: str, owner: str, lease_s: int) -> Lease:
        k = self._prefix + key
        if self._redis.set(k, _LEASE_PREFIX + owner, nx=True, ex=lease_s):
            return Lease("acquired")
        raw = self._redis.get(k)
        current = raw.decode() if isinstance(raw, bytes) else (raw or "")
        if current.startswith(_DONE_PREFIX):
            return Lease("done", current[len(_DONE_PREFIX) :])
        if not current:  # expired between the two calls
            return self.acquire(key, owner, lease_s)
        return Lease("held", current[len(_LEASE_PREFIX) :])

    def renew(self, key: str, owner: str, lease_s: int) -> bool:
        return bool(self._renew(keys=[self._prefix + key], args=[_LEASE_PREFIX + owner, lease_s]))

    def finish(self, key: str, owner: str, value: str, ttl_s: int) -> bool:
        return bool(
            self._finish(
                keys=[self._prefix + key],
                args=[_LEASE_PREFIX + owner, _DONE_PREFIX + value, ttl_s],
            )
        )

    def release(self, key: str, owner: str) -> None:
        self._release(keys=[self._prefix + key], args=[_LEASE_PREFIX + owner])


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
            self._data[key] = (_LEASE_PREFIX + owner, self._clock() + lease_s)
            return Lease("acquired")
        if current.startswith(_DONE_PREFIX):
            return Lease("done", current[len(_DONE_PREFIX) :])
        return Lease("held", current[len(_LEASE_PREFIX) :])

    def renew(self, key: str, owner: str, lease_s: int) -> bool:
        if self._get(key) != _LEASE_PREFIX + owner:
            return False
        self._data[key] = (_LEASE_PREFIX + owner, self._clock() + lease_s)
        return True

    def finish(self, key: str, owner: str, value: str, ttl_s: int) -> bool:
        if self._get(key) != _LEASE_PREFIX + owner:
            return False
        self._data[key] = (_DONE_PREFIX + value, self._clock() + ttl_s)
        return True

    def release(self, key: str, owner: str) -> None:
        if self._get(key) == _LEASE_PREFIX + owner:
            del self._data[key]
