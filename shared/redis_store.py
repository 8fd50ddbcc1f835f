"""Redis: the one place that builds a client, and the small stores services keep there.

``Claims`` is the port a service's logic talks to; ``RedisClaims`` is the real adapter and
``MemoryClaims`` the in-process fake for unit tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from shared.ports import (
    DONE_PREFIX,
    LEASE_PREFIX,
    Claims,
    ClaimsUnavailableError,
    Lease,
    Leases,
    MemoryClaims,
    MemoryLeases,
    Unavailable,
)
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
    "RedisValues",
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
        if self._redis.set(k, LEASE_PREFIX + owner, nx=True, ex=lease_s):
            return Lease("acquired")
        raw = self._redis.get(k)
        current = raw.decode() if isinstance(raw, bytes) else (raw or "")
        if current.startswith(DONE_PREFIX):
            return Lease("done", current[len(DONE_PREFIX) :])
        if not current:  # expired between the two calls
            return self.acquire(key, owner, lease_s)
        return Lease("held", current[len(LEASE_PREFIX) :])

    def renew(self, key: str, owner: str, lease_s: int) -> bool:
        return bool(self._renew(keys=[self._prefix + key], args=[LEASE_PREFIX + owner, lease_s]))

    def finish(self, key: str, owner: str, value: str, ttl_s: int) -> bool:
        return bool(
            self._finish(
                keys=[self._prefix + key],
                args=[LEASE_PREFIX + owner, DONE_PREFIX + value, ttl_s],
            )
        )

    def release(self, key: str, owner: str) -> None:
        self._release(keys=[self._prefix + key], args=[LEASE_PREFIX + owner])


class RedisValues:
    """``Values`` in Redis, under ``namespace``."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self._redis = client
        self._prefix = namespace.rstrip(":") + ":"

    def get(self, key: str) -> bytes | None:
        try:
            found = self._redis.get(self._prefix + key)
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        return found if isinstance(found, bytes) else None

    def put(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        try:
            self._redis.set(self._prefix + key, value, ex=ttl_s)
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
