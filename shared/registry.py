"""The model registry's public read model, and where it is kept.

The registry's truth is the ``models.lifecycle`` topic; the registry service folds it into
the views defined here and keeps them in Redis so that serving, the CLI, evaluation and the
dashboards can read the current state without replaying the log.

``RegistryReader`` (in ``shared.ports``) is the port readers talk to.
``shared.redis_registry.RedisRegistry`` is the real adapter (its writer methods are for the
registry service alone) and ``MemoryRegistry`` the in-process fake for unit tests.

Redis layout, per model, under ``<prefix>:<model>:``:

- ``versions``: hash ``version -> VersionView`` JSON;
- ``aliases``: hash ``alias -> version``;
- ``history``: list of ``HistoryEntry`` JSON, oldest first;
- ``meta``: hash with ``offset`` (last applied lifecycle offset) and ``updated_at``.

A model with none of these keys reads as empty (no versions, offset -1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from shared.events import DatasetSnapshot, ImportedWeights, ModelLifecycle, utcnow
from shared.ports import RegistryReader, Unavailable

__all__ = [
    "DEFAULT_MODEL_NAME",
    "EvaluationView",
    "HistoryEntry",
    "MemoryRegistry",
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
    init: str = "scratch"
    """How the weights began (``ModelTrained.init``): ``scratch``, ``imported``,
    ``imported:VERSION`` or ``champion:VERSION``."""
    imported: ImportedWeights | None = None
    """Where imported weights came from: file name, sha256, who and note."""

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


def by_number(versions: Iterable[VersionView]) -> list[VersionView]:
    return sorted(versions, key=lambda v: (v.number, v.version))


# --- the port ---------------------------------------------------------------------------


class RegistryUnavailableError(Unavailable):
    """The registry's store cannot be reached."""


def check_model(model_name: str, versions: Iterable[VersionView]) -> None:
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
            versions=by_number(s.versions.values()),
            aliases=dict(s.aliases),
            history=list(s.history),
            offset=s.offset,
            updated_at=s.updated_at,
        )

    def versions(self, model_name: str) -> list[VersionView]:
        return by_number(self._get(model_name).versions.values())

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
        check_model(view.model_name, view.versions)
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
        check_model(model_name, versions)
        self._get(model_name)
        s = self._models.setdefault(model_name, _Stored())
        s.versions.update({v.version: v for v in versions})
        s.aliases = dict(aliases)
        s.history.extend(history)
        s.offset = offset
        s.updated_at = updated_at or utcnow()
