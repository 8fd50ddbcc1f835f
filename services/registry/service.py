"""The registry's service layer: feeds the domain, publishes its answers, keeps the read model.

Write order, per input: publish the lifecycle events the domain returned, wait for Kafka's
acknowledgement, then write the read model. Redis therefore never shows a change the log
does not hold, and a crash in between is repaired by the next start-up's replay.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from services.registry.state import Promotion, RegistryState
from shared.bus import Publisher
from shared.events import Event, ModelEvaluated, ModelLifecycle, ModelTrained
from shared.registry import HistoryEntry, RegistryView, VersionView, lifecycle_key
from shared.topics import Topics

__all__ = ["ReadModelWriter", "RegistryService"]

log = logging.getLogger("streamloop.registry")


class ReadModelWriter(Protocol):
    """The writer half of ``shared.registry.RedisRegistry`` (``MemoryRegistry`` in tests)."""

    def replace(self, view: RegistryView) -> None: ...

    def apply_changes(
        self,
        model_name: str,
        versions: list[VersionView],
        aliases: dict[str, str],
        history: list[HistoryEntry],
        offset: int,
    ) -> None: ...


class RegistryService:
    """One model's registry: replay, then one call per consumed event."""

    def __init__(
        self,
        model_name: str,
        *,
        promotion: Promotion,
        publisher: Publisher,
        read_model: ReadModelWriter,
    ) -> None:
        self.state = RegistryState(model_name, promotion=promotion)
        self._publisher = publisher
        self._read_model = read_model

    def replay(self, events: Iterable[tuple[ModelLifecycle, int]]) -> int:
        """Fold the lifecycle log read from the start, answer what was left unanswered, and
        rewrite the whole read model. Returns the number of events folded."""
        n = 0
        for event, offset in events:
            self.state.apply(event, offset)
            n += 1
        answered = self._settle()
        self._publisher.flush()
        self._read_model.replace(self.state.view())
        self.state.drain_changes()
        log.info(
            "read model rebuilt from models.lifecycle",
            extra={"events": n, "answered": answered, "versions": len(self.state.view().versions)},
        )
        return n

    def handle(self, event: Event, offset: int | None = None) -> None:
        """One event from ``models.trained``, ``models.evaluated`` or ``models.lifecycle``."""
        if isinstance(event, ModelTrained):
            self._emit(self.state.on_trained(event))
        elif isinstance(event, ModelEvaluated):
            self._emit(self.state.on_evaluated(event))
        elif isinstance(event, ModelLifecycle):
            self.state.apply(event, offset)
        else:
            return
        self._settle()
        self._publisher.flush()
        changes = self.state.drain_changes()
        if not changes.empty:
            self._read_model.apply_changes(
                self.state.model_name,
                changes.versions,
                changes.aliases,
                changes.history,
                changes.offset,
            )

    def _emit(self, events: list[ModelLifecycle]) -> None:
        for ev in events:
            self._publisher.publish(Topics.MODELS_LIFECYCLE, ev, key=lifecycle_key(ev))
            self.state.apply(ev)
            log.info(
                "lifecycle",
                extra={
                    "action": ev.action,
                    "version": ev.model_version,
                    "alias": ev.alias,
                    "reason": ev.reason,
                },
            )

    def _settle(self) -> int:
        """Answer every pending cause, one at a time (each answer is applied before the next
        decision, so decisions see each other)."""
        answered = 0
        while True:
            pending = self.state.pending_causes()
            if not pending:
                return answered
            answers = self.state.decide(pending[0])
            if not answers:  # pending_causes only lists causes with an answer; be safe
                return answered
            self._emit(answers)
            answered += 1
