"""Redis: the one place that builds a client, and the small stores services keep there.

``Claims`` is the port a service's logic talks to; ``RedisClaims`` is the real adapter and
``MemoryClaims`` the in-process fake for unit tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import redis

from shared.settings import RedisSettings

__all__ = ["Claims", "ClaimsUnavailableError", "MemoryClaims", "RedisClaims", "connect"]


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


class ClaimsUnavailableError(RuntimeError):
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
