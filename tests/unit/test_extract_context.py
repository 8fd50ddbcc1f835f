"""``extract_context`` reads a plain ``traceparent`` itself and leaves the rest to the W3C
propagator: either way, every header set gives the context the propagator alone gives."""

from __future__ import annotations

import random

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.telemetry import extract_context, inject_headers

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
PROPAGATOR = TraceContextTextMapPropagator()


def by_propagator(headers: list[tuple[str, bytes | None]]) -> trace.SpanContext:
    """What the propagator alone reads from ``headers`` (the last valid ASCII value of each
    of the two headers, as the service code always passed them)."""
    carrier: dict[str, str] = {}
    for key, value in headers:
        if key in ("traceparent", "tracestate") and value is not None:
            try:
                carrier[key] = value.decode("ascii")
            except UnicodeDecodeError:
                continue
    return trace.get_current_span(PROPAGATOR.extract(carrier)).get_span_context()


def read(headers: list[tuple[str, bytes | None]]) -> trace.SpanContext:
    return trace.get_current_span(extract_context(headers)).get_span_context()


CASES: dict[str, list[tuple[str, bytes | None]]] = {
    "sampled": [("traceparent", f"00-{TRACE}-{SPAN}-01".encode())],
    "not sampled, among other headers": [
        ("event_type", b"frame.raw"),
        ("traceparent", f"00-{TRACE}-{SPAN}-00".encode()),
        ("content_type", b"image/png"),
    ],
    "other flags": [("traceparent", f"00-{TRACE}-{SPAN}-03".encode())],
    "with a tracestate": [
        ("traceparent", f"00-{TRACE}-{SPAN}-01".encode()),
        ("tracestate", b"vendor=abc,other=1"),
    ],
    "tracestate first": [
        ("tracestate", b"vendor=abc"),
        ("traceparent", f"00-{TRACE}-{SPAN}-00".encode()),
    ],
    "zero trace id": [("traceparent", f"00-{'0' * 32}-{SPAN}-01".encode())],
    "zero span id": [("traceparent", f"00-{TRACE}-{'0' * 16}-01".encode())],
    "upper-case hex": [("traceparent", f"00-{TRACE.upper()}-{SPAN}-01".encode())],
    "version ff": [("traceparent", f"ff-{TRACE}-{SPAN}-01".encode())],
    "a later version with more fields": [("traceparent", f"01-{TRACE}-{SPAN}-01-extra".encode())],
    "version 00 with more fields": [("traceparent", f"00-{TRACE}-{SPAN}-01-extra".encode())],
    "surrounding spaces": [("traceparent", f" 00-{TRACE}-{SPAN}-01 ".encode())],
    "too short": [("traceparent", f"00-{TRACE[:-1]}-{SPAN}-01".encode())],
    "not hex": [("traceparent", f"00-{TRACE[:-1]}g-{SPAN}-01".encode())],
    "underscore in an id": [("traceparent", f"00-{TRACE[:-2]}_1-{SPAN}-01".encode())],
    "not ASCII": [("traceparent", "00-é".encode())],
    "a valid one, then one not ASCII": [
        ("traceparent", f"00-{TRACE}-{SPAN}-01".encode()),
        ("traceparent", "00-é".encode()),
    ],
    "a valid one, then none": [
        ("traceparent", f"00-{TRACE}-{SPAN}-01".encode()),
        ("traceparent", None),
    ],
    "two, the last wins": [
        ("traceparent", f"00-{'1' * 32}-{SPAN}-01".encode()),
        ("traceparent", f"00-{TRACE}-{SPAN}-00".encode()),
    ],
    "empty": [("traceparent", b"")],
    "none at all": [("event_type", b"label")],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_header_set_gives_what_the_propagator_gives(name: str) -> None:
    headers = CASES[name]
    assert read(headers) == by_propagator(headers)


def test_the_cases_cover_both_outcomes() -> None:
    valid = {name for name, h in CASES.items() if by_propagator(h).is_valid}
    # Spaces and a later version are read, by the propagator: the direct reading declines.
    assert {
        "sampled",
        "with a tracestate",
        "surrounding spaces",
        "a later version with more fields",
    } <= valid
    assert {"zero trace id", "version ff", "not hex", "underscore in an id"}.isdisjoint(valid)


def test_a_plain_traceparent_is_read_with_its_ids_flags_and_as_remote() -> None:
    got = read([("traceparent", f"00-{TRACE}-{SPAN}-01".encode())])
    assert (got.trace_id, got.span_id) == (int(TRACE, 16), int(SPAN, 16))
    assert got.trace_flags.sampled and got.is_remote and got.is_valid
    assert not read([("traceparent", f"00-{TRACE}-{SPAN}-00".encode())]).trace_flags.sampled


def test_a_tracestate_is_kept() -> None:
    got = read([("traceparent", f"00-{TRACE}-{SPAN}-01".encode()), ("tracestate", b"k=v")])
    assert got.trace_state.get("k") == "v"


def test_random_contexts_round_trip_through_injected_headers() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        parent = trace.SpanContext(
            trace_id=rng.getrandbits(128) or 1,
            span_id=rng.getrandbits(64) or 1,
            is_remote=False,
            trace_flags=trace.TraceFlags(rng.getrandbits(8)),
        )
        headers = inject_headers(
            [("event_type", b"x")], trace.set_span_in_context(trace.NonRecordingSpan(parent))
        )
        got = read(list(headers))
        assert got == by_propagator(list(headers))
        assert (got.trace_id, got.span_id, got.trace_flags) == (
            parent.trace_id,
            parent.span_id,
            parent.trace_flags,
        )


def test_no_headers_give_an_empty_context() -> None:
    assert extract_context(None) == Context()
    assert extract_context([]) == Context()
