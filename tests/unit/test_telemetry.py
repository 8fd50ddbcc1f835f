from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from shared.events import Label
from shared.ports import Message
from shared.settings import TelemetrySettings
from shared.telemetry import (
    JsonFormatter,
    JsonlSpanExporter,
    extract_context,
    inject_headers,
    read_spans,
    setup_telemetry,
)


def test_trace_context_round_trips_through_kafka_headers() -> None:
    tel = setup_telemetry("t", TelemetrySettings(exporter="memory"), set_global=False)
    with tel.tracer.start_as_current_span("producer") as span:
        headers = inject_headers([("other", b"keep")])
    assert ("other", b"keep") in headers
    assert dict(headers)["traceparent"].startswith(b"00-")
    with tel.tracer.start_as_current_span("consumer", context=extract_context(headers)) as child:
        pass
    assert child.parent is not None
    assert child.parent.span_id == span.get_span_context().span_id
    assert child.get_span_context().trace_id == span.get_span_context().trace_id


def test_injecting_twice_replaces_the_old_parent() -> None:
    tel = setup_telemetry("t", TelemetrySettings(exporter="memory"), set_global=False)
    with tel.tracer.start_as_current_span("a"):
        first = inject_headers()
    with tel.tracer.start_as_current_span("b"):
        second = inject_headers(first)
    assert [k for k, _ in second].count("traceparent") == 1
    assert second != first


def test_garbage_headers_give_an_empty_context() -> None:
    ctx = extract_context([("traceparent", b"\xff\xfe"), ("x", None)])
    tel = setup_telemetry("t", TelemetrySettings(exporter="memory"), set_global=False)
    with tel.tracer.start_as_current_span("root", context=ctx) as span:
        pass
    assert span.parent is None


def test_jsonl_exporter_writes_parent_links_that_read_spans_returns(tmp_path: Path) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(tmp_path / "svc.jsonl")))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("outer", kind=SpanKind.PRODUCER) as outer:
        with tracer.start_as_current_span("inner", attributes={"k": "v"}):
            pass
    provider.shutdown()
    (tmp_path / "svc.jsonl").open("a").write("not json\n")
    spans = {s["name"]: s for s in read_spans(tmp_path)}
    assert set(spans) == {"outer", "inner"}
    assert spans["inner"]["parent_span_id"] == format(outer.get_span_context().span_id, "016x")
    assert spans["inner"]["attributes"] == {"k": "v"}
    assert spans["outer"]["kind"] == "PRODUCER"
    assert spans["outer"]["duration_ms"] >= spans["inner"]["duration_ms"]


def test_json_logs_carry_the_trace_id_and_extras() -> None:
    tel = setup_telemetry("t", TelemetrySettings(exporter="memory"), set_global=False)
    fmt = JsonFormatter("ingest")
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "bad frame", None, None)
    record.topic, record.offset = "frames.raw", 42
    with tel.tracer.start_as_current_span("s") as span:
        line = json.loads(fmt.format(record))
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["service"] == "ingest" and line["msg"] == "bad frame"
    assert line["topic"] == "frames.raw" and line["offset"] == 42


def test_marked_root_spans_are_sampled_whatever_the_ratio_and_their_children_follow() -> None:
    from opentelemetry import trace as api

    from shared.telemetry import ALWAYS_SAMPLE, setup_telemetry

    tel = setup_telemetry(
        "sampling-test",
        TelemetrySettings(exporter="memory", sample_ratio=0.0),
        set_global=False,
    )
    with tel.tracer.start_as_current_span("frame") as plain:
        assert not plain.get_span_context().trace_flags.sampled
    with tel.tracer.start_as_current_span("retrain", attributes={ALWAYS_SAMPLE: True}) as marked:
        assert marked.get_span_context().trace_flags.sampled
        with tel.tracer.start_as_current_span("training") as child:
            assert child.get_span_context().trace_flags.sampled
    ctx = api.set_span_in_context(marked)
    downstream = tel.tracer.start_span("evaluation", context=ctx)
    downstream.end()
    assert downstream.get_span_context().trace_flags.sampled
    assert tel.memory is not None
    assert {s.name for s in tel.memory.get_finished_spans()} == {
        "retrain",
        "training",
        "evaluation",
    }
    tel.shutdown()


def test_a_message_gives_the_context_its_loop_extracted_or_extracts_it_from_its_headers() -> None:
    tel = setup_telemetry("t", TelemetrySettings(exporter="memory"), set_global=False)
    with tel.tracer.start_as_current_span("producer") as span:
        headers = inject_headers()
    producer_span = span.get_span_context().span_id

    def parent_of(msg: Message[Label]) -> int:
        got = trace.get_current_span(msg.trace_context()).get_span_context()
        return got.span_id

    bare: Message[Label] = Message(
        Label(frame_id="f", label="car"), "labels", 0, 0, None, headers, 0
    )
    assert parent_of(bare) == producer_span
    extracted = extract_context(headers)
    loop_made = replace(bare, headers=[], context=extracted)
    assert loop_made.trace_context() is extracted and parent_of(loop_made) == producer_span


def _policy_telemetry(**ratios: float):  # type: ignore[no-untyped-def]
    from shared.telemetry import setup_telemetry

    return setup_telemetry(
        "policy-test", TelemetrySettings(exporter="memory", **ratios), set_global=False
    )


def _root_sampled(tel, topic: str, n: int) -> int:  # type: ignore[no-untyped-def]
    kept = 0
    for _ in range(n):
        span = tel.tracer.start_span(
            f"{topic} publish", attributes={"messaging.destination.name": topic}
        )
        kept += span.get_span_context().trace_flags.sampled
        span.end()
    return kept


def test_a_trace_that_starts_on_the_frame_path_is_kept_at_the_frames_ratio_others_at_theirs() -> (
    None
):
    tel = _policy_telemetry(sample_ratio=1.0, frames_sample_ratio=0.0)
    for topic in ("frames.raw", "frames.valid", "predictions", "site-a.predictions"):
        assert _root_sampled(tel, topic, 50) == 0, topic
    for topic in ("labels", "examples", "models.lifecycle", "frames.dlq", "predictions.x"):
        assert _root_sampled(tel, topic, 50) == 50, topic
    tel.shutdown()

    tel = _policy_telemetry(sample_ratio=0.0, frames_sample_ratio=0.1)
    kept = _root_sampled(tel, "frames.raw", 4000)
    assert 300 <= kept <= 500, kept  # 400 expected; binomial sd 19
    assert _root_sampled(tel, "labels", 200) == 0
    tel.shutdown()


def test_the_frames_ratio_does_not_touch_a_trace_already_decided() -> None:
    from opentelemetry import trace as api

    tel = _policy_telemetry(sample_ratio=1.0, frames_sample_ratio=0.0)
    with tel.tracer.start_as_current_span("labels publish") as upstream:
        # A span on a frame topic inside a kept trace follows its parent.
        child = tel.tracer.start_span(
            "predictions publish",
            context=api.set_span_in_context(upstream),
            attributes={"messaging.destination.name": "predictions"},
        )
        assert child.get_span_context().trace_flags.sampled
        child.end()
    tel.shutdown()


def test_a_dead_letter_is_recorded_in_a_trace_of_its_own_linked_to_its_unsampled_record() -> None:
    from opentelemetry import trace as api

    from shared.telemetry import dead_letter_span, extract_context

    camera = _policy_telemetry(frames_sample_ratio=0.0)
    with camera.tracer.start_as_current_span(
        "frames.raw publish", attributes={"messaging.destination.name": "frames.raw"}
    ) as frame:
        headers = inject_headers()
    assert not frame.get_span_context().trace_flags.sampled
    ingest = _policy_telemetry(sample_ratio=0.0, frames_sample_ratio=0.0)
    span = dead_letter_span(
        ingest.tracer,
        headers,
        dlq_topic="frames.dlq",
        source_topic="frames.raw",
        reason="bad_image",
    )
    with api.use_span(span, end_on_exit=True):
        carried = inject_headers()
    assert ingest.memory is not None
    [recorded] = ingest.memory.get_finished_spans()
    assert recorded.name == "frames.dlq dead letter"
    assert recorded.attributes is not None
    assert recorded.attributes["streamloop.dlq.reason"] == "bad_image"
    assert recorded.context is not None
    assert recorded.context.trace_id != frame.get_span_context().trace_id
    assert [link.context.trace_id for link in recorded.links] == [frame.get_span_context().trace_id]
    # The dead letter carries the recorded trace: whoever replays it continues that one.
    replayed = api.get_current_span(extract_context(carried)).get_span_context()
    assert replayed.trace_id == recorded.context.trace_id and replayed.trace_flags.sampled
    camera.shutdown()
    ingest.shutdown()
