"""What a publish records: a PRODUCER span in a kept trace or a new one, none in a trace
that is not kept (its record carries the parent's context on)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kafka.future import Future
from opentelemetry import trace as api

from shared.bus import EventProducer
from shared.events import Alert
from shared.settings import KafkaSettings, TelemetrySettings
from shared.telemetry import Telemetry, extract_context, setup_telemetry


class Sent:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def send(self, topic: str, **kw: Any) -> Future:
        self.records.append({"topic": topic, **kw})
        return Future()


def producer(tel: Telemetry, monkeypatch: pytest.MonkeyPatch) -> tuple[EventProducer, Sent]:
    sent = Sent()
    monkeypatch.setattr(EventProducer, "_open", lambda self: sent)
    return EventProducer(KafkaSettings(), tracer=tel.tracer), sent


@pytest.fixture
def tel() -> Iterator[Telemetry]:
    """Every trace kept but a frame's, recorded in memory."""
    made = setup_telemetry(
        "publish-test",
        TelemetrySettings(exporter="memory", sample_ratio=1.0, frames_sample_ratio=0.0),
        set_global=False,
    )
    yield made
    made.shutdown()


def carried(sent: Sent) -> api.SpanContext:
    return api.get_current_span(extract_context(sent.records[-1]["headers"])).get_span_context()


def alert() -> Alert:
    return Alert(kind="test", severity="info", message="m")


def test_under_a_trace_that_is_not_kept_no_span_is_made_and_the_parent_is_carried_on(
    tel: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    events, sent = producer(tel, monkeypatch)
    frame = tel.tracer.start_span(
        "frames.raw process", attributes={"messaging.destination.name": "frames.raw"}
    )
    assert not frame.get_span_context().trace_flags.sampled
    made: list[str] = []
    start_span = tel.tracer.start_span
    monkeypatch.setattr(
        tel.tracer, "start_span", lambda name, **kw: made.append(name) or start_span(name, **kw)
    )
    events.publish("predictions", alert(), context=api.set_span_in_context(frame))
    assert made == []
    got = carried(sent)
    assert (got.trace_id, got.span_id) == (
        frame.get_span_context().trace_id,
        frame.get_span_context().span_id,
    )
    assert not got.trace_flags.sampled
    assert tel.memory is not None and tel.memory.get_finished_spans() == ()


def test_under_a_kept_trace_the_publish_is_a_recorded_child_and_the_record_carries_it(
    tel: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    events, sent = producer(tel, monkeypatch)
    with tel.tracer.start_as_current_span("labels process") as parent:
        events.publish("predictions", alert())
    assert tel.memory is not None
    [publish] = [s for s in tel.memory.get_finished_spans() if s.name.endswith("publish")]
    assert publish.name == "predictions publish"
    assert publish.parent is not None
    assert publish.parent.span_id == parent.get_span_context().span_id
    got = carried(sent)
    assert publish.context is not None
    assert got.span_id == publish.context.span_id and got.trace_flags.sampled


def test_without_a_parent_the_publish_starts_a_trace_decided_by_its_topic(
    tel: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    events, sent = producer(tel, monkeypatch)
    events.publish("alerts", alert())
    assert carried(sent).trace_flags.sampled
    events.publish("frames.raw", alert())
    assert carried(sent).is_valid and not carried(sent).trace_flags.sampled
    assert tel.memory is not None
    assert [s.name for s in tel.memory.get_finished_spans()] == ["alerts publish"]
