"""The model registry's public read model, and where it is kept.

The registry's truth is the ``models.lifecycle`` topic; the registry service folds it into
the views defined here and keeps them in Redis so that serving, the CLI, evaluation and the
dashboards can read the current state without replaying the log.

``RegistryReader`` is the port readers talk to. ``RedisRegistry`` is the real adapter (its
writer methods are for the registry service alone) and ``MemoryRegistry`` the in-process
fake for unit tests.

Redis layout, per model, under ``<prefix>:<model>:``:

- ``versions``: hash ``version -> VersionView`` JSON;
- ``aliases``: hash ``alias -> version``;
- ``history``: list of ``HistoryEntry`` JSON, oldest first;
- ``meta``: hash with ``offset`` (last applied lifecycle offset) and ``updated_at``.

A model with none of these keys reads as empty (no versions, offset -1).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

import redis
from pydantic import BaseModel, ConfigDict

from shared.errors import Unavailable
from shared.events import DatasetSnapshot, ModelLifecycle, utcnow

__all__ = [
    "DEFAULT_MODEL_NAME",
    "EvaluationView",
    "HistoryEntry",
    "MemoryRegistry",
    "RedisRegistry",
    "RegistryReader",
    "RegistryUnavailableError",
    "RegistryView",
    "VersionView",
    "lifecycle_key",
    "valid_name",
]

DEFAULT_MODEL_NAME = "vehicle-classifier"

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")

# Facts about a version: a re-published copy of the same fact replaces the old one on the
# compacted topic. Everything else is keyed by its event id and so is kept for ever.
_FACT_ACTIONS = frozenset({"registered", "evaluated"})

T = TypeVar("T")


def valid_name(text: str) -> bool:
    """True when ``text`` is acceptable as a version id or model name in a URL or command:
    1 to 64 of ``A-Z a-z 0-9 . _ -`` and nothing else (no trailing newline either)."""
    return _NAME.fullmatch(text) is not None


def lifecycle_key(event: ModelLifecycle) -> str:
    """The Kafka record key of a lifecycle event.

    ``registered`` and ``evaluated`` are keyed ``<model>/<version>/<action>`` so that a
    re-published fact compacts onto the earlier one; every other action is keyed
    ``<model>/<action>/<event_id>`` and is never compacted away, so the history survives.
    """
    if event.action in _FACT_ACTIONS:
        return f"{event.model_name}/{event.model_version}/{event.action}"
    return f"{event.model_name}/{event.action}/{event.event_id}"


# --- views -----------------------------------------------------------------------------


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class EvaluationView(_View):
    """The evaluation gate's verdict on one version."""

    verdict: Literal["blessed", "rejected"]
    reasons: list[str]
    champion_version: str | None
    """The champion the candidate was compared with (None when there was none)."""
    metrics: dict[str, Any]
    evaluated_at: datetime
    event_id: str
    """``event_id`` of the ``ModelEvaluated`` event this verdict comes from."""


class VersionView(_View):
    """One registered version: its lineage, its verdict and where the aliases stand."""

    model_name: str
    version: str
    number: int
    """1-based order of registration."""
    registered_at: datetime
    status: Literal["registered", "blessed", "rejected"]
    """``registered`` until the gate has spoken, then its verdict."""
    aliases: list[str]
    """Aliases pointing at this version now, sorted."""
    was_champion: bool
    """True once the version has been champion, even if it no longer is."""
    rolled_back: bool
    """True once a rollback has taken the champion alias away from this version."""
    artifact_uri: str
    sha256: str
    dataset: DatasetSnapshot
    hyperparameters: dict[str, Any]
    training_metrics: dict[str, float]
    parent_version: str | None
    code_version: str
    seed: int
    duration_s: float
    idempotency_key: str
    tags: dict[str, str]
    evaluation: EvaluationView | None = None

    @property
    def verdict(self) -> str | None:
        """The gate's verdict, or None before evaluation."""
        return self.evaluation.verdict if self.evaluation is not None else None

    @property
    def fresh_accuracy(self) -> float | None:
        """The candidate's accuracy on the fresh holdout, when the evaluation reports it."""
        return self._holdout_accuracy("fresh")

    @property
    def reference_accuracy(self) -> float | None:
        """The candidate's accuracy on the reference holdout, when the evaluation reports it."""
        return self._holdout_accuracy("reference")

    def _holdout_accuracy(self, holdout: str) -> float | None:
        if self.evaluation is None:
            return None
        # The metrics dict is whatever the gate chose to publish: walk it without trusting
        # any level to exist or to have the expected type.
        node: Any = self.evaluation.metrics
        for key in ("holdouts", holdout, "candidate", "accuracy"):
            if not isinstance(node, dict):
                return None
            node = node.get(key)
        if isinstance(node, bool) or not isinstance(node, int | float):
            return None
        return float(node)


class HistoryEntry(_View):
    """One applied lifecycle event, as the history shows it."""

    at: datetime
    action: str
    version: str | None
    alias: str | None
    previous_version: str | None
    actor: str
    reason: str
    event_id: str
    cause_id: str | None = None
    """The event this one answers, if any."""

    @classmethod
    def of(cls, event: ModelLifecycle) -> HistoryEntry:
        """The history entry of a lifecycle event."""
        return cls(
            at=event.produced_at,
            action=event.action,
            version=event.model_version,
            alias=event.alias,
            previous_version=event.previous_version,
            actor=event.actor,
            reason=event.reason,
            event_id=event.event_id,
            cause_id=event.cause_id,
        )


class RegistryView(_View):
    """Everything the registry knows about one model."""

    model_name: str
    versions: list[VersionView]
    """In registration order."""
    aliases: dict[str, str]
    history: list[HistoryEntry]
    """Oldest first."""
    offset: int = -1
    """Offset of the last applied lifecycle record; -1 when none."""
    updated_at: datetime | None = None

    def version(self, version: str) -> VersionView | None:
        """The view of ``version``, or None when it is not registered."""
        for v in self.versions:
            if v.version == version:
                return v
        return None

    def champion(self) -> VersionView | None:
        """The version the ``champion`` alias points to, if any."""
        return self._alias("champion")

    def challenger(self) -> VersionView | None:
        """The version the ``challenger`` alias points to, if any."""
        return self._alias("challenger")

    def _alias(self, alias: str) -> VersionView | None:
        target = self.aliases.get(alias)
        return self.version(target) if target is not None else None


def _by_number(versions: Iterable[VersionView]) -> list[VersionView]:
    return sorted(versions, key=lambda v: (v.number, v.version))


# --- the port ---------------------------------------------------------------------------


class RegistryUnavailableError(Unavailable):
    """The registry's store cannot be reached."""


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


# --- Redis ------------------------------------------------------------------------------


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
            versions=_by_number(VersionView.model_validate_json(v) for v in raw_versions.values()),
            aliases={_text(k): _text(v) for k, v in raw_aliases.items()},
            history=[HistoryEntry.model_validate_json(h) for h in raw_history],
            offset=int(meta.get("offset", -1)),
            updated_at=datetime.fromisoformat(meta["updated_at"]) if "updated_at" in meta else None,
        )

    def versions(self, model_name: str) -> list[VersionView]:
        raw = self._run(lambda: self._redis.hvals(self._key(model_name, "versions")))
        return _by_number(VersionView.model_validate_json(v) for v in raw)

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
        _check_model(model_name, versions)

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


def _check_model(model_name: str, versions: Iterable[VersionView]) -> None:
    for v in versions:
        if v.model_name != model_name:
            raise ValueError(f"version {v.version} belongs to {v.model_name}, not {model_name}")


# --- in memory --------------------------------------------------------------------------


@dataclass
class _Stored:
    versions: dict[str, VersionView] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    history: list[HistoryEntry] = field(default_factory=list)
    offset: int = -1
    updated_at: datetime | None = None


class MemoryRegistry:
    """``RedisRegistry``'s readers and writers on dicts (unit tests of other services)."""

    def __init__(self) -> None:
        self._models: dict[str, _Stored] = {}
        self.available = True
        """Set False to make every call raise ``RegistryUnavailableError``."""

    def _get(self, model_name: str) -> _Stored:
        if not self.available:
            raise RegistryUnavailableError("memory registry switched off")
        return self._models.get(model_name) or _Stored()

    def view(self, model_name: str) -> RegistryView:
        s = self._get(model_name)
        return RegistryView(
            model_name=model_name,
            versions=_by_number(s.versions.values()),
            aliases=dict(s.aliases),
            history=list(s.history),
            offset=s.offset,
            updated_at=s.updated_at,
        )

    def versions(self, model_name: str) -> list[VersionView]:
        return _by_number(self._get(model_name).versions.values())

    def get_version(self, model_name: str, version: str) -> VersionView | None:
        return self._get(model_name).versions.get(version)

    def aliases(self, model_name: str) -> dict[str, str]:
        return dict(self._get(model_name).aliases)

    def champion(self, model_name: str) -> VersionView | None:
        s = self._get(model_name)
        target = s.aliases.get("champion")
        return s.versions.get(target) if target is not None else None

    def is_empty(self, model_name: str) -> bool:
        self._get(model_name)
        return model_name not in self._models

    def replace(self, view: RegistryView) -> None:
        _check_model(view.model_name, view.versions)
        self._get(view.model_name)
        self._models[view.model_name] = _Stored(
            versions={v.version: v for v in view.versions},
            aliases=dict(view.aliases),
            history=list(view.history),
            offset=view.offset,
            updated_at=view.updated_at or utcnow(),
        )

    def apply_changes(
        self,
        model_name: str,
        versions: list[VersionView],
        aliases: dict[str, str],
        history: list[HistoryEntry],
        offset: int,
        updated_at: datetime | None = None,
    ) -> None:
        _check_model(model_name, versions)
        self._get(model_name)
        s = self._models.setdefault(model_name, _Stored())
        s.versions.update({v.version: v for v in versions})
        s.aliases = dict(aliases)
        s.history.extend(history)
        s.offset = offset
        s.updated_at = updated_at or utcnow()
