"""The registry's domain: folding ``models.lifecycle`` into state, and deciding what follows.

``RegistryState`` holds one model. It is pure: the service feeds it events and publishes
what it returns; nothing here talks to Kafka, Redis or HTTP.

The loop the service runs:

1. facts from other topics go through ``on_trained`` / ``on_evaluated``, which return the
   lifecycle events to publish (they do not change the state);
2. everything read from ``models.lifecycle`` (including the service's own events coming
   back) goes through ``apply``, which drops event ids it has already applied;
3. for each applied cause, ``decide`` returns its answer (an alias move, a rollback or a
   ``command_rejected``); the service publishes and applies each answer before deciding
   the next cause, so every decision sees the previous ones;
4. ``pending_causes`` lists causes still owed an answer (after a restart, when the service
   died between applying a cause and publishing its answer);
5. ``drain_changes`` says what to write to the read model since the last drain.

Folding is deterministic: the same events in the same order give the same ``view()``
(``updated_at`` aside, which is the clock at the last applied event).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import ValidationError

from shared.events import ModelEvaluated, ModelLifecycle, ModelTrained, utcnow
from shared.registry import (
    DEFAULT_MODEL_NAME,
    EvaluationView,
    HistoryEntry,
    RegistryView,
    VersionView,
)

__all__ = ["SOURCE", "Changes", "Promotion", "RegistryState"]

SOURCE = "registry"

Promotion = Literal["shadow", "direct"]
"""What a blessed version becomes when there already is a champion: ``shadow`` makes it
the challenger (served in shadow until an operator promotes it), ``direct`` makes it the
champion at once."""

_COMMANDS = frozenset({"promote_requested", "rollback_requested"})


@dataclass(frozen=True)
class Changes:
    """What changed since the previous drain: the versions whose view changed, the full
    alias mapping, the new history entries and the offset reached."""

    versions: list[VersionView]
    aliases: dict[str, str]
    history: list[HistoryEntry]
    offset: int
    updated_at: datetime | None
    aliases_changed: bool
    offset_changed: bool

    @property
    def empty(self) -> bool:
        """True when there is nothing to write."""
        return not (self.versions or self.history or self.aliases_changed or self.offset_changed)


@dataclass
class _Version:
    trained: ModelTrained
    number: int
    registered_at: datetime
    tags: dict[str, str]
    evaluation: EvaluationView | None = None
    evaluation_cause: str | None = None
    """Lifecycle event id of the ``evaluated`` event behind ``evaluation``."""


class RegistryState:
    """The registry of one model, folded from its lifecycle events.

    ``promotion`` is the policy for blessed versions when a champion exists (see
    ``Promotion``); ``clock`` stamps ``updated_at``. Not thread-safe: one consumer loop
    owns it.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL_NAME,
        *,
        promotion: Promotion = "shadow",
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.model_name = model_name
        self.promotion: Promotion = promotion
        self._clock = clock
        self._versions: dict[str, _Version] = {}
        self._aliases: dict[str, str] = {}
        self._champions: list[str] = []
        """Champion stack: every champion in turn; a rollback pops the top."""
        self._ever_champion: set[str] = set()
        self._rolled_back: set[str] = set()
        self._history: list[HistoryEntry] = []
        self._applied: set[str] = set()
        self._causes: list[ModelLifecycle] = []
        self._answered: set[str] = set()
        self._pending_evaluations: dict[str, tuple[EvaluationView, str]] = {}
        """Evaluations of versions not registered yet: version -> (verdict, lifecycle id)."""
        self._seen_evaluations: set[str] = set()
        """``ModelEvaluated`` event ids already folded."""
        self._offset = -1
        self._updated_at: datetime | None = None
        # What the last drain handed out, to compute the next one.
        self._drained_versions: dict[str, VersionView] = {}
        self._drained_aliases: dict[str, str] = {}
        self._drained_history = 0
        self._drained_offset = -1

    # --- reading ----------------------------------------------------------------------

    @property
    def offset(self) -> int:
        """Offset of the last lifecycle record read; -1 when none."""
        return self._offset

    @property
    def champion_stack(self) -> tuple[str, ...]:
        """Every champion in turn, the current one last."""
        return tuple(self._champions)

    def has_applied(self, event_id: str) -> bool:
        """True when the lifecycle event ``event_id`` has been folded in."""
        return event_id in self._applied

    def is_answered(self, event_id: str) -> bool:
        """True when an applied event names ``event_id`` as its cause."""
        return event_id in self._answered

    def version(self, version: str) -> VersionView | None:
        """The view of one registered version."""
        return self._view_of(version) if version in self._versions else None

    def view(self) -> RegistryView:
        """The read model of everything folded so far."""
        return RegistryView(
            model_name=self.model_name,
            versions=self._version_views(),
            aliases=dict(sorted(self._aliases.items())),
            history=list(self._history),
            offset=self._offset,
            updated_at=self._updated_at,
        )

    def _version_views(self) -> list[VersionView]:
        ordered = sorted(self._versions.items(), key=lambda kv: kv[1].number)
        return [self._view_of(name) for name, _ in ordered]

    def _view_of(self, version: str) -> VersionView:
        rec = self._versions[version]
        t = rec.trained
        return VersionView(
            model_name=self.model_name,
            version=version,
            number=rec.number,
            registered_at=rec.registered_at,
            status=rec.evaluation.verdict if rec.evaluation is not None else "registered",
            aliases=sorted(a for a, v in self._aliases.items() if v == version),
            was_champion=version in self._ever_champion,
            rolled_back=version in self._rolled_back,
            artifact_uri=t.artifact_uri,
            sha256=t.sha256,
            dataset=t.dataset,
            hyperparameters=t.hyperparameters,
            training_metrics=t.metrics,
            parent_version=t.parent_version,
            code_version=t.code_version,
            seed=t.seed,
            duration_s=t.duration_s,
            idempotency_key=t.idempotency_key,
            tags=rec.tags,
            evaluation=rec.evaluation,
        )

    # --- change tracking ----------------------------------------------------------------

    def dirty_versions(self) -> list[VersionView]:
        """Versions whose view differs from what the last drain handed out, in
        registration order."""
        return [v for v in self._version_views() if self._drained_versions.get(v.version) != v]

    def drain_changes(self) -> Changes:
        """What changed since the previous drain (or since the start); the next drain starts
        from here."""
        versions = self.dirty_versions()
        aliases = dict(sorted(self._aliases.items()))
        changes = Changes(
            versions=versions,
            aliases=aliases,
            history=self._history[self._drained_history :],
            offset=self._offset,
            updated_at=self._updated_at,
            aliases_changed=aliases != self._drained_aliases,
            offset_changed=self._offset != self._drained_offset,
        )
        self._drained_versions.update({v.version: v for v in versions})
        self._drained_aliases = aliases
        self._drained_history = len(self._history)
        self._drained_offset = self._offset
        return changes

    def mark_clean(self) -> None:
        """Forget pending changes (after the whole ``view()`` was written elsewhere)."""
        self.drain_changes()

    # --- folding ------------------------------------------------------------------------

    def apply(self, event: ModelLifecycle, offset: int | None = None) -> bool:
        """Fold one lifecycle event read at ``offset`` (None for an event applied before it
        was read back). Returns True when the state changed.

        An event id already applied, an event of another model, or a ``registered`` for a
        version already known (its id is still remembered) returns False and changes
        nothing but the offset: the log has been read that far either way.
        """
        if offset is not None and offset > self._offset:
            self._offset = offset
        if event.model_name != self.model_name or event.event_id in self._applied:
            return False
        self._applied.add(event.event_id)
        if event.action == "registered" and event.model_version in self._versions:
            return False
        match event.action:
            case "registered":
                self._apply_registered(event)
            case "evaluated":
                self._apply_evaluated(event)
            case "alias_set":
                self._apply_alias_set(event)
            case "rolled_back":
                self._apply_rolled_back(event)
            case "promote_requested" | "rollback_requested":
                self._causes.append(event)
            case "command_rejected":
                pass
        if event.cause_id is not None:
            self._answered.add(event.cause_id)
        self._history.append(HistoryEntry.of(event))
        self._updated_at = self._clock()
        return True

    def _apply_registered(self, event: ModelLifecycle) -> None:
        try:
            trained = ModelTrained.model_validate(event.details)
        except ValidationError:
            # A record the registry cannot read is kept in the history only: one bad
            # record must not stop the registry from folding the rest of the log.
            return
        version = event.model_version or trained.model_version
        if version in self._versions:
            return
        self._versions[version] = _Version(
            trained=trained,
            number=len(self._versions) + 1,
            registered_at=event.produced_at,
            tags=_tags(event.details, trained),
        )
        pending = self._pending_evaluations.pop(version, None)
        if pending is not None:
            self._attach(version, *pending)

    def _apply_evaluated(self, event: ModelLifecycle) -> None:
        try:
            evaluated = ModelEvaluated.model_validate(event.details)
        except ValidationError:
            return
        version = event.model_version or evaluated.model_version
        verdict = EvaluationView(
            verdict=evaluated.verdict,
            reasons=evaluated.reasons,
            champion_version=evaluated.champion_version,
            metrics=evaluated.metrics,
            evaluated_at=evaluated.produced_at,
            event_id=evaluated.event_id,
        )
        self._seen_evaluations.add(evaluated.event_id)
        if verdict.verdict == "blessed":
            self._causes.append(event)
        if version in self._versions:
            self._attach(version, verdict, event.event_id)
        else:
            self._pending_evaluations[version] = (verdict, event.event_id)

    def _attach(self, version: str, verdict: EvaluationView, cause: str) -> None:
        rec = self._versions[version]
        rec.evaluation = verdict
        rec.evaluation_cause = cause

    def _apply_alias_set(self, event: ModelLifecycle) -> None:
        if event.alias is None:
            return
        target = event.model_version
        if target is None:
            self._aliases.pop(event.alias, None)
            return
        if event.alias == "champion":
            self._crown(target)
        else:
            self._aliases[event.alias] = target

    def _crown(self, target: str) -> None:
        self._aliases["champion"] = target
        if self._aliases.get("challenger") == target:
            del self._aliases["challenger"]
        if not self._champions or self._champions[-1] != target:
            self._champions.append(target)
        self._ever_champion.add(target)

    def _apply_rolled_back(self, event: ModelLifecycle) -> None:
        rolled_from = event.previous_version or self._aliases.get("champion")
        if rolled_from is not None:
            self._rolled_back.add(rolled_from)
            if self._champions and self._champions[-1] == rolled_from:
                self._champions.pop()
        if event.model_version is None:
            self._aliases.pop("champion", None)
        else:
            # The event is the truth: if the stack disagrees, the restored version still
            # becomes the champion (and the top of the stack).
            self._crown(event.model_version)

    # --- intake ------------------------------------------------------------------------

    def on_trained(self, ev: ModelTrained) -> list[ModelLifecycle]:
        """The ``registered`` event to publish for a trained model; [] when the version is
        already registered or the model is another one. Does not apply it."""
        if ev.model_name != self.model_name or ev.model_version in self._versions:
            return []
        return [
            ModelLifecycle(
                model_name=self.model_name,
                action="registered",
                model_version=ev.model_version,
                reason="trained",
                details=ev.model_dump(mode="json"),
                source=SOURCE,
            )
        ]

    def on_evaluated(self, ev: ModelEvaluated) -> list[ModelLifecycle]:
        """The ``evaluated`` event to publish for a verdict; [] when that ``ModelEvaluated``
        (by event id) has already been folded or the model is another one. Does not apply
        it."""
        if ev.model_name != self.model_name or ev.event_id in self._seen_evaluations:
            return []
        reason = ev.verdict + (": " + "; ".join(ev.reasons) if ev.reasons else "")
        return [
            ModelLifecycle(
                model_name=self.model_name,
                action="evaluated",
                model_version=ev.model_version,
                reason=reason,
                details=ev.model_dump(mode="json"),
                source=SOURCE,
            )
        ]

    # --- decisions ----------------------------------------------------------------------

    def pending_causes(self) -> list[ModelLifecycle]:
        """Applied causes still owed an answer, in log order: unanswered operator commands,
        and unanswered blessed evaluations that are the current verdict of a registered
        version that does not already hold the alias it would get."""
        return [c for c in self._causes if c.event_id not in self._answered and self.decide(c)]

    def decide(self, cause: ModelLifecycle) -> list[ModelLifecycle]:
        """The answer to an applied cause, judged on the current state; [] when the event is
        not a cause, is already answered, or (for an evaluation) calls for nothing now.

        Raises ValueError when ``cause`` is a command or evaluation that was not applied.
        """
        if cause.action not in _COMMANDS and cause.action != "evaluated":
            return []
        if cause.event_id not in self._applied:
            raise ValueError(f"cause {cause.event_id} has not been applied")
        if cause.event_id in self._answered:
            return []
        if cause.action == "evaluated":
            return self._decide_evaluated(cause)
        if cause.action == "promote_requested":
            return self._decide_promote(cause)
        return self._decide_rollback(cause)

    def _answer(self, cause: ModelLifecycle, **fields: object) -> ModelLifecycle:
        return ModelLifecycle.model_validate(
            {"model_name": self.model_name, "cause_id": cause.event_id, "source": SOURCE} | fields
        )

    def _decide_evaluated(self, cause: ModelLifecycle) -> list[ModelLifecycle]:
        version = cause.model_version
        rec = self._versions.get(version) if version is not None else None
        # Only the version's current verdict counts: a blessing superseded by a later
        # evaluation, or one whose version is not registered yet, waits or lapses.
        if version is None or rec is None or rec.evaluation_cause != cause.event_id:
            return []
        evaluation = rec.evaluation
        if evaluation is None or evaluation.verdict != "blessed":
            return []
        champion = self._aliases.get("champion")
        if champion == version:
            return []
        if champion is None:
            return [self._set_alias(cause, "champion", version, "first blessed version")]
        if self.promotion == "direct":
            if evaluation.champion_version == champion:
                return [
                    self._set_alias(
                        cause, "champion", version, f"blessed against champion {champion}"
                    )
                ]
            reason = (
                f"champion changed since evaluation (evaluated against "
                f"{evaluation.champion_version or 'no champion'}, champion is now {champion})"
            )
        else:
            reason = f"blessed; shadowing champion {champion}"
        if self._aliases.get("challenger") == version:
            return []
        return [self._set_alias(cause, "challenger", version, reason)]

    def _set_alias(
        self,
        cause: ModelLifecycle,
        alias: Literal["champion", "challenger"],
        version: str,
        reason: str,
        actor: str = "system",
    ) -> ModelLifecycle:
        return self._answer(
            cause,
            action="alias_set",
            alias=alias,
            model_version=version,
            previous_version=self._aliases.get(alias),
            actor=actor,
            reason=reason,
        )

    def _reject(self, cause: ModelLifecycle, reason: str) -> ModelLifecycle:
        return self._answer(
            cause,
            action="command_rejected",
            model_version=cause.model_version,
            actor=cause.actor,
            reason=reason,
        )

    def _decide_promote(self, cause: ModelLifecycle) -> list[ModelLifecycle]:
        version = cause.model_version
        rec = self._versions.get(version) if version is not None else None
        if version is None or rec is None:
            return [self._reject(cause, f"unknown version {version}")]
        if self._aliases.get("champion") == version:
            return [self._reject(cause, f"{version} is already the champion")]
        forced = cause.details.get("force") is True
        if rec.evaluation is not None and rec.evaluation.verdict == "rejected" and not forced:
            why = "; ".join(rec.evaluation.reasons) or "no reason given"
            return [
                self._reject(
                    cause,
                    f"the evaluation gate rejected {version} ({why}); promote with force "
                    f"to override",
                )
            ]
        reason = cause.reason or "promoted by operator"
        if forced:
            reason += " (forced)"
        return [self._set_alias(cause, "champion", version, reason, actor=cause.actor)]

    def _decide_rollback(self, cause: ModelLifecycle) -> list[ModelLifecycle]:
        if len(self._champions) < 2:
            return [self._reject(cause, "no earlier champion to roll back to")]
        return [
            self._answer(
                cause,
                action="rolled_back",
                alias="champion",
                model_version=self._champions[-2],
                previous_version=self._champions[-1],
                actor=cause.actor,
                reason=cause.reason or "rolled back by operator",
            )
        ]


def _tags(details: dict[str, object], trained: ModelTrained) -> dict[str, str]:
    tags = {"idempotency_key": trained.idempotency_key}
    extra = details.get("tags")
    if isinstance(extra, dict):
        tags.update({str(k): v for k, v in extra.items() if isinstance(v, str)})
    trigger = trained.trigger or details.get("trigger")
    if isinstance(trigger, str):
        tags["trigger"] = trigger
    if trained.reason:
        tags["reason"] = trained.reason
    return tags
