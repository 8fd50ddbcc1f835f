"""The registry's domain: folding lifecycle events and deciding their consequences."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.registry.state import Promotion, RegistryState
from shared.events import DatasetSnapshot, ModelEvaluated, ModelLifecycle, ModelTrained
from shared.registry import DEFAULT_MODEL_NAME, EvaluationView, VersionView, lifecycle_key

MODEL = DEFAULT_MODEL_NAME
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def trained(version: str, **kw: Any) -> ModelTrained:
    base: dict[str, Any] = dict(
        model_name=MODEL,
        model_version=version,
        idempotency_key=f"key-{version}",
        artifact_uri=f"file:///artifacts/{version}.safetensors",
        sha256="ab" * 32,
        dataset=DatasetSnapshot(
            snapshot_id=f"snap-{version}",
            frame_ids_sha256="cd" * 32,
            size=1000,
            per_class={"car": 600, "truck": 400},
            per_condition={"day": 1000},
            topic_offsets={"examples:0": 1000},
            holdout_size=100,
        ),
        hyperparameters={"lr": 0.01, "epochs": 3},
        metrics={"train_accuracy": 0.9},
        code_version="abc123",
        seed=7,
        duration_s=12.5,
    )
    base.update(kw)
    return ModelTrained(**base)


def evaluated(version: str, verdict: str = "blessed", **kw: Any) -> ModelEvaluated:
    base: dict[str, Any] = dict(
        model_name=MODEL,
        model_version=version,
        champion_version=None,
        verdict=verdict,
        reasons=[] if verdict == "blessed" else ["fresh accuracy below champion"],
        metrics={"holdouts": {"fresh": {"candidate": {"accuracy": 0.91}}}},
    )
    base.update(kw)
    return ModelEvaluated(**base)


def command(action: str, version: str | None = None, **kw: Any) -> ModelLifecycle:
    return ModelLifecycle(
        model_name=MODEL,
        action=action,
        model_version=version,
        actor=kw.pop("actor", "alice"),
        reason=kw.pop("reason", "operator says so"),
        **kw,
    )


class Loop:
    """What the service does, minus Kafka: publish = append each event to the log and apply
    it, then settle: answer the first cause still owed (all of its answers appended and
    applied in order), and again, until nothing is owed."""

    def __init__(self, state: RegistryState) -> None:
        self.state = state
        self.log: list[ModelLifecycle] = []

    def _append(self, events: list[ModelLifecycle]) -> None:
        for event in events:
            self.log.append(event)
            self.state.apply(event, offset=len(self.log) - 1)

    def publish(self, events: list[ModelLifecycle]) -> list[ModelLifecycle]:
        self._append(events)
        while pending := self.state.pending_causes():
            answers = self.state.decide(pending[0])
            assert answers, "pending_causes lists only causes with an answer"
            self._append(answers)
        return events

    def train(self, version: str, **kw: Any) -> None:
        self.publish(self.state.on_trained(trained(version, **kw)))

    def evaluate(self, version: str, verdict: str = "blessed", **kw: Any) -> None:
        self.publish(self.state.on_evaluated(evaluated(version, verdict, **kw)))

    def answers_to(self, cause: ModelLifecycle) -> list[ModelLifecycle]:
        return [e for e in self.log if e.cause_id == cause.event_id]


def loop(promotion: Promotion = "shadow") -> Loop:
    return Loop(RegistryState(MODEL, promotion=promotion))


def fold(events: list[ModelLifecycle], **kw: Any) -> RegistryState:
    state = RegistryState(MODEL, **kw)
    for offset, event in enumerate(events):
        state.apply(event, offset)
    return state


def without_clock(state: RegistryState) -> dict[str, Any]:
    return state.view().model_dump(exclude={"updated_at"})


# --- registration ------------------------------------------------------------------------


def test_versions_are_numbered_in_registration_order() -> None:
    lp = loop()
    for v in ("aaa", "bbb", "ccc"):
        lp.train(v)
    view = lp.state.view()
    assert [(v.version, v.number) for v in view.versions] == [("aaa", 1), ("bbb", 2), ("ccc", 3)]
    first = view.versions[0]
    assert first.status == "registered"
    assert first.evaluation is None and first.aliases == []
    assert first.artifact_uri == "file:///artifacts/aaa.safetensors"
    assert first.dataset.size == 1000 and first.training_metrics == {"train_accuracy": 0.9}
    assert first.tags == {"idempotency_key": "key-aaa"}
    assert view.aliases == {}
    assert view.offset == 2


def test_a_trained_version_is_registered_once() -> None:
    lp = loop()
    lp.train("aaa")
    assert lp.state.on_trained(trained("aaa")) == []
    # A second registration of the same version (published in a race) changes nothing.
    dup = lp.state.on_trained(trained("bbb"))[0].model_copy(update={"model_version": "aaa"})
    assert not lp.state.apply(dup)
    assert lp.state.has_applied(dup.event_id)
    assert [v.version for v in lp.state.view().versions] == ["aaa"]


def test_registration_tags_come_from_the_details() -> None:
    ev = trained("aaa").model_dump(mode="json") | {"trigger": "monitor", "tags": {"team": "cv"}}
    state = fold(
        [ModelLifecycle(model_name=MODEL, action="registered", model_version="aaa", details=ev)]
    )
    assert state.view().versions[0].tags == {
        "idempotency_key": "key-aaa",
        "trigger": "monitor",
        "team": "cv",
    }


def test_duplicate_event_ids_are_ignored() -> None:
    lp = loop()
    lp.train("aaa")
    lp.evaluate("aaa")
    before = without_clock(lp.state)
    for event in lp.log:
        assert not lp.state.apply(event)
    assert without_clock(lp.state) == before
    assert len(lp.state.view().history) == len(lp.log) == 3


def test_an_unreadable_registration_is_kept_in_the_history_only() -> None:
    bad = ModelLifecycle(model_name=MODEL, action="registered", model_version="aaa", details={})
    state = fold([bad])
    assert state.view().versions == []
    assert [h.event_id for h in state.view().history] == [bad.event_id]


def test_events_of_another_model_are_not_folded() -> None:
    state = RegistryState(MODEL)
    other = ModelLifecycle(
        model_name="other",
        action="registered",
        model_version="aaa",
        details=trained("aaa", model_name="other").model_dump(mode="json"),
    )
    assert not state.apply(other, offset=5)
    assert state.view().versions == [] and state.view().history == []
    assert state.offset == 5
    assert state.on_trained(trained("aaa", model_name="other")) == []


# --- evaluation and promotion policy -----------------------------------------------------


def test_first_blessed_version_becomes_champion() -> None:
    lp = loop()
    lp.train("aaa")
    lp.evaluate("aaa")
    evaluated_event = lp.log[1]
    [answer] = lp.answers_to(evaluated_event)
    assert answer.action == "alias_set" and answer.alias == "champion"
    assert answer.model_version == "aaa" and answer.previous_version is None
    assert answer.reason == "first blessed version" and answer.source == "registry"
    view = lp.state.view()
    assert view.aliases == {"champion": "aaa"}
    champion = view.champion()
    assert champion is not None and champion.version == "aaa"
    assert champion.status == "blessed" and champion.was_champion
    assert champion.aliases == ["champion"]


def test_second_blessed_version_becomes_challenger_in_shadow_mode() -> None:
    lp = loop("shadow")
    lp.train("aaa")
    lp.evaluate("aaa")
    lp.train("bbb")
    lp.evaluate("bbb", champion_version="aaa")
    view = lp.state.view()
    assert view.aliases == {"champion": "aaa", "challenger": "bbb"}
    challenger = view.challenger()
    assert challenger is not None and challenger.version == "bbb"
    assert not challenger.was_champion
    assert lp.log[-1].reason == "blessed; shadowing champion aaa"


def test_second_blessed_version_becomes_champion_in_direct_mode() -> None:
    lp = loop("direct")
    lp.train("aaa")
    lp.evaluate("aaa")
    lp.train("bbb")
    lp.evaluate("bbb", champion_version="aaa")
    view = lp.state.view()
    assert view.aliases == {"champion": "bbb"}
    assert lp.log[-1].previous_version == "aaa"
    assert lp.state.champion_stack == ("aaa", "bbb")
    old = view.version("aaa")
    assert old is not None and old.was_champion and old.aliases == []


def test_direct_mode_makes_a_challenger_when_the_champion_changed_since_evaluation() -> None:
    lp = loop("direct")
    lp.train("aaa")
    lp.evaluate("aaa")
    lp.train("bbb")
    lp.evaluate("bbb", champion_version="zzz")
    assert lp.state.view().aliases == {"champion": "aaa", "challenger": "bbb"}
    assert "champion changed since evaluation" in lp.log[-1].reason


def test_a_rejected_version_never_gets_an_alias() -> None:
    lp = loop()
    lp.train("aaa")
    lp.evaluate("aaa", "rejected")
    rejected = lp.log[-1]
    assert lp.state.decide(rejected) == []
    assert lp.state.pending_causes() == []
    view = lp.state.view()
    assert view.aliases == {}
    v = view.version("aaa")
    assert v is not None and v.status == "rejected" and v.verdict == "rejected"
    assert v.evaluation is not None
    assert v.evaluation.reasons == ["fresh accuracy below champion"]


def test_the_same_verdict_is_published_once() -> None:
    lp = loop()
    lp.train("aaa")
    verdict = evaluated("aaa", "rejected")
    lp.publish(lp.state.on_evaluated(verdict))
    assert lp.state.on_evaluated(verdict) == []
    assert lp.state.on_evaluated(evaluated("aaa", model_name="other")) == []
    [again] = lp.state.on_evaluated(evaluated("aaa"))
    assert again.action == "evaluated" and again.details["event_id"] != verdict.event_id


def test_an_evaluation_before_its_registration_is_decided_once_registered() -> None:
    state = RegistryState(MODEL)
    [ev] = state.on_evaluated(evaluated("aaa"))
    assert state.apply(ev, 0)
    assert state.decide(ev) == []
    assert state.pending_causes() == []
    assert state.view().versions == []

    [reg] = state.on_trained(trained("aaa"))
    assert state.apply(reg, 1)
    v = state.version("aaa")
    assert v is not None and v.status == "blessed"
    assert v.evaluation is not None and v.evaluation.event_id == ev.details["event_id"]
    assert state.pending_causes() == [ev]
    [answer] = state.decide(ev)
    assert answer.alias == "champion" and answer.cause_id == ev.event_id


def test_a_blessing_superseded_by_a_rejection_is_not_acted_on() -> None:
    state = RegistryState(MODEL)
    [reg] = state.on_trained(trained("aaa"))
    [blessed] = state.on_evaluated(evaluated("aaa"))
    [rejected] = state.on_evaluated(evaluated("aaa", "rejected"))
    for offset, event in enumerate([reg, blessed, rejected]):
        state.apply(event, offset)
    assert state.decide(blessed) == []
    assert state.pending_causes() == []


# --- operator commands -------------------------------------------------------------------


def shadow_pair() -> Loop:
    lp = loop("shadow")
    lp.train("aaa")
    lp.evaluate("aaa")
    lp.train("bbb")
    lp.evaluate("bbb", champion_version="aaa")
    return lp


def test_promoting_the_challenger_moves_the_champion_and_clears_the_challenger() -> None:
    lp = shadow_pair()
    cmd = command("promote_requested", "bbb", actor="alice")
    lp.publish([cmd])
    [answer] = lp.answers_to(cmd)
    assert answer.action == "alias_set" and answer.alias == "champion"
    assert answer.model_version == "bbb" and answer.previous_version == "aaa"
    assert answer.actor == "alice" and answer.cause_id == cmd.event_id
    view = lp.state.view()
    assert view.aliases == {"champion": "bbb"}
    assert lp.state.champion_stack == ("aaa", "bbb")
    bbb = view.version("bbb")
    assert bbb is not None and bbb.aliases == ["champion"] and bbb.was_champion


def test_promoting_a_rejected_version_is_refused_unless_forced() -> None:
    lp = loop()
    lp.train("aaa")
    lp.evaluate("aaa")
    lp.train("bbb")
    lp.evaluate("bbb", "rejected")
    refused = command("promote_requested", "bbb")
    lp.publish([refused])
    [answer] = lp.answers_to(refused)
    assert answer.action == "command_rejected" and answer.model_version == "bbb"
    assert "rejected" in answer.reason and "fresh accuracy below champion" in answer.reason
    assert lp.state.view().aliases == {"champion": "aaa"}

    forced = command("promote_requested", "bbb", details={"force": True})
    lp.publish([forced])
    [answer] = lp.answers_to(forced)
    assert answer.action == "alias_set" and answer.model_version == "bbb"
    assert lp.state.view().aliases == {"champion": "bbb"}


def test_a_truthy_but_not_boolean_force_does_not_force() -> None:
    lp = loop()
    lp.train("aaa")
    lp.evaluate("aaa", "rejected")
    cmd = command("promote_requested", "aaa", details={"force": "yes"})
    lp.publish([cmd])
    assert lp.answers_to(cmd)[0].action == "command_rejected"


@pytest.mark.parametrize(
    ("version", "why"), [("nope", "unknown version nope"), ("aaa", "already the champion")]
)
def test_promote_of_an_unknown_version_or_the_champion_is_refused(version: str, why: str) -> None:
    lp = shadow_pair()
    cmd = command("promote_requested", version)
    lp.publish([cmd])
    [answer] = lp.answers_to(cmd)
    assert answer.action == "command_rejected" and why in answer.reason
    assert lp.state.view().aliases == {"champion": "aaa", "challenger": "bbb"}


def test_rollback_restores_the_previous_champion() -> None:
    lp = shadow_pair()
    lp.publish([command("promote_requested", "bbb")])
    cmd = command("rollback_requested", reason="bbb misclassifies trucks at night")
    lp.publish([cmd])
    [answer] = lp.answers_to(cmd)
    assert answer.action == "rolled_back" and answer.alias == "champion"
    assert answer.model_version == "aaa" and answer.previous_version == "bbb"
    assert answer.reason == "bbb misclassifies trucks at night"
    view = lp.state.view()
    assert view.aliases == {"champion": "aaa"}
    assert lp.state.champion_stack == ("aaa",)
    bbb, aaa = view.version("bbb"), view.version("aaa")
    assert bbb is not None and bbb.rolled_back and bbb.was_champion and bbb.aliases == []
    assert aaa is not None and not aaa.rolled_back and aaa.aliases == ["champion"]


def test_rollback_with_a_single_champion_is_refused() -> None:
    lp = shadow_pair()
    cmd = command("rollback_requested")
    lp.publish([cmd])
    [answer] = lp.answers_to(cmd)
    assert answer.action == "command_rejected"
    assert answer.reason == "no earlier champion to roll back to"
    assert lp.state.view().aliases == {"champion": "aaa", "challenger": "bbb"}


def test_a_rollback_that_disagrees_with_the_stack_is_trusted() -> None:
    lp = shadow_pair()
    restore = ModelLifecycle(
        model_name=MODEL,
        action="rolled_back",
        alias="champion",
        model_version="bbb",
        previous_version="aaa",
    )
    lp.publish([restore])
    assert lp.state.view().aliases == {"champion": "bbb"}
    assert lp.state.champion_stack == ("bbb",)
    aaa = lp.state.version("aaa")
    assert aaa is not None and aaa.rolled_back


def test_clearing_an_alias() -> None:
    lp = shadow_pair()
    clear = ModelLifecycle(model_name=MODEL, action="alias_set", alias="challenger")
    lp.publish([clear])
    assert lp.state.view().aliases == {"champion": "aaa"}


# --- causes and answers ------------------------------------------------------------------


def test_answered_causes_are_not_decided_again() -> None:
    lp = shadow_pair()
    cmd = command("promote_requested", "bbb")
    lp.publish([cmd])
    evaluation_of_aaa = lp.log[1]
    assert lp.state.is_answered(cmd.event_id)
    assert lp.state.decide(cmd) == []
    assert lp.state.decide(evaluation_of_aaa) == []
    assert lp.state.pending_causes() == []


def test_non_causes_decide_nothing_and_unapplied_causes_are_an_error() -> None:
    lp = shadow_pair()
    assert lp.state.decide(lp.log[0]) == []  # a registration
    with pytest.raises(ValueError, match="not been applied"):
        lp.state.decide(command("rollback_requested"))


def test_a_replay_missing_an_answer_owes_it_again() -> None:
    lp = shadow_pair()
    cmd = command("promote_requested", "bbb")
    lp.publish([cmd])
    # The service died after publishing the command but before its answer.
    crashed = lp.log[: lp.log.index(cmd) + 1]
    state = fold(crashed)
    assert state.pending_causes() == [cmd]
    [answer] = state.decide(cmd)
    assert answer.action == "alias_set" and answer.model_version == "bbb"
    assert answer.previous_version == "aaa" and answer.cause_id == cmd.event_id

    # With the blessing of bbb unanswered too, both are owed, in log order.
    blessing = next(e for e in crashed if e.action == "evaluated" and e.model_version == "bbb")
    state = fold([e for e in crashed if e.cause_id != blessing.event_id])
    assert state.pending_causes() == [blessing, cmd]


def test_replaying_the_log_gives_the_same_view() -> None:
    lp = shadow_pair()
    lp.train("ccc")
    lp.evaluate("ccc", "rejected")
    lp.publish([command("promote_requested", "bbb")])
    lp.publish([command("promote_requested", "ccc", details={"force": True})])
    lp.publish([command("rollback_requested")])
    lp.publish([command("rollback_requested")])
    lp.publish([command("rollback_requested")])
    original = lp.state.view()
    assert original.aliases == {"champion": "aaa"}

    clock = iter(T0 + timedelta(seconds=i) for i in range(1000))
    replayed = fold(lp.log, clock=lambda: next(clock))
    assert without_clock(replayed) == without_clock(lp.state)
    assert replayed.view().updated_at == T0 + timedelta(seconds=len(lp.log) - 1)
    assert replayed.pending_causes() == []
    assert replayed.champion_stack == lp.state.champion_stack == ("aaa",)
    assert [h.event_id for h in original.history] == [e.event_id for e in lp.log]


# --- change tracking ---------------------------------------------------------------------


def test_drain_changes_hands_out_only_what_changed() -> None:
    lp = shadow_pair()
    first = lp.state.drain_changes()
    assert [v.version for v in first.versions] == ["aaa", "bbb"]
    assert len(first.history) == len(lp.log) and first.aliases_changed
    assert lp.state.drain_changes().empty

    lp.train("ccc")
    changes = lp.state.drain_changes()
    assert [v.version for v in changes.versions] == ["ccc"]
    assert [h.action for h in changes.history] == ["registered"]
    assert not changes.aliases_changed and changes.aliases == {
        "champion": "aaa",
        "challenger": "bbb",
    }
    assert changes.offset == len(lp.log) - 1

    lp.publish([command("promote_requested", "bbb")])
    assert {v.version for v in lp.state.dirty_versions()} == {"aaa", "bbb"}
    changes = lp.state.drain_changes()
    assert changes.aliases_changed and changes.aliases == {"champion": "bbb"}

    # An echo of an applied event moves only the offset.
    assert not lp.state.apply(lp.log[-1], offset=99)
    changes = lp.state.drain_changes()
    assert not changes.empty and changes.offset_changed and changes.offset == 99
    assert changes.versions == [] and changes.history == []


# --- views and keys ----------------------------------------------------------------------


def version_with(metrics: dict[str, Any] | None) -> VersionView:
    lp = loop()
    lp.train("aaa")
    base = lp.state.version("aaa")
    assert base is not None
    if metrics is None:
        return base
    ev = EvaluationView(
        verdict="blessed",
        reasons=[],
        champion_version=None,
        metrics=metrics,
        evaluated_at=T0,
        event_id="e1",
    )
    return base.model_copy(update={"evaluation": ev})


def test_holdout_accuracies_are_read_defensively() -> None:
    good = {
        "holdouts": {
            "fresh": {"candidate": {"accuracy": 0.8}},
            "reference": {"candidate": {"accuracy": 1}},
        }
    }
    v = version_with(good)
    assert v.fresh_accuracy == 0.8 and v.reference_accuracy == 1.0
    broken_metrics: list[dict[str, Any]] = [
        {},
        {"holdouts": []},
        {"holdouts": {"fresh": {"candidate": None}}},
        {"holdouts": {"fresh": {"candidate": {"accuracy": "high"}}}},
        {"holdouts": {"fresh": {"candidate": {"accuracy": True}}}},
    ]
    for broken in broken_metrics:
        assert version_with(broken).fresh_accuracy is None
    assert version_with(None).fresh_accuracy is None
    assert version_with(good).reference_accuracy == 1.0


def test_lifecycle_keys() -> None:
    lp = shadow_pair()
    reg, ev = lp.log[0], lp.log[1]
    assert lifecycle_key(reg) == f"{MODEL}/aaa/registered"
    assert lifecycle_key(ev) == f"{MODEL}/aaa/evaluated"
    # A re-published fact lands on the same key; history is keyed by event id.
    assert lifecycle_key(reg.model_copy(update={"event_id": "x" * 32})) == lifecycle_key(reg)
    cmd = command("promote_requested", "bbb", event_id="c" * 32)
    assert lifecycle_key(cmd) == f"{MODEL}/promote_requested/{'c' * 32}"
    alias = lp.answers_to(ev)[0]
    assert lifecycle_key(alias) == f"{MODEL}/alias_set/{alias.event_id}"


def _malformed_count(action: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "streamloop_registry_malformed_events_total", {"action": action}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("action", "details"),
    [
        ("evaluated", {"model_name": MODEL, "model_version": "aaa", "verdict": "splendid"}),
        ("evaluated", {}),
        ("registered", {"model_name": MODEL, "model_version": "aaa"}),
    ],
)
def test_a_malformed_event_is_logged_and_counted_and_kept_in_the_history(
    action: str, details: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    state = RegistryState(clock=lambda: T0)
    event = ModelLifecycle(model_name=MODEL, action=action, model_version="aaa", details=details)
    before = _malformed_count(action)
    with caplog.at_level("WARNING", logger="streamloop.registry"):
        assert state.apply(event, offset=3)
    assert _malformed_count(action) == before + 1
    [record] = [r for r in caplog.records if getattr(r, "event_id", None) == event.event_id]
    assert record.levelname == "WARNING"
    assert record.__dict__["action"] == action and record.__dict__["offset"] == 3
    assert record.__dict__["reason"]  # why pydantic refused it
    # The rest of the log still folds; the event is in the history and nothing else changed.
    assert [h.event_id for h in state.view().history] == [event.event_id]
    assert state.version("aaa") is None
    # Read again (a replay), an event already applied is neither logged nor counted twice.
    assert not state.apply(event, offset=3)
    assert _malformed_count(action) == before + 1
