"""The registry's service layer: feeds the domain, publishes its answers, keeps the read model.

Write order, per input: publish the lifecycle events the domain returned, wait for Kafka's
acknowledgement, then write the read model. Redis therefore never shows a change the log
does not hold, and a crash in between is repaired by the next start-up's replay.

Every alias move and rollback the service decides is also announced on ``alerts``, right
after the lifecycle event itself. The alert's id derives from the lifecycle event's, so an
alert re-published after a crash is recognisable as the same one; events read back from the
log during replay are not announced again (only answers decided now are).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal, Protocol

from services.registry.state import SOURCE, Promotion, PromotionTest, RegistryState
from shared.events import (
    Alert,
    Event,
    LiveComparison,
    ModelEvaluated,
    ModelLifecycle,
    ModelTrained,
    derived_id,
)
from shared.ports import Message, Publisher
from shared.registry import HistoryEntry, RegistryView, VersionView, lifecycle_key
from shared.topics import Topics

__all__ = ["ReadModelWriter", "RegistryService", "move_alert"]

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
        live_promotion: bool = True,
        live_min_labels: int = 200,
        rollback_margin: float = 0.02,
        live_min_accuracy: float = 0.5,
        promotion_test: PromotionTest = "sequential",
        false_promotion_rate: float = 0.01,
    ) -> None:
        self.state = RegistryState(
            model_name,
            promotion=promotion,
            live_promotion=live_promotion,
            live_min_labels=live_min_labels,
            rollback_margin=rollback_margin,
            live_min_accuracy=live_min_accuracy,
            promotion_test=promotion_test,
            false_promotion_rate=false_promotion_rate,
        )
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

    def on_message(self, msg: Message[Event]) -> None:
        """``handle`` for the consumer loop: a lifecycle event's offset is the read model's
        position in the log."""
        self.handle(msg.event, msg.offset if msg.topic == Topics.MODELS_LIFECYCLE else None)

    def handle(self, event: Event, offset: int | None = None) -> None:
        """One event from ``models.trained``, ``models.evaluated``, ``models.lifecycle`` or
        ``metrics`` (of which only ``LiveComparison`` matters; ``WindowMetrics`` and any other
        event are ignored)."""
        if isinstance(event, ModelTrained):
            self._emit(self.state.on_trained(event))
        elif isinstance(event, ModelEvaluated):
            self._emit(self.state.on_evaluated(event))
        elif isinstance(event, LiveComparison):
            self._emit(self.state.on_comparison(event))
        elif isinstance(event, ModelLifecycle):
            self.state.apply(event, offset)
        else:
            return
        self._settle()
        self._publisher.flush()
        # Drained only once written: when Redis is away the handler fails, the bus retries
        # it, and the retry writes what this attempt could not.
        changes = self.state.pending_changes()
        if not changes.empty:
            self._read_model.apply_changes(
                self.state.model_name,
                changes.versions,
                changes.aliases,
                changes.history,
                changes.offset,
            )
        self.state.mark_drained(changes)

    def _emit(self, events: list[ModelLifecycle]) -> None:
        """Publish and apply each event in order (so a later one sees the earlier ones), and
        announce each alias move or rollback on ``alerts``."""
        for ev in events:
            self._publisher.publish(Topics.MODELS_LIFECYCLE, ev, key=lifecycle_key(ev))
            self.state.apply(ev)
            alert = move_alert(ev)
            if alert is not None:
                self._publisher.publish(Topics.ALERTS, alert)
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


def move_alert(ev: ModelLifecycle) -> Alert | None:
    """The ops alert announcing an alias move or a rollback; None for any other action.

    Its id derives from the lifecycle event's id, so the same move announced twice (a
    re-publish after a crash) is one alert to a consumer that drops duplicates."""
    severity: Literal["info", "warning"] = "info"
    if ev.action == "rolled_back":
        kind, severity = "model_rolled_back", "warning"
        what = f"champion rolled back to {ev.model_version or 'none'} from {ev.previous_version}"
    elif ev.action == "alias_set" and ev.alias == "champion":
        if ev.model_version is None:
            kind, severity = "champion_cleared", "warning"
            what = f"champion {ev.previous_version} cleared"
        else:
            kind = "model_promoted"
            what = f"{ev.model_version} promoted to champion (was {ev.previous_version or 'none'})"
    elif ev.action == "alias_set" and ev.alias == "challenger":
        if ev.model_version is None:
            kind = "challenger_cleared"
            what = f"challenger {ev.previous_version or 'none'} cleared"
        else:
            kind = "challenger_set"
            what = f"{ev.model_version} set as challenger (was {ev.previous_version or 'none'})"
    else:
        return None
    return Alert(
        event_id=derived_id("alert", ev.event_id),
        source=SOURCE,
        severity=severity,
        kind=kind,
        message=f"{ev.model_name}: {what}" + (f": {ev.reason}" if ev.reason else ""),
        model_version=ev.model_version,
        details={
            "previous_version": ev.previous_version,
            "cause_id": ev.cause_id,
            "lifecycle_event_id": ev.event_id,
        },
    )
