"""The bridge's state in Redis: rendered frames (for the page that shows a task) and the last
state of each annotation published. Task leases are ``shared.redis_store.RedisLeases``."""

from __future__ import annotations

import redis

from shared.ports import Unavailable

__all__ = ["RedisImages", "RedisSeen"]


class RedisImages:
    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self._redis = client
        self._prefix = namespace.rstrip(":") + ":image:"

    def put(self, frame_id: str, png: bytes, ttl_s: int) -> None:
        try:
            self._redis.set(self._prefix + frame_id, png, ex=ttl_s)
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc

    def get(self, frame_id: str) -> bytes | None:
        try:
            found = self._redis.get(self._prefix + frame_id)
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        return found if isinstance(found, bytes) else None


class RedisSeen:
    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self._redis = client
        self._prefix = namespace.rstrip(":") + ":seen:"

    def get(self, annotation_id: int) -> str | None:
        try:
            found = self._redis.get(f"{self._prefix}{annotation_id}")
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        return found.decode() if isinstance(found, bytes) else found

    def put(self, annotation_id: int, version: str, ttl_s: int) -> None:
        try:
            self._redis.set(f"{self._prefix}{annotation_id}", version, ex=ttl_s)
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
