"""The registry's domain: folding ``models.lifecycle`` into state, and deciding what follows.

``RegistryState`` holds one model. It is pure: the service feeds it events and publishes
what it returns; nothing here talks to Kafka, Redis or HTTP. A lifecycle event whose details
do not validate is kept in the history only, logged and counted
(``streamloop_registry_malformed_events``).

The loop the service runs:

1. facts from other topics go through ``on_trained`` / ``on_evaluated`` /
   ``on_comparison``, which return the lifecycle events to publish (they do not change the
   state);
2. everything read from ``models.lifecycle`` (including the service's own events coming
   back) goes through ``apply``, which drops event ids it has already applied;
3. for each applied cause, ``decide`` returns its answer (an alias move, a rollback or a
   ``command_rejected``; a promotion on live evidence is answered by two alias moves); the
   service publishes and applies each answer before deciding the next cause, so every
   decision sees the previous ones;
4. ``pending_causes`` lists causes still owed an answer (after a restart, when the service
   died between applying a cause and publishing its answer);
5. ``drain_changes`` says what to write to the read model since the last drain.

Folding is deterministic: the same events in the same order give the same ``view()``
(``updated_at`` aside, which is the clock at the last applied event).

Live evidence (``LiveComparison``, champion and challenger scored on the same labelled
frames) closes the loop without an operator. Two rules decide on it (``promotion_test``):

``sequential`` (the default) looks only at the *discordant* frames, those exactly one of
the two got right (``champion_only``, ``challenger_only``), and runs the sequential test of
``services.registry.sequential`` on them at level ``false_promotion_rate`` (alpha): a
mixture likelihood ratio that, by Ville's inequality, reaches ``1/alpha`` with probability
at most alpha, ever, when the model it favours is not in fact better, however often the
cumulative counts are looked at. So:

- a blessed challenger is promoted (``promote_requested`` by ``live-evidence``) as soon as
  the test says it is better than the champion, and it is itself at least
  ``live_min_accuracy`` accurate on the shared frames (labels that no model agrees with
  prove nothing); no minimum number of labels: a clear winner goes in a dozen, a tie never.
  The answer crowns it and shadows the previous champion as the challenger, *on probation*
  of the new one;
- on probation, the same test with the roles swapped rolls the new champion back
  (``rollback_requested``) as soon as it says the predecessor is better; the probation
  passes (``probation_passed``, the predecessor's shadow is cleared) as soon as it says the
  new champion is better, or once ``live_min_labels`` shared labelled frames were compared
  without evidence against the new champion. ``rollback_margin`` plays no part.

``fixed`` is the earlier rule, unchanged, and also applies to a comparison without
discordant counts (published before they were counted): a comparison counts once it has
``live_min_labels`` shared labelled frames; a blessed challenger at least as accurate as
the champion and at least ``live_min_accuracy`` itself is promoted; on probation, a
predecessor more accurate than the new champion by more than ``rollback_margin`` rolls it
back, otherwise the probation passes.

Under either rule a probation pair is never promoted back and forth on noise: on probation
only the rollback and passing rules apply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from prometheus_client import Counter
from pydantic import ValidationError

from services.registry.sequential import Evidence, evidence
from shared.events import (
    LiveComparison,
    ModelEvaluated,
    ModelLifecycle,
    ModelTrained,
    derived_id,
    utcnow,
)
from shared.registry import (
    DEFAULT_MODEL_NAME,
    EvaluationView,
    HistoryEntry,
    RegistryView,
    VersionView,
)

__all__ = [
    "LIVE_ACTOR",
    "MALFORMED",
    "SOURCE",
    "Changes",
    "Probation",
    "Promotion",
    "PromotionTest",
    "RegistryState",
]

log = logging.getLogger("streamloop.registry")

SOURCE = "registry"

MALFORMED = Counter(
    "streamloop_registry_malformed_events",
    "Lifecycle events whose details the registry cannot read (kept in the history only), "
    "by action (registered, evaluated).",
    ["action"],
)

LIVE_ACTOR = "live-evidence"
"""The actor of lifecycle events the registry raises on live evidence (``LiveComparison``)."""

Promotion = Literal["shadow", "direct"]
"""What a blessed version becomes when there already is a champion: ``shadow`` makes it
the challenger (served in shadow until an operator promotes it), ``direct`` makes it the
champion at once."""

PromotionTest = Literal["sequential", "fixed"]
"""How live evidence decides (see the module docstring): ``sequential`` tests the discordant
frames with a bounded false-promotion rate; ``fixed`` waits for ``live_min_labels`` shared
labelled frames and compares accuracies."""

_COMMANDS = frozenset({"promote_requested", "rollback_requested"})
_CAUSES = _COMMANDS | {"evaluated", "probation_passed"}
"""Actions ``decide`` answers (an ``evaluated`` one only when it is a blessing)."""


@dataclass(frozen=True)
class Probation:
    """A champion promoted on live evidence, with its predecessor shadowing it as the
    challenger until the live evidence on the pair passes or rolls it back."""

    champion: str
    predecessor: str


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
    ``Promotion``); ``clock`` stamps ``updated_at``. ``live_promotion`` turns the live
    evidence policy on (see the module docstring); ``promotion_test`` picks its rule and
    ``false_promotion_rate`` is the sequential test's alpha. ``live_min_labels`` is the
    number of shared labelled frames after which a probation with no evidence against the
    new champion passes (and, under the ``fixed`` rule, the number a comparison needs before
    it counts); ``rollback_margin`` is how much more accurate a predecessor on probation must
    be to take the champion alias back under the ``fixed`` rule. Not thread-safe: one
    consumer loop owns it.

    Raises ValueError on a setting out of range.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL_NAME,
        *,
        promotion: Promotion = "shadow",
        live_promotion: bool = True,
        live_min_labels: int = 200,
        rollback_margin: float = 0.02,
        live_min_accuracy: float = 0.5,
        promotion_test: PromotionTest = "sequential",
        false_promotion_rate: float = 0.01,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if live_min_labels < 1:
            raise ValueError(f"live_min_labels must be at least 1, not {live_min_labels}")
        if not 0.0 <= rollback_margin <= 1.0:
            raise ValueError(f"rollback_margin must be within [0, 1], not {rollback_margin}")
        if not 0.0 < false_promotion_rate <= 0.5:
            raise ValueError(
                f"false_promotion_rate must be within (0, 0.5], not {false_promotion_rate}"
            )
        if promotion_test not in ("sequential", "fixed"):
            raise ValueError(f"promotion_test must be sequential or fixed, not {promotion_test}")
        self.model_name = model_name
        self.promotion: Promotion = promotion
        self.live_promotion = live_promotion
        self.live_min_labels = live_min_labels
        self.rollback_margin = rollback_margin
        self.live_min_accuracy = live_min_accuracy
        self.promotion_test: PromotionTest = promotion_test
        self.false_promotion_rate = false_promotion_rate
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
        self._cause_ids: dict[str, ModelLifecycle] = {}
        self._answered: set[str] = set()
        self._probation: Probation | None = None
        self._owed_probation: dict[str, tuple[str, str]] = {}
        """Live promotions whose champion move is applied but whose probation move is not
        (a crash between the two answers): request id -> (new champion, predecessor)."""
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

    @property
    def probation(self) -> Probation | None:
        """The champion on probation and its shadowing predecessor, if any."""
        return self._probation

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
            init=t.init,
            imported=t.imported,
        )

    # --- change tracking ----------------------------------------------------------------

    def dirty_versions(self) -> list[VersionView]:
        """Versions whose view differs from what the last drain handed out, in
        registration order."""
        return [v for v in self._version_views() if self._drained_versions.get(v.version) != v]

    def pending_changes(self) -> Changes:
        """What changed since the previous drain (or since the start), without draining it:
        the caller writes it, then calls ``mark_drained`` (a failed write keeps it pending)."""
        aliases = dict(sorted(self._aliases.items()))
        return Changes(
            versions=self.dirty_versions(),
            aliases=aliases,
            history=self._history[self._drained_history :],
            offset=self._offset,
            updated_at=self._updated_at,
            aliases_changed=aliases != self._drained_aliases,
            offset_changed=self._offset != self._drained_offset,
        )

    def mark_drained(self, changes: Changes) -> None:
        """``changes`` (from ``pending_changes``, with nothing applied since) are written."""
        self._drained_versions.update({v.version: v for v in changes.versions})
        self._drained_aliases = dict(changes.aliases)
        self._drained_history += len(changes.history)
        self._drained_offset = changes.offset

    def drain_changes(self) -> Changes:
        """What changed since the previous drain (or since the start); the next drain starts
        from here."""
        changes = self.pending_changes()
        self.mark_drained(changes)
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
                self._apply_registered(event, offset)
            case "evaluated":
                self._apply_evaluated(event, offset)
            case "alias_set":
                self._apply_alias_set(event)
            case "rolled_back":
                self._apply_rolled_back(event)
            case "promote_requested" | "rollback_requested" | "probation_passed":
                self._add_cause(event)
            case "command_rejected":
                pass
        if event.cause_id is not None:
            self._answered.add(event.cause_id)
            self._track_live_promotion(event)
        self._check_probation(event)
        self._history.append(HistoryEntry.of(event))
        self._updated_at = self._clock()
        return True

    def _malformed(self, event: ModelLifecycle, exc: ValidationError, offset: int | None) -> None:
        """``event``'s details do not validate: say so and count it. A record the registry
        cannot read is kept in the history only: one bad record must not stop the registry
        from folding the rest of the log."""
        MALFORMED.labels(event.action).inc()
        log.warning(
            "malformed lifecycle event kept in the history only",
            extra={
                "event_id": event.event_id,
                "action": event.action,
                "model_version": event.model_version,
                "offset": offset,
                "reason": _why(exc),
            },
        )

    def _apply_registered(self, event: ModelLifecycle, offset: int | None) -> None:
        try:
            trained = ModelTrained.model_validate(event.details)
        except ValidationError as exc:
            self._malformed(event, exc, offset)
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

    def _apply_evaluated(self, event: ModelLifecycle, offset: int | None) -> None:
        try:
            evaluated = ModelEvaluated.model_validate(event.details)
        except ValidationError as exc:
            self._malformed(event, exc, offset)
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
            self._add_cause(event)
        if version in self._versions:
            self._attach(version, verdict, event.event_id)
        else:
            self._pending_evaluations[version] = (verdict, event.event_id)

    def _add_cause(self, event: ModelLifecycle) -> None:
        self._causes.append(event)
        self._cause_ids[event.event_id] = event

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

    def _track_live_promotion(self, event: ModelLifecycle) -> None:
        """Keep ``_owed_probation`` in step with the two answers of a live promotion."""
        assert event.cause_id is not None
        cause = self._cause_ids.get(event.cause_id)
        if cause is None or cause.action != "promote_requested" or cause.actor != LIVE_ACTOR:
            return
        if event.action == "alias_set" and event.alias == "champion":
            if event.model_version is not None and event.previous_version is not None:
                self._owed_probation[cause.event_id] = (
                    event.model_version,
                    event.previous_version,
                )
        elif event.action == "alias_set" and event.alias == "challenger":
            self._owed_probation.pop(cause.event_id, None)

    def _check_probation(self, event: ModelLifecycle) -> None:
        """Start a probation on its ``alias_set`` (``details.probation_of`` naming the
        champion); end it as soon as the champion or the challenger alias moves otherwise."""
        if event.action == "alias_set" and event.alias == "challenger":
            probation_of = event.details.get("probation_of")
            if (
                isinstance(probation_of, str)
                and event.model_version is not None
                and self._aliases.get("champion") == probation_of
            ):
                self._probation = Probation(probation_of, event.model_version)
                return
        p = self._probation
        if p is not None and (
            self._aliases.get("champion") != p.champion
            or self._aliases.get("challenger") != p.predecessor
        ):
            self._probation = None

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

    def on_comparison(self, ev: LiveComparison) -> list[ModelLifecycle]:
        """The lifecycle event live evidence calls for, if any; does not apply it.

        - On probation, for exactly (champion, predecessor): ``rollback_requested`` when the
          predecessor is better (see the module docstring for each rule), ``probation_passed``
          when the new champion holds, else nothing yet. Never a promotion of the
          predecessor.
        - Otherwise, for exactly the current (champion, challenger), a blessed challenger
          that the rule finds better (``sequential``) or at least as accurate (``fixed``):
          ``promote_requested``.

        The ``sequential`` rule applies when it is the policy and the comparison carries
        discordant counts; otherwise the ``fixed`` one. [] when live promotion is off, the
        model is another one, no frame was compared (or, under the fixed rule, fewer than
        ``live_min_labels``), the versions are not the current aliases, or a live request is
        applied and still owed an answer (its answer will move the aliases, and a second
        request meanwhile would be a duplicate).
        """
        if (
            not self.live_promotion
            or ev.model_name != self.model_name
            or ev.labelled == 0
            or ev.champion_version != self._aliases.get("champion")
            or ev.challenger_version != self._aliases.get("challenger")
            or self._live_request_pending()
        ):
            return []
        split = self._split(ev)
        if split is None and ev.labelled < self.live_min_labels:
            return []
        p = self._probation
        if p is not None and (p.champion, p.predecessor) == (
            ev.champion_version,
            ev.challenger_version,
        ):
            if split is None:
                return self._probation_fixed(ev)
            return self._probation_sequential(ev, *split)
        rec = self._versions.get(ev.challenger_version)
        if (
            p is not None  # a probation pair is the current pair: never reached, but be sure
            or rec is None
            or rec.evaluation is None
            or rec.evaluation.verdict != "blessed"
            # Live labels that neither model agrees with (a broken annotation feed) are no
            # evidence for anything: a challenger is promoted only when it does well itself.
            or ev.challenger_correct / ev.labelled < self.live_min_accuracy
        ):
            return []
        if split is None:
            return self._promotion_fixed(ev)
        return self._promotion_sequential(ev, *split)

    def _split(self, ev: LiveComparison) -> tuple[int, int] | None:
        """(champion only right, challenger only right) when the sequential rule applies to
        ``ev``; None for the fixed rule (the policy, or a comparison without the counts)."""
        if (
            self.promotion_test != "sequential"
            or ev.champion_only is None
            or ev.challenger_only is None
        ):
            return None
        return ev.champion_only, ev.challenger_only

    def _test(self, wins: int, losses: int) -> Evidence:
        return evidence(wins, losses, self.false_promotion_rate)

    def _promotion_sequential(
        self, ev: LiveComparison, champion_only: int, challenger_only: int
    ) -> list[ModelLifecycle]:
        champion, challenger = ev.champion_version, ev.challenger_version
        test = self._test(challenger_only, champion_only)
        if not test.decisive:
            return []
        reason = f"{_accuracies(ev)}; {test.summary(challenger, champion)}"
        return [self._live("promote_requested", challenger, reason, ev)]

    def _promotion_fixed(self, ev: LiveComparison) -> list[ModelLifecycle]:
        if ev.challenger_correct < ev.champion_correct:
            return []
        return [
            self._live(
                "promote_requested",
                ev.challenger_version,
                _accuracies(ev),
                ev,
            )
        ]

    def _probation_sequential(
        self, ev: LiveComparison, champion_only: int, predecessor_only: int
    ) -> list[ModelLifecycle]:
        champion, predecessor, n = ev.champion_version, ev.challenger_version, ev.labelled
        champion_acc, predecessor_acc = ev.champion_correct / n, ev.challenger_correct / n
        against = self._test(predecessor_only, champion_only)
        if against.decisive:
            return [self._rollback(ev, f"; {against.summary(predecessor, champion)}")]
        holds = (
            f"live evidence: champion {champion} {champion_acc:.3f} holds against predecessor "
            f"{predecessor} {predecessor_acc:.3f} on {n} shared labelled frames"
        )
        better = self._test(champion_only, predecessor_only)
        if better.decisive:
            reason = f"{holds}; {better.summary(champion, predecessor)}"
        elif n >= self.live_min_labels:
            reason = (
                f"{holds}, no evidence against it within {self.live_min_labels}; "
                f"{against.summary(predecessor, champion)}"
            )
        else:
            return []
        return [self._live("probation_passed", champion, reason, ev, previous_version=predecessor)]

    def _probation_fixed(self, ev: LiveComparison) -> list[ModelLifecycle]:
        champion, predecessor, n = ev.champion_version, ev.challenger_version, ev.labelled
        champion_acc, predecessor_acc = ev.champion_correct / n, ev.challenger_correct / n
        if predecessor_acc > champion_acc + self.rollback_margin:
            return [self._rollback(ev)]
        return [
            self._live(
                "probation_passed",
                champion,
                f"live evidence: champion {champion} {champion_acc:.3f} holds against "
                f"predecessor {predecessor} {predecessor_acc:.3f} (margin "
                f"{self.rollback_margin:.3f}) on {n} shared labelled frames",
                ev,
                previous_version=predecessor,
            )
        ]

    def _rollback(self, ev: LiveComparison, evidence: str = "") -> ModelLifecycle:
        """``rollback_requested`` of the champion on probation, its reason the accuracies of
        the pair followed by ``evidence``."""
        n = ev.labelled
        return self._live(
            "rollback_requested",
            ev.champion_version,
            f"live evidence: champion {ev.champion_version} {ev.champion_correct / n:.3f} "
            f"below predecessor {ev.challenger_version} {ev.challenger_correct / n:.3f} on "
            f"{n} shared labelled frames{evidence}",
            ev,
        )

    def _live(
        self,
        action: Literal["promote_requested", "rollback_requested", "probation_passed"],
        version: str,
        reason: str,
        evidence: LiveComparison,
        previous_version: str | None = None,
    ) -> ModelLifecycle:
        """A lifecycle event raised on live evidence, carrying that evidence."""
        return ModelLifecycle(
            model_name=self.model_name,
            action=action,
            model_version=version,
            previous_version=previous_version,
            actor=LIVE_ACTOR,
            reason=reason,
            details={"evidence": evidence.model_dump(mode="json")},
            source=SOURCE,
        )

    def _live_request_pending(self) -> bool:
        return any(c.actor == LIVE_ACTOR and self.decide(c) for c in self._causes)

    # --- decisions ----------------------------------------------------------------------

    def pending_causes(self) -> list[ModelLifecycle]:
        """Applied causes still owed an answer, in log order: unanswered commands (operator
        or live evidence), unanswered ``probation_passed`` whose probation still holds,
        unanswered blessed evaluations that are the current verdict of a registered version
        that does not already hold the alias it would get, and live promotions whose
        probation move was never published (a crash between their two answers)."""
        return [c for c in self._causes if self.decide(c)]

    def decide(self, cause: ModelLifecycle) -> list[ModelLifecycle]:
        """The answer to an applied cause, judged on the current state; [] when the event is
        not a cause, is already answered, or (for an evaluation or a passed probation) calls
        for nothing now.

        An answered live promotion whose champion move is applied but whose probation move
        is not is answered with the probation move alone (same event id as the one it
        should have had, so a copy that did get out is recognised).

        Raises ValueError when ``cause`` is a command or evaluation that was not applied.
        """
        if cause.action not in _CAUSES:
            return []
        if cause.event_id not in self._applied:
            raise ValueError(f"cause {cause.event_id} has not been applied")
        if cause.event_id in self._answered:
            return self._decide_owed_probation(cause)
        match cause.action:
            case "evaluated":
                return self._decide_evaluated(cause)
            case "promote_requested":
                return self._decide_promote(cause)
            case "probation_passed":
                return self._decide_probation_passed(cause)
            case _:
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
        champion = self._aliases.get("champion")
        live = cause.actor == LIVE_ACTOR
        if live and champion != _evidence_of(cause).get("champion_version"):
            return [
                self._reject(
                    cause,
                    f"the champion changed since the live evidence (now {champion or 'none'})",
                )
            ]
        reason = cause.reason or "promoted by operator"
        if forced:
            reason += " (forced)"
        crown = self._set_alias(cause, "champion", version, reason, actor=cause.actor)
        if not live or champion is None:
            return [crown]
        # Crowning the challenger clears the challenger alias (``_crown``): the probation
        # move, applied after the crown, takes the alias from there.
        challenger = self._aliases.get("challenger")
        after_crown = None if challenger == version else challenger
        return [crown, self._probation_move(cause, version, champion, after_crown)]

    def _probation_move(
        self, cause: ModelLifecycle, champion: str, predecessor: str, previous: str | None
    ) -> ModelLifecycle:
        """The second answer of a live promotion: the previous champion shadows the new one.
        Its id derives from the request, so the same move decided twice is one event."""
        return self._answer(
            cause,
            event_id=derived_id("probation", cause.event_id),
            action="alias_set",
            alias="challenger",
            model_version=predecessor,
            previous_version=previous,
            actor=cause.actor,
            reason=f"previous champion {predecessor} shadowed on probation of {champion}",
            details={"probation_of": champion},
        )

    def _decide_owed_probation(self, cause: ModelLifecycle) -> list[ModelLifecycle]:
        owed = self._owed_probation.get(cause.event_id)
        if owed is None:
            return []
        champion, predecessor = owed
        # Only while the promotion it completes still stands.
        if self._aliases.get("champion") != champion or predecessor not in self._versions:
            return []
        if self._aliases.get("challenger") == predecessor:
            return []
        return [self._probation_move(cause, champion, predecessor, self._aliases.get("challenger"))]

    def _decide_probation_passed(self, cause: ModelLifecycle) -> list[ModelLifecycle]:
        p = self._probation
        # A probation that ended meanwhile (an alias moved) lapses: nothing left to clear.
        if p is None or p.champion != cause.model_version:
            return []
        if cause.previous_version is not None and cause.previous_version != p.predecessor:
            return []
        return [
            self._answer(
                cause,
                action="alias_set",
                alias="challenger",
                model_version=None,
                previous_version=p.predecessor,
                actor=cause.actor,
                reason=f"probation passed: {cause.reason}" if cause.reason else "probation passed",
            )
        ]

    def _decide_rollback(self, cause: ModelLifecycle) -> list[ModelLifecycle]:
        champion = self._aliases.get("champion")
        if cause.model_version is not None and champion != cause.model_version:
            # A rollback naming a version (live evidence does) rolls back that version only.
            return [
                self._reject(
                    cause,
                    f"{cause.model_version} is no longer the champion (now {champion or 'none'})",
                )
            ]
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


def _why(exc: ValidationError, limit: int = 3) -> str:
    """The first ``limit`` validation errors, one ``field: message`` each."""
    parts = [
        f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
        for err in exc.errors()[:limit]
    ]
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _accuracies(ev: LiveComparison) -> str:
    """``live evidence: bbb 0.917 vs champion aaa 0.167 on 12 shared labelled frames``."""
    n = ev.labelled
    return (
        f"live evidence: {ev.challenger_version} {ev.challenger_correct / n:.3f} vs champion "
        f"{ev.champion_version} {ev.champion_correct / n:.3f} on {n} shared labelled frames"
    )


def _evidence_of(cause: ModelLifecycle) -> dict[str, object]:
    evidence = cause.details.get("evidence")
    return evidence if isinstance(evidence, dict) else {}


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
