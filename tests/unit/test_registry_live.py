"""Promotion and rollback on live evidence: the registry's domain and its service layer."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from services.registry.service import RegistryService, move_alert
from services.registry.settings import RegistrySettings
from services.registry.state import LIVE_ACTOR, Probation, RegistryState
from services.serving.core import AliasTracker
from shared.events import (
    Alert,
    Event,
    LiveComparison,
    ModelLifecycle,
    WindowMetrics,
    derived_id,
)
from shared.registry import MemoryRegistry, lifecycle_key
from shared.topics import Topics
from tests.unit.test_registry_state import (
    MODEL,
    T0,
    Loop,
    command,
    evaluated,
    fold,
    trained,
    without_clock,
)

N = 250
"""Shared labelled frames of a comparison that counts under the fixed rule (the default
minimum is 200). Comparisons built here carry no discordant counts unless given some: the
registry applies its fixed rule to those, as to comparisons of an older monitor."""


def comparison(
    champion: str,
    challenger: str,
    champion_correct: int,
    challenger_correct: int,
    labelled: int = N,
    **kw: Any,
) -> LiveComparison:
    base: dict[str, Any] = dict(
        model_name=MODEL,
        champion_version=champion,
        challenger_version=challenger,
        labelled=labelled,
        champion_correct=champion_correct,
        challenger_correct=challenger_correct,
        since=T0,
        until=T0 + timedelta(hours=1),
    )
    base.update(kw)
    return LiveComparison(**base)


def shadow_pair(**kw: Any) -> Loop:
    """aaa champion, bbb (blessed) its challenger."""
    lp = Loop(RegistryState(MODEL, promotion="shadow", **kw))
    lp.train("aaa")
    lp.evaluate("aaa")
    lp.train("bbb")
    lp.evaluate("bbb", champion_version="aaa")
    assert lp.state.view().aliases == {"champion": "aaa", "challenger": "bbb"}
    return lp


def compare(lp: Loop, ev: LiveComparison) -> list[ModelLifecycle]:
    """Publish (and settle) what the comparison calls for; returns the requests raised."""
    return lp.publish(lp.state.on_comparison(ev))


def promoted() -> tuple[Loop, ModelLifecycle]:
    """bbb promoted over aaa on live evidence: bbb champion, aaa on probation."""
    lp = shadow_pair()
    [request] = compare(lp, comparison("aaa", "bbb", 200, 210))
    assert lp.state.probation == Probation("bbb", "aaa")
    return lp, request


# --- promotion ---------------------------------------------------------------------------


def test_a_challenger_as_accurate_as_the_champion_is_promoted_on_live_evidence() -> None:
    lp = shadow_pair()
    ev = comparison("aaa", "bbb", 200, 200)  # a tie promotes
    [request] = lp.state.on_comparison(ev)
    assert request.action == "promote_requested" and request.model_version == "bbb"
    assert request.actor == LIVE_ACTOR == "live-evidence" and request.source == "registry"
    assert request.reason == (
        "live evidence: bbb 0.800 vs champion aaa 0.800 on 250 shared labelled frames"
    )
    assert request.details == {"evidence": ev.model_dump(mode="json")}

    lp.publish([request])
    crown, shadow = lp.answers_to(request)
    assert crown.action == "alias_set" and crown.alias == "champion"
    assert (crown.model_version, crown.previous_version) == ("bbb", "aaa")
    assert crown.actor == LIVE_ACTOR and crown.reason == request.reason
    assert shadow.action == "alias_set" and shadow.alias == "challenger"
    # Crowning bbb cleared the challenger alias; the probation move takes it from there.
    assert (shadow.model_version, shadow.previous_version) == ("aaa", None)
    assert shadow.reason == "previous champion aaa shadowed on probation of bbb"
    assert shadow.details == {"probation_of": "bbb"}
    assert shadow.cause_id == request.event_id
    assert lp.log[-3:] == [request, crown, shadow]

    assert lp.state.view().aliases == {"champion": "bbb", "challenger": "aaa"}
    assert lp.state.champion_stack == ("aaa", "bbb")
    assert lp.state.probation == Probation(champion="bbb", predecessor="aaa")
    assert lp.state.pending_causes() == []
    # The aliases moved: the same evidence about the old pair asks for nothing more.
    assert lp.state.on_comparison(ev) == []


def new_challenger(lp: Loop, version: str, verdict: str) -> None:
    """``version`` registered with ``verdict`` and made the challenger by hand."""
    lp.train(version)
    lp.evaluate(version, verdict)
    lp.publish(
        [
            ModelLifecycle(
                model_name=MODEL, action="alias_set", alias="challenger", model_version=version
            )
        ]
    )


@pytest.mark.parametrize(
    ("ev", "setup"),
    [
        pytest.param(comparison("aaa", "bbb", 150, 199, labelled=199), None, id="too-few-labels"),
        pytest.param(comparison("aaa", "bbb", 200, 199), None, id="challenger-worse"),
        # A corrupted label feed: both models "wrong" on nearly every frame; a tie or a win
        # at 10 % proves nothing.
        pytest.param(comparison("aaa", "bbb", 15, 20), None, id="labels-nobody-agrees-with"),
        pytest.param(comparison("zzz", "bbb", 200, 220), None, id="not-the-champion"),
        pytest.param(comparison("aaa", "ccc", 200, 220), None, id="not-the-challenger"),
        pytest.param(comparison("bbb", "aaa", 200, 220), None, id="pair-reversed"),
        pytest.param(
            comparison("aaa", "bbb", 200, 220, model_name="other"), None, id="other-model"
        ),
        pytest.param(comparison("aaa", "ccc", 200, 220), "rejected", id="challenger-rejected"),
        pytest.param(
            comparison("aaa", "ccc", 200, 220), "unevaluated", id="challenger-unevaluated"
        ),
    ],
)
def test_no_promotion_without_sufficient_live_evidence(
    ev: LiveComparison, setup: str | None
) -> None:
    lp = shadow_pair()
    if setup == "rejected":
        new_challenger(lp, "ccc", "rejected")
    elif setup == "unevaluated":
        lp.train("ccc")
        lp.publish(
            [
                ModelLifecycle(
                    model_name=MODEL, action="alias_set", alias="challenger", model_version="ccc"
                )
            ]
        )
    before = lp.state.view().aliases
    assert lp.state.on_comparison(ev) == []
    assert lp.state.view().aliases == before


def test_live_promotion_off_ignores_comparisons() -> None:
    lp = shadow_pair(live_promotion=False)
    assert lp.state.on_comparison(comparison("aaa", "bbb", 100, 240)) == []


def test_the_minimum_of_labels_is_a_policy() -> None:
    lp = shadow_pair(live_min_labels=50)
    [request] = lp.state.on_comparison(comparison("aaa", "bbb", 40, 45, labelled=50))
    assert request.action == "promote_requested"
    with pytest.raises(ValueError, match="live_min_labels"):
        RegistryState(MODEL, live_min_labels=0)
    with pytest.raises(ValueError, match="rollback_margin"):
        RegistryState(MODEL, rollback_margin=1.5)


def test_no_second_request_while_a_live_request_is_owed_an_answer() -> None:
    state = RegistryState(MODEL)
    lp = shadow_pair()
    for offset, event in enumerate(lp.log):
        state.apply(event, offset)
    ev = comparison("aaa", "bbb", 200, 210)
    [request] = state.on_comparison(ev)
    # Applied, not answered yet: the aliases have not moved, but a second request would be
    # a duplicate.
    state.apply(request)
    assert state.on_comparison(ev) == []
    assert state.on_comparison(comparison("aaa", "bbb", 210, 230, labelled=260)) == []
    assert state.pending_causes() == [request]
    crown, shadow = state.decide(request)
    state.apply(crown)
    # Between the two answers, nothing either.
    assert state.on_comparison(comparison("bbb", "aaa", 100, 200)) == []
    state.apply(shadow)
    assert state.pending_causes() == []
    assert state.on_comparison(ev) == []


def test_a_live_promotion_is_refused_when_the_champion_changed_meanwhile() -> None:
    lp = shadow_pair()
    lp.train("ccc")
    lp.evaluate("ccc", "rejected")
    state = fold(lp.log)
    [request] = state.on_comparison(comparison("aaa", "bbb", 200, 210))
    state.apply(request)
    # An operator crowned ccc before the request was answered.
    state.apply(command("alias_set", "ccc", alias="champion"))
    [answer] = state.decide(request)
    assert answer.action == "command_rejected" and answer.actor == LIVE_ACTOR
    assert "champion changed since the live evidence (now ccc)" in answer.reason


# --- probation ---------------------------------------------------------------------------


def test_probation_rolls_back_when_the_predecessor_beats_the_new_champion() -> None:
    lp, _ = promoted()
    ev = comparison("bbb", "aaa", 200, 206)  # 0.824 against 0.800: beyond the 0.02 margin
    [request] = lp.state.on_comparison(ev)
    assert request.action == "rollback_requested" and request.model_version == "bbb"
    assert request.actor == LIVE_ACTOR
    assert request.reason == (
        "live evidence: champion bbb 0.800 below predecessor aaa 0.824 on 250 shared "
        "labelled frames"
    )
    assert request.details == {"evidence": ev.model_dump(mode="json")}

    lp.publish([request])
    [answer] = lp.answers_to(request)
    assert answer.action == "rolled_back" and answer.alias == "champion"
    assert (answer.model_version, answer.previous_version) == ("aaa", "bbb")
    assert answer.actor == LIVE_ACTOR and answer.reason == request.reason
    view = lp.state.view()
    assert view.aliases == {"champion": "aaa"}  # the predecessor was the challenger: cleared
    assert lp.state.champion_stack == ("aaa",)
    assert lp.state.probation is None
    bbb = view.version("bbb")
    assert bbb is not None and bbb.rolled_back and bbb.aliases == []
    assert lp.state.pending_causes() == []
    assert lp.state.on_comparison(ev) == []


def test_probation_passes_within_the_margin_and_never_flips_back() -> None:
    lp, _ = promoted()
    # aaa is ahead (0.816 against 0.800), but within the margin: on probation that is no
    # reason to promote it back; the probation passes.
    ev = comparison("bbb", "aaa", 200, 204)
    [request] = lp.state.on_comparison(ev)
    assert request.action == "probation_passed" and request.model_version == "bbb"
    assert request.previous_version == "aaa" and request.actor == LIVE_ACTOR
    assert request.details == {"evidence": ev.model_dump(mode="json")}
    assert request.reason.startswith("live evidence: champion bbb 0.800 holds against")

    lp.publish([request])
    [answer] = lp.answers_to(request)
    assert answer.action == "alias_set" and answer.alias == "challenger"
    assert answer.model_version is None and answer.previous_version == "aaa"
    assert answer.reason == f"probation passed: {request.reason}"
    assert lp.state.view().aliases == {"champion": "bbb"}
    assert lp.state.champion_stack == ("aaa", "bbb")
    assert lp.state.probation is None
    assert lp.state.pending_causes() == []
    assert lp.state.on_comparison(ev) == []


def test_on_probation_too_few_labels_decide_nothing() -> None:
    lp, _ = promoted()
    assert lp.state.on_comparison(comparison("bbb", "aaa", 100, 199, labelled=199)) == []
    assert lp.state.probation == Probation("bbb", "aaa")


def test_the_rollback_margin_is_a_policy() -> None:
    lp = shadow_pair(rollback_margin=0.0)
    compare(lp, comparison("aaa", "bbb", 200, 210))
    [request] = lp.state.on_comparison(comparison("bbb", "aaa", 200, 201))
    assert request.action == "rollback_requested"


def test_probation_ends_when_an_alias_moves_otherwise() -> None:
    lp, _ = promoted()
    lp.train("ccc")
    lp.evaluate("ccc", champion_version="bbb")  # blessed: shadows bbb instead of aaa
    assert lp.state.view().aliases == {"champion": "bbb", "challenger": "ccc"}
    assert lp.state.probation is None
    assert lp.state.on_comparison(comparison("bbb", "aaa", 100, 240)) == []
    # The new pair is an ordinary one again.
    [request] = lp.state.on_comparison(comparison("bbb", "ccc", 200, 200))
    assert request.action == "promote_requested" and request.model_version == "ccc"


def test_a_passed_probation_lapses_when_the_probation_ended_before_its_answer() -> None:
    lp, _ = promoted()
    state = fold(lp.log)
    [request] = state.on_comparison(comparison("bbb", "aaa", 200, 200))
    state.apply(request)
    state.apply(ModelLifecycle(model_name=MODEL, action="alias_set", alias="challenger"))
    assert state.probation is None
    assert state.decide(request) == []
    assert state.pending_causes() == []


def test_a_rollback_naming_a_version_no_longer_champion_is_refused() -> None:
    lp, _ = promoted()
    state = fold(lp.log)
    [request] = state.on_comparison(comparison("bbb", "aaa", 200, 240))
    state.apply(request)
    state.apply(command("rollback_requested"))  # an operator got there first
    [operator_answer] = state.decide(state.pending_causes()[1])
    state.apply(operator_answer)
    assert state.view().aliases == {"champion": "aaa"}
    [answer] = state.decide(request)
    assert answer.action == "command_rejected"
    assert answer.reason == "bbb is no longer the champion (now aaa)"


# --- replay ------------------------------------------------------------------------------


def test_replaying_live_decisions_gives_the_same_view() -> None:
    lp, _ = promoted()
    compare(lp, comparison("bbb", "aaa", 200, 240))  # rolled back to aaa
    lp.train("ccc")
    lp.evaluate("ccc", champion_version="aaa")
    compare(lp, comparison("aaa", "ccc", 200, 230))  # ccc promoted, aaa on probation
    compare(lp, comparison("ccc", "aaa", 230, 200))  # probation passed
    assert lp.state.view().aliases == {"champion": "ccc"}
    assert lp.state.champion_stack == ("aaa", "ccc")

    replayed = fold(lp.log)
    assert without_clock(replayed) == without_clock(lp.state)
    assert replayed.champion_stack == lp.state.champion_stack
    assert replayed.probation is None and replayed.pending_causes() == []
    # Mid-probation too.
    cut = next(i for i, e in enumerate(lp.log) if e.action == "probation_passed")
    partial = fold(lp.log[:cut])
    assert partial.probation == Probation("ccc", "aaa")
    assert partial.pending_causes() == []


@pytest.mark.parametrize(
    ("ev", "action"),
    [
        (comparison("bbb", "aaa", 200, 240), "rollback_requested"),
        (comparison("bbb", "aaa", 200, 200), "probation_passed"),
    ],
)
def test_a_live_request_applied_but_unanswered_is_answered_once_after_a_crash(
    ev: LiveComparison, action: str
) -> None:
    lp, _ = promoted()
    [request] = compare(lp, ev)
    assert request.action == action
    crashed = lp.log[: lp.log.index(request) + 1]
    after = Loop(fold(crashed))
    after.log = list(crashed)
    assert after.state.pending_causes() == [request]
    assert after.state.on_comparison(ev) == []  # owed an answer: no duplicate request
    after.publish([])
    answers = after.answers_to(request)
    assert [a.action for a in answers] == [a.action for a in lp.answers_to(request)]
    assert len(answers) == 1
    assert after.state.pending_causes() == []
    assert without_clock(fold(after.log)) == without_clock(after.state)
    assert after.state.view().aliases == lp.state.view().aliases


def test_a_live_promotion_unanswered_before_a_crash_is_answered_once() -> None:
    lp, request = promoted()
    crashed = lp.log[: lp.log.index(request) + 1]
    after = Loop(fold(crashed))
    after.log = list(crashed)
    assert after.state.pending_causes() == [request]
    after.publish([])
    crown, shadow = after.answers_to(request)
    assert (crown.alias, crown.model_version, shadow.alias, shadow.model_version) == (
        "champion",
        "bbb",
        "challenger",
        "aaa",
    )
    assert after.state.probation == Probation("bbb", "aaa")
    assert after.state.pending_causes() == []
    after.publish([])
    assert len(after.answers_to(request)) == 2


def test_a_crash_between_the_two_answers_of_a_live_promotion_owes_the_probation_move() -> None:
    lp, request = promoted()
    crown, shadow = lp.answers_to(request)
    crashed = lp.log[: lp.log.index(crown) + 1]
    state = fold(crashed)
    assert state.view().aliases == {"champion": "bbb"} and state.probation is None
    assert state.pending_causes() == [request]
    [again] = state.decide(request)
    # The same move, under the same id: a copy that did get out is recognised.
    assert again == shadow.model_copy(update={"produced_at": again.produced_at})
    assert state.apply(again)
    assert not state.apply(shadow)
    assert state.probation == Probation("bbb", "aaa")
    assert state.pending_causes() == []


# --- the service -------------------------------------------------------------------------


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Event, str | None]] = []
        self.flushes = 0

    def publish(self, topic: str, event: Event, *, key: str | None = None) -> object:
        self.sent.append((topic, event, key))
        return None

    def flush(self, timeout_s: float | None = None) -> None:
        self.flushes += 1

    def lifecycle(self) -> list[ModelLifecycle]:
        return [
            e
            for t, e, _ in self.sent
            if t == Topics.MODELS_LIFECYCLE and isinstance(e, ModelLifecycle)
        ]

    def alerts(self) -> list[Alert]:
        return [e for t, e, _ in self.sent if t == Topics.ALERTS and isinstance(e, Alert)]


def service(**kw: Any) -> tuple[RegistryService, FakePublisher, MemoryRegistry]:
    pub, store = FakePublisher(), MemoryRegistry()
    svc = RegistryService(MODEL, promotion="shadow", publisher=pub, read_model=store, **kw)
    svc.replay([])
    return svc, pub, store


def service_pair(**kw: Any) -> tuple[RegistryService, FakePublisher, MemoryRegistry]:
    svc, pub, store = service(**kw)
    svc.handle(trained("aaa"))
    svc.handle(evaluated("aaa"))
    svc.handle(trained("bbb"))
    svc.handle(evaluated("bbb", champion_version="aaa"))
    assert store.aliases(MODEL) == {"champion": "aaa", "challenger": "bbb"}
    return svc, pub, store


def moves_and_alerts(pub: FakePublisher, since: int = 0) -> list[tuple[str, str]]:
    """(event_type, action or kind) of what was published after the first ``since``."""
    out: list[tuple[str, str]] = []
    for _, e, _ in pub.sent[since:]:
        if isinstance(e, ModelLifecycle):
            out.append(("lifecycle", e.action))
        elif isinstance(e, Alert):
            out.append(("alert", e.kind))
    return out


def test_every_move_the_service_decides_is_announced() -> None:
    svc, pub, store = service_pair()
    assert [a.kind for a in pub.alerts()] == ["model_promoted", "challenger_set"]
    since = len(pub.sent)

    svc.handle(comparison("aaa", "bbb", 200, 210))
    assert moves_and_alerts(pub, since) == [
        ("lifecycle", "promote_requested"),
        ("lifecycle", "alias_set"),
        ("alert", "model_promoted"),
        ("lifecycle", "alias_set"),
        ("alert", "challenger_set"),
    ]
    assert store.aliases(MODEL) == {"champion": "bbb", "challenger": "aaa"}
    request, crown, shadow = pub.lifecycle()[-3:]
    promoted_alert, shadow_alert = pub.alerts()[-2:]
    assert promoted_alert.event_id == derived_id("alert", crown.event_id)
    assert promoted_alert.severity == "info" and promoted_alert.source == "registry"
    assert promoted_alert.model_version == "bbb"
    assert promoted_alert.details == {
        "previous_version": "aaa",
        "cause_id": request.event_id,
        "lifecycle_event_id": crown.event_id,
    }
    assert promoted_alert.message == (
        f"{MODEL}: bbb promoted to champion (was aaa): {request.reason}"
    )
    assert shadow_alert.event_id == derived_id("alert", shadow.event_id)
    assert "aaa set as challenger" in shadow_alert.message
    assert "on probation of bbb" in shadow_alert.message
    # Every lifecycle event was published with its key; alerts go unkeyed.
    for topic, event, key in pub.sent:
        if topic == Topics.MODELS_LIFECYCLE:
            assert isinstance(event, ModelLifecycle) and key == lifecycle_key(event)
        else:
            assert topic == Topics.ALERTS and key is None

    since = len(pub.sent)
    svc.handle(comparison("bbb", "aaa", 200, 240))
    assert moves_and_alerts(pub, since) == [
        ("lifecycle", "rollback_requested"),
        ("lifecycle", "rolled_back"),
        ("alert", "model_rolled_back"),
    ]
    rolled = pub.alerts()[-1]
    assert rolled.severity == "warning" and rolled.model_version == "aaa"
    assert rolled.details["previous_version"] == "bbb"
    assert store.aliases(MODEL) == {"champion": "aaa"}


def test_a_passed_probation_is_announced_as_a_cleared_challenger() -> None:
    svc, pub, store = service_pair()
    svc.handle(comparison("aaa", "bbb", 200, 210))
    since = len(pub.sent)
    svc.handle(comparison("bbb", "aaa", 200, 200))
    assert moves_and_alerts(pub, since) == [
        ("lifecycle", "probation_passed"),
        ("lifecycle", "alias_set"),
        ("alert", "challenger_cleared"),
    ]
    cleared = pub.alerts()[-1]
    assert cleared.severity == "info" and cleared.model_version is None
    assert cleared.details["previous_version"] == "aaa"
    assert store.aliases(MODEL) == {"champion": "bbb"}
    assert [h.action for h in store.view(MODEL).history][-2:] == ["probation_passed", "alias_set"]


def test_comparisons_echoed_back_and_window_metrics_are_handled_quietly() -> None:
    svc, pub, store = service_pair()
    since = len(pub.sent)
    window = WindowMetrics(
        model_name=MODEL,
        model_version="aaa",
        window_id="w1",
        window_kind="count",
        window_start=T0,
        window_end=T0 + timedelta(minutes=5),
        sample_count=500,
        labelled_count=300,
        label_coverage=0.6,
        accuracy=0.5,
    )
    svc.handle(window)
    assert pub.sent[since:] == []
    ev = comparison("aaa", "bbb", 200, 210)
    svc.handle(ev)
    # Its own events coming back on models.lifecycle change nothing and publish nothing.
    published = pub.lifecycle()
    since = len(pub.sent)
    for offset, event in enumerate(published):
        svc.handle(event, offset)
    svc.handle(ev)
    assert pub.sent[since:] == []
    assert store.view(MODEL).offset == len(published) - 1


def test_the_service_forwards_the_live_policy() -> None:
    svc, pub, _ = service_pair(live_promotion=False)
    since = len(pub.sent)
    svc.handle(comparison("aaa", "bbb", 200, 240))
    assert pub.sent[since:] == []
    svc, pub, _ = service_pair(live_min_labels=300, rollback_margin=0.1)
    assert (svc.state.live_min_labels, svc.state.rollback_margin) == (300, 0.1)
    since = len(pub.sent)
    svc.handle(comparison("aaa", "bbb", 200, 240))
    assert pub.sent[since:] == []


def test_replay_announces_only_the_answers_it_decides_now() -> None:
    svc, pub, _ = service_pair()
    svc.handle(comparison("aaa", "bbb", 200, 210))
    log = pub.lifecycle()
    request = next(e for e in log if e.action == "promote_requested")
    crown, shadow = (e for e in log if e.cause_id == request.event_id)

    # Died after publishing the champion move, before the probation move.
    crashed = log[: log.index(crown) + 1]
    pub2, store2 = FakePublisher(), MemoryRegistry()
    svc2 = RegistryService(MODEL, promotion="shadow", publisher=pub2, read_model=store2)
    assert svc2.replay((e, i) for i, e in enumerate(crashed)) == len(crashed)
    # No alert for the moves already in the log; one answer and its alert for what was owed.
    assert moves_and_alerts(pub2) == [("lifecycle", "alias_set"), ("alert", "challenger_set")]
    [again] = pub2.lifecycle()
    [alert] = pub2.alerts()
    assert again.event_id == shadow.event_id
    assert alert.event_id == derived_id("alert", shadow.event_id) == pub.alerts()[-1].event_id
    assert store2.aliases(MODEL) == {"champion": "bbb", "challenger": "aaa"}

    # A replay of the whole log owes nothing and announces nothing.
    pub3 = FakePublisher()
    svc3 = RegistryService(MODEL, promotion="shadow", publisher=pub3, read_model=MemoryRegistry())
    svc3.replay((e, i) for i, e in enumerate(log))
    assert pub3.sent == []


def test_only_moves_make_alerts() -> None:
    for action in ("registered", "evaluated", "promote_requested", "probation_passed"):
        assert move_alert(ModelLifecycle(model_name=MODEL, action=action)) is None


# --- settings and serving ----------------------------------------------------------------


def test_registry_settings_of_the_live_policy() -> None:
    s = RegistrySettings()
    assert (s.live_promotion, s.live_min_labels, s.rollback_margin) == (True, 200, 0.02)
    assert (s.promotion_test, s.false_promotion_rate) == ("sequential", 0.01)
    with pytest.raises(ValidationError):
        RegistrySettings(live_min_labels=0)
    with pytest.raises(ValidationError):
        RegistrySettings(rollback_margin=1.5)
    for alpha in (0.0, 0.6):
        with pytest.raises(ValidationError):
            RegistrySettings(false_promotion_rate=alpha)
    with pytest.raises(ValidationError):
        RegistrySettings(promotion_test="bayesian")


def test_serving_drops_the_challenger_restored_by_a_rollback() -> None:
    svc, pub, _ = service_pair()
    svc.handle(comparison("aaa", "bbb", 200, 210))
    svc.handle(comparison("bbb", "aaa", 200, 240))
    tracker = AliasTracker(MODEL)
    for event in pub.lifecycle():
        tracker.apply(event)
    assert tracker.champion is not None and tracker.champion.version == "aaa"
    assert tracker.challenger is None


def test_a_read_model_write_that_fails_is_written_by_the_retry() -> None:
    from shared.registry import RegistryUnavailableError

    class Flaky(MemoryRegistry):
        down = True

        def apply_changes(self, *args: Any, **kw: Any) -> None:
            if self.down:
                raise RegistryUnavailableError("Error 111 connecting to redis")
            super().apply_changes(*args, **kw)

    pub, store = FakePublisher(), Flaky()
    svc = RegistryService(MODEL, promotion="shadow", publisher=pub, read_model=store)
    svc.replay([])
    event = trained("aaa")
    with pytest.raises(RegistryUnavailableError):
        svc.handle(event)
    store.down = False
    svc.handle(event)  # the bus retries the same record
    assert [v.version for v in store.versions(MODEL)] == ["aaa"]
    assert [e.action for e in pub.lifecycle()] == ["registered"]  # published once


# --- the sequential rule -----------------------------------------------------------------


def split(
    champion: str,
    challenger: str,
    champion_only: int,
    challenger_only: int,
    labelled: int,
    agree_right: int | None = None,
) -> LiveComparison:
    """A comparison with discordant counts: on ``labelled`` frames, ``champion_only`` and
    ``challenger_only`` were got right by one version alone, and ``agree_right`` (by default
    the rest) by both."""
    both = labelled - champion_only - challenger_only if agree_right is None else agree_right
    return comparison(
        champion,
        challenger,
        both + champion_only,
        both + challenger_only,
        labelled=labelled,
        champion_only=champion_only,
        challenger_only=challenger_only,
    )


def test_decisive_evidence_promotes_long_before_200_labels() -> None:
    lp = shadow_pair()
    # 12 labels: bbb alone right on 10, both wrong on 2 (the champion's night).
    ev = split("aaa", "bbb", 0, 10, labelled=12, agree_right=0)
    [request] = lp.state.on_comparison(ev)
    assert request.action == "promote_requested" and request.model_version == "bbb"
    assert request.reason == (
        "live evidence: bbb 0.833 vs champion aaa 0.000 on 12 shared labelled frames; "
        "bbb alone right on 10 and aaa alone right on 0 of 10 discordant frames: "
        "likelihood ratio 186 >= 100 (1/alpha, alpha 0.01)"
    )
    assert request.details == {"evidence": ev.model_dump(mode="json")}
    lp.publish([request])
    assert lp.state.view().aliases == {"champion": "bbb", "challenger": "aaa"}
    assert lp.state.probation == Probation("bbb", "aaa")


@pytest.mark.parametrize(
    "ev",
    [
        # Eight wins in a row: a ratio of 57, short of 100.
        pytest.param(split("aaa", "bbb", 0, 8, labelled=9), id="not-yet-decisive"),
        # A tie promotes under the fixed rule; here it never does, however many labels.
        pytest.param(split("aaa", "bbb", 40, 40, labelled=400), id="tie"),
        pytest.param(split("aaa", "bbb", 400, 400, labelled=40_000), id="tie-on-40000"),
        # Ahead, but by noise: 30 against 20 is a ratio of 1.4.
        pytest.param(split("aaa", "bbb", 20, 30, labelled=N), id="ahead-by-noise"),
        pytest.param(split("aaa", "bbb", 10, 0, labelled=20), id="champion-better"),
        # Decisive, but 0.4 accurate itself: labels nobody agrees with prove nothing.
        pytest.param(split("aaa", "bbb", 0, 40, labelled=100, agree_right=0), id="low-accuracy"),
        pytest.param(split("aaa", "bbb", 0, 0, labelled=0), id="nothing-compared"),
    ],
)
def test_no_sequential_promotion_without_decisive_evidence(ev: LiveComparison) -> None:
    lp = shadow_pair()
    assert lp.state.on_comparison(ev) == []


def test_the_false_promotion_rate_is_a_policy() -> None:
    ev = split("aaa", "bbb", 0, 7, labelled=7)  # a ratio of 31.9
    assert shadow_pair().state.on_comparison(ev) == []
    [request] = shadow_pair(false_promotion_rate=0.05).state.on_comparison(ev)
    assert "32 >= 20 (1/alpha, alpha 0.05)" in request.reason
    for alpha in (0.0, 0.6):
        with pytest.raises(ValueError, match="false_promotion_rate"):
            RegistryState(MODEL, false_promotion_rate=alpha)
    with pytest.raises(ValueError, match="promotion_test"):
        RegistryState(MODEL, promotion_test="bayesian")  # type: ignore[arg-type]


def test_the_fixed_rule_ignores_discordant_counts() -> None:
    # Decisive for the sequential test, but 12 labels: the fixed rule waits for 200.
    lp = shadow_pair(promotion_test="fixed")
    assert lp.state.on_comparison(split("aaa", "bbb", 0, 10, labelled=12)) == []
    # A tie on 250 labels: the fixed rule promotes, with its own reason.
    [request] = lp.state.on_comparison(split("aaa", "bbb", 40, 40, labelled=N))
    assert request.reason == (
        "live evidence: bbb 0.840 vs champion aaa 0.840 on 250 shared labelled frames"
    )


def test_a_comparison_without_discordant_counts_falls_back_to_the_fixed_rule() -> None:
    lp = shadow_pair()
    assert lp.state.promotion_test == "sequential"
    old = comparison("aaa", "bbb", 200, 200)  # an older monitor's tie
    assert old.champion_only is None and old.challenger_only is None
    [request] = lp.state.on_comparison(old)
    assert request.reason == (
        "live evidence: bbb 0.800 vs champion aaa 0.800 on 250 shared labelled frames"
    )
    assert lp.state.on_comparison(comparison("aaa", "bbb", 2, 12, labelled=12)) == []
    # The same tie with its discordant counts: no promotion.
    assert lp.state.on_comparison(split("aaa", "bbb", 30, 30, labelled=N)) == []


def promoted_sequentially() -> Loop:
    """bbb promoted over aaa on decisive evidence: bbb champion, aaa on probation."""
    lp = shadow_pair()
    [_] = compare(lp, split("aaa", "bbb", 0, 12, labelled=15))
    assert lp.state.probation == Probation("bbb", "aaa")
    return lp


def test_probation_rolls_back_as_soon_as_the_predecessor_is_decisively_better() -> None:
    lp = promoted_sequentially()
    # Predecessor aaa alone right on 11 of 12 discordant frames: not yet (a ratio of 52).
    assert lp.state.on_comparison(split("bbb", "aaa", 1, 11, labelled=28)) == []
    # 13 of 14, among 30 labels: decisive.
    ev = split("bbb", "aaa", 1, 13, labelled=30)
    [request] = lp.state.on_comparison(ev)
    assert request.action == "rollback_requested" and request.model_version == "bbb"
    assert request.reason == (
        "live evidence: champion bbb 0.567 below predecessor aaa 0.967 on 30 shared "
        "labelled frames; aaa alone right on 13 and bbb alone right on 1 of 14 discordant "
        "frames: likelihood ratio 156 >= 100 (1/alpha, alpha 0.01)"
    )
    assert request.details == {"evidence": ev.model_dump(mode="json")}
    lp.publish([request])
    assert lp.state.view().aliases == {"champion": "aaa"}
    assert lp.state.champion_stack == ("aaa",) and lp.state.probation is None


def test_probation_passes_as_soon_as_the_new_champion_is_decisively_better() -> None:
    lp = promoted_sequentially()
    ev = split("bbb", "aaa", 10, 0, labelled=14)
    [request] = lp.state.on_comparison(ev)
    assert request.action == "probation_passed" and request.previous_version == "aaa"
    assert request.reason == (
        "live evidence: champion bbb 1.000 holds against predecessor aaa 0.286 on 14 shared "
        "labelled frames; bbb alone right on 10 and aaa alone right on 0 of 10 discordant "
        "frames: likelihood ratio 186 >= 100 (1/alpha, alpha 0.01)"
    )
    lp.publish([request])
    assert lp.state.view().aliases == {"champion": "bbb"} and lp.state.probation is None


def test_probation_passes_after_live_min_labels_without_evidence_against_it() -> None:
    lp = promoted_sequentially()
    # The predecessor is a little ahead (25 against 20): no evidence either way yet.
    assert lp.state.on_comparison(split("bbb", "aaa", 20, 25, labelled=199)) == []
    assert lp.state.probation == Probation("bbb", "aaa")
    [request] = lp.state.on_comparison(split("bbb", "aaa", 20, 25, labelled=200))
    assert request.action == "probation_passed"
    assert request.reason.startswith(
        "live evidence: champion bbb 0.875 holds against predecessor aaa 0.900 on 200 shared "
        "labelled frames, no evidence against it within 200; aaa alone right on 25 and bbb "
        "alone right on 20 of 45 discordant frames: likelihood ratio "
    )
    assert request.reason.endswith("< 100 (1/alpha, alpha 0.01)")
    lp.publish([request])
    assert lp.state.view().aliases == {"champion": "bbb"}


def test_the_monitor_and_the_registry_promote_a_clear_winner_within_a_few_dozen_labels() -> None:
    """The monitor's comparisons, as published, fed to the registry: a challenger right 95 %
    of the time against a champion right 20 % is promoted on the first comparison whose
    evidence is decisive, long before the 200 labels of the fixed rule."""
    import random

    from services.monitoring.monitor import Monitor, MonitorPolicy

    labels_to_promote = []
    for seed in range(50):
        rng = random.Random(seed)
        lp = shadow_pair()
        monitor = Monitor(MODEL, ("car", "truck"), MonitorPolicy())
        for n in range(1, 201):
            out = monitor.on_pair(
                "aaa",
                "bbb",
                champion_correct=rng.random() < 0.20,
                challenger_correct=rng.random() < 0.95,
                at=T0,
            )
            requests = [r for ev in out.comparisons for r in compare(lp, ev)]
            if requests:
                assert [r.action for r in requests] == ["promote_requested"]
                labels_to_promote.append(n)
                break
        assert lp.state.view().aliases == {"champion": "bbb", "challenger": "aaa"}
    labels_to_promote.sort()
    assert labels_to_promote[len(labels_to_promote) // 2] <= 15
    assert labels_to_promote[-1] <= 40


def test_the_service_forwards_the_promotion_test() -> None:
    svc, pub, store = service_pair(promotion_test="fixed", false_promotion_rate=0.05)
    assert (svc.state.promotion_test, svc.state.false_promotion_rate) == ("fixed", 0.05)
    svc, pub, store = service_pair()
    svc.handle(split("aaa", "bbb", 0, 10, labelled=12))
    assert store.aliases(MODEL) == {"champion": "bbb", "challenger": "aaa"}
    promoted_alert = pub.alerts()[-2]
    assert promoted_alert.kind == "model_promoted"
    assert "likelihood ratio 186 >= 100" in promoted_alert.message
