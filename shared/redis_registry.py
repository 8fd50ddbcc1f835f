"""The registry's read model in Redis: ``RegistryReader`` plus the registry service's writers.

Redis layout, per model, under ``<prefix>:<model>:``:

- ``versions``: hash ``version -> VersionView`` JSON;
- ``aliases``: hash ``alias -> version``;
- ``history``: list of ``HistoryEntry`` JSON, oldest first;
- ``meta``: hash with ``offset`` (last applied lifecycle offset) and ``updated_at``.

A model with none of these keys reads as empty (no versions, offset -1).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import redis

from shared.events import utcnow
from shared.registry import (
    HistoryEntry,
    RegistryUnavailableError,
    RegistryView,
    VersionView,
    by_number,
    check_model,
)

__all__ = ["RedisRegistry"]

T = TypeVar("T")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisRegistry:
    """``RegistryReader`` on Redis, plus the writer methods the registry service uses.

    Every write is one MULTI/EXEC transaction, and ``view`` reads in one too, so a reader
    never sees a model half written. Works with clients with or without
    ``decode_responses``.
    """

    def __init__(self, client: redis.Redis, prefix: str = "streamloop:registry") -> None:
        self._redis = client
        self._prefix = prefix.rstrip(":")

    def _key(self, model_name: str, part: str) -> str:
        return f"{self._prefix}:{model_name}:{part}"

    def _keys(self, model_name: str) -> list[str]:
        return [self._key(model_name, p) for p in ("versions", "aliases", "history", "meta")]

    def _run(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except redis.RedisError as exc:
            raise RegistryUnavailableError(str(exc)) from exc

    # readers

    def view(self, model_name: str) -> RegistryView:
        def read() -> list[Any]:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hgetall(self._key(model_name, "versions"))
            pipe.hgetall(self._key(model_name, "aliases"))
            pipe.lrange(self._key(model_name, "history"), 0, -1)
            pipe.hgetall(self._key(model_name, "meta"))
            return pipe.execute()

        raw_versions, raw_aliases, raw_history, raw_meta = self._run(read)
        meta = {_text(k): _text(v) for k, v in raw_meta.items()}
        return RegistryView(
            model_name=model_name,
            versions=by_number(VersionView.model_validate_json(v) for v in raw_versions.values()),
            aliases={_text(k): _text(v) for k, v in raw_aliases.items()},
            history=[HistoryEntry.model_validate_json(h) for h in raw_history],
            offset=int(meta.get("offset", -1)),
            updated_at=datetime.fromisoformat(meta["updated_at"]) if "updated_at" in meta else None,
        )

    def versions(self, model_name: str) -> list[VersionView]:
        raw = self._run(lambda: self._redis.hvals(self._key(model_name, "versions")))
        return by_number(VersionView.model_validate_json(v) for v in raw)

    def get_version(self, model_name: str, version: str) -> VersionView | None:
        raw = self._run(lambda: self._redis.hget(self._key(model_name, "versions"), version))
        return VersionView.model_validate_json(raw) if raw is not None else None

    def aliases(self, model_name: str) -> dict[str, str]:
        raw = self._run(lambda: self._redis.hgetall(self._key(model_name, "aliases")))
        return {_text(k): _text(v) for k, v in raw.items()}

    def champion(self, model_name: str) -> VersionView | None:
        # Two reads: a replace between them still leaves both answers valid, because a
        # version the alias names is always written in the same transaction as the alias.
        target = self._run(lambda: self._redis.hget(self._key(model_name, "aliases"), "champion"))
        return self.get_version(model_name, _text(target)) if target is not None else None

    def is_empty(self, model_name: str) -> bool:
        """True when nothing at all is stored for ``model_name``."""
        return self._run(lambda: self._redis.exists(*self._keys(model_name))) == 0

    # writers (the registry service only)

    def replace(self, view: RegistryView) -> None:
        """Make the stored model exactly ``view``: every key of the model is deleted and
        rewritten in one MULTI/EXEC transaction."""

        def write() -> None:
            name = view.model_name
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(*self._keys(name))
            self._queue_versions(pipe, name, view.versions)
            self._queue_aliases(pipe, name, view.aliases)
            if view.history:
                pipe.rpush(self._key(name, "history"), *(h.model_dump_json() for h in view.history))
            self._queue_meta(pipe, name, view.offset, view.updated_at or utcnow())
            pipe.execute()

        self._run(write)

    def apply_changes(
        self,
        model_name: str,
        versions: list[VersionView],
        aliases: dict[str, str],
        history: list[HistoryEntry],
        offset: int,
        updated_at: datetime | None = None,
    ) -> None:
        """In one MULTI/EXEC transaction: upsert ``versions``, replace the aliases with the
        full mapping ``aliases``, append ``history`` and record ``offset`` and
        ``updated_at`` (now when None).

        Raises ValueError when a version belongs to another model."""
        check_model(model_name, versions)

        def write() -> None:
            pipe = self._redis.pipeline(transaction=True)
            self._queue_versions(pipe, model_name, versions)
            pipe.delete(self._key(model_name, "aliases"))
            self._queue_aliases(pipe, model_name, aliases)
            if history:
                pipe.rpush(
                    self._key(model_name, "history"), *(h.model_dump_json() for h in history)
                )
            self._queue_meta(pipe, model_name, offset, updated_at or utcnow())
            pipe.execute()

        self._run(write)

    def _queue_versions(
        self, pipe: redis.client.Pipeline, model_name: str, versions: list[VersionView]
    ) -> None:
        if versions:
            pipe.hset(
                self._key(model_name, "versions"),
                mapping={v.version: v.model_dump_json() for v in versions},
            )

    def _queue_aliases(
        self, pipe: redis.client.Pipeline, model_name: str, aliases: dict[str, str]
    ) -> None:
        if aliases:
            pipe.hset(self._key(model_name, "aliases"), mapping={a: v for a, v in aliases.items()})

    def _queue_meta(
        self, pipe: redis.client.Pipeline, model_name: str, offset: int, updated_at: datetime
    ) -> None:
        pipe.hset(
            self._key(model_name, "meta"),
            mapping={"offset": str(offset), "updated_at": updated_at.isoformat()},
        )
