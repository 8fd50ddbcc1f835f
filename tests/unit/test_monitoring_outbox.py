"""The monitor's outbox: what a fold produced, kept across a kill and published once."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

import services.monitoring.app as monitoring_app
from services.monitoring.app import MonitorApp
from services.monitoring.monitor import Outputs
from services.monitoring.outbox import EMPTY, SLACK, Outbox
from services.monitoring.settings import MonitoringSettings
from shared.events import (
    Alert,
    LabelRequest,
    LiveComparison,
    RetrainRequest,
    WindowMetrics,
)
from shared.topics import Topics

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)


def window(n: int) -> WindowMetrics:
    return WindowMetrics(
        model_name="m",
        model_version="v1",
        window_id=f"v1:live:{n}",
        window_kind="count",
        window_start=T0,
        window_end=T0,
        sample_count=100,
        labelled_count=50,
        label_coverage=0.5,
        accuracy=0.9,
    )


def outputs() -> Outputs:
    return Outputs(
        windows=[window(1), window(2)],
        retrains=[
            RetrainRequest(model_name="m", idempotency_key="k", reason="drop", trigger="monitor")
        ],
        alerts=[Alert(severity="warning", kind="accuracy_drop", message="down")],
        label_requests=[LabelRequest(frame_id="f1", camera_id="c1", reason="uncertain")],
        comparisons=[
            LiveComparison(
                model_name="m", champion_version="v1", challenger_version="v2", labelled=10,
                champion_correct=8, challenger_correct=9, since=T0, until=T0,
            )
        ],
    )  # fmt: skip


class Topic:
    """Output topics holding some event ids (the port's fake), and what it was asked."""

    def __init__(self, ids: set[str]) -> None:
        self.ids = ids
        self.asked: list[tuple[list[str], datetime]] = []

    def __call__(self, topics: Sequence[str], since: datetime) -> set[str]:
        self.asked.append((list(topics), since))
        return self.ids


def test_only_label_requests_make_no_outbox() -> None:
    assert Outbox.of(Outputs(), T0) is None
    requests = Outputs(label_requests=outputs().label_requests)
    assert requests and Outbox.of(requests, T0) is None


def test_an_outbox_survives_its_document_event_for_event() -> None:
    out = outputs()
    box = Outbox.of(out, T0)
    assert box is not None
    doc = json.loads(json.dumps(box.dump()))  # as the state table stores it
    again = Outbox.load(doc)
    assert again == box
    assert [type(e).__name__ for e in again.events] == [
        "WindowMetrics", "WindowMetrics", "LiveComparison", "RetrainRequest", "Alert",
    ]  # fmt: skip
    assert again.topics == sorted([Topics.METRICS, Topics.RETRAIN_REQUESTS, Topics.ALERTS])
    assert Outbox.load(EMPTY) is None


def test_what_the_topics_already_hold_is_not_published_again() -> None:
    out = outputs()
    box = Outbox.load(json.loads(json.dumps(Outbox.of(out, T0).dump())))  # type: ignore[union-attr]
    assert box is not None
    # The kill came after the first window and the retrain request reached the broker.
    topics = Topic({out.windows[0].event_id, out.retrains[0].event_id, "someone-else"})
    missing = box.unpublished(topics)
    assert [w.window_id for w in missing.windows] == ["v1:live:2"]
    assert missing.windows[0].event_id == out.windows[1].event_id  # the same event, not a new one
    assert missing.retrains == []
    assert [a.event_id for a in missing.alerts] == [out.alerts[0].event_id]
    assert [c.event_id for c in missing.comparisons] == [out.comparisons[0].event_id]
    assert missing.label_requests == []
    # The topics are read from a little before the fold, for producers' clocks behind ours.
    assert topics.asked == [(box.topics, T0 - SLACK)]


def test_an_outbox_wholly_published_leaves_nothing_to_publish() -> None:
    out = outputs()
    box = Outbox.of(out, T0)
    assert box is not None
    assert not box.unpublished(Topic({e.event_id for e in box.events}))
    assert box.unpublished(Topic(set()))  # and everything when the topics hold none of it


def test_an_outbox_flush_that_never_ends_is_given_up_and_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    flushes: list[str] = []

    async def hangs() -> None:
        flushes.append("started")
        await asyncio.sleep(3600)
        flushes.append("ended")

    monkeypatch.setattr(monitoring_app, "OUTBOX_FLUSH_S", 0.2)
    app = MonitorApp(MonitoringSettings(), published=lambda topics, since: set())
    app.app.producer = SimpleNamespace(flush=hangs)  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger=monitoring_app.log.name):
        asyncio.run(asyncio.wait_for(app._flush_outbox(), 5))
    assert flushes == ["started"]
    assert "did not reach the broker in time" in caplog.text
