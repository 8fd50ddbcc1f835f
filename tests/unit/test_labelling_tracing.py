"""Labelling's tracing helpers: where the two halves of an example were handled is kept with
them, and the example's span links to the half that did not complete it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.labelling.app import consumer_span, links_to, record_headers, traceparent_of
from services.labelling.join import Joiner
from shared.events import Label
from tests.unit.test_labelling_join import frame

FRAME_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


def message(headers: Any) -> SimpleNamespace:
    return SimpleNamespace(topic="frames.valid", partition=1, offset=7, headers=headers)


def test_a_record_is_handled_under_a_consumer_span_of_its_producers_trace() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    parent = f"00-{FRAME_TRACE}-{PARENT}-01".encode()
    for headers in ([("traceparent", parent), ("other", b"x")], {"traceparent": parent}):
        with consumer_span(tracer, message(headers)) as span:
            here = traceparent_of(span)
        assert here is not None and here.split("-")[1] == FRAME_TRACE
    first, second = memory.get_finished_spans()
    for s in (first, second):
        assert s.kind is SpanKind.CONSUMER and s.name == "frames.valid process"
        assert s.parent is not None and format(s.parent.span_id, "016x") == PARENT
        assert s.attributes is not None and s.attributes["messaging.kafka.offset"] == 7


def test_the_example_links_to_the_half_that_did_not_complete_it() -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    joiner = Joiner(["car"])
    table: dict[str, Any] = {}
    with tracer.start_as_current_span("frame") as frame_span:
        frame_tp = traceparent_of(frame_span)
        assert joiner.on_frame(table, frame("f"), traceparent=frame_tp) is None
    with tracer.start_as_current_span("label") as label_span:
        label_tp = traceparent_of(label_span)
        example = joiner.on_label(table, Label(frame_id="f", label="car"), traceparent=label_tp)
        assert example is not None
        assert joiner.traceparents(table, "f") == [frame_tp, label_tp]
        [link] = links_to(joiner.traceparents(table, "f"), label_span)
    assert link.context.span_id == frame_span.get_span_context().span_id
    assert link.context.trace_id == frame_span.get_span_context().trace_id
    # Entries without trace context (written before it was kept) give no links.
    assert joiner.traceparents({"g": {"frame": {}, "label": {}}}, "g") == []
    assert joiner.traceparents(table, "missing") == []


def test_record_headers_accepts_both_shapes() -> None:
    assert record_headers(message(None)) == []
    assert record_headers(message([("a", b"1")])) == [("a", b"1")]
    assert record_headers(message({"a": b"1"})) == [("a", b"1")]
