from __future__ import annotations

from shared.bus import RetryPolicy
from streamloop.trace_view import render_trace, select_trace


def test_backoff_doubles_up_to_the_cap() -> None:
    p = RetryPolicy(max_attempts=5, backoff_s=0.1, max_backoff_s=0.3)
    assert [p.delay(a) for a in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]


def span(tid: str, sid: str, parent: str | None, start: int, **attrs: str) -> dict[str, object]:
    return {
        "trace_id": tid,
        "span_id": sid,
        "parent_span_id": parent,
        "name": f"n{sid}",
        "service": "s",
        "start_ns": start,
        "end_ns": start + 1_000_000,
        "duration_ms": 1.0,
        "status": "UNSET",
        "attributes": attrs,
    }


SPANS = [
    span("t1", "a", None, 0, **{"messaging.message.id": "evt-1"}),
    span("t1", "b", "a", 5),
    span("t2", "c", None, 1),
]


def test_select_by_trace_span_or_event_id() -> None:
    assert [s["span_id"] for s in select_trace(SPANS, "t1")] == ["a", "b"]
    assert [s["span_id"] for s in select_trace(SPANS, "b")] == ["a", "b"]
    assert [s["span_id"] for s in select_trace(SPANS, "EVT-1")] == ["a", "b"]
    assert select_trace(SPANS, "missing") == []


def test_tree_nests_children_under_parents() -> None:
    tree = render_trace(select_trace(SPANS, "t1"))
    [top] = tree.children
    assert "na" in str(top.label)
    [child] = top.children
    assert "nb" in str(child.label)


def linked(
    tid: str, sid: str, parent: str | None, start: int, links: list[tuple[str, str]], **kw: str
) -> dict[str, object]:
    s = span(tid, sid, parent, start)
    s["links"] = [{"trace_id": t, "span_id": p} for t, p in links]
    s.update(kw)
    return s


# Two monitoring windows (traces w1, w2), a retrain request whose span links both (trace r),
# the training run that links the request (trace x), and an unrelated trace.
LINKED = [
    span("w1", "w1a", None, 0),
    span("w2", "w2a", None, 10),
    linked("r", "ra", None, 20, [("w1", "w1a"), ("w2", "w2a")], name="retrain.requests publish"),
    span("r", "rb", "ra", 21),
    linked("x", "xa", None, 30, [("r", "ra")]),
    linked("u", "ua", None, 40, [("w9", "gone")]),
]


def test_select_pulls_in_the_traces_one_link_away_both_ways() -> None:
    assert {s["trace_id"] for s in select_trace(LINKED, "r")} == {"w1", "w2", "r", "x"}
    # One level only: from a window, the request that links it and not the other window.
    assert {s["trace_id"] for s in select_trace(LINKED, "w1")} == {"w1", "r"}
    assert {s["trace_id"] for s in select_trace(LINKED, "r", follow_links=False)} == {"r"}
    # A link to a trace that is not in the files pulls nothing in.
    assert {s["trace_id"] for s in select_trace(LINKED, "u")} == {"u"}


def test_spans_without_a_links_field_still_select() -> None:
    assert [s["span_id"] for s in select_trace(SPANS, "t1")] == ["a", "b"]


def test_linked_traces_render_as_subtrees_with_their_relation() -> None:
    tree = render_trace(select_trace(LINKED, "ra"), selected="ra")
    heads = [str(c.label) for c in tree.children]
    assert len(heads) == 4
    assert "trace w1" in heads[0] and "linked by the selected trace" in heads[0]
    assert "trace w2" in heads[1] and "linked by the selected trace" in heads[1]
    assert "trace r" in heads[2] and "selected" in heads[2] and "2 spans" in heads[2]
    assert "trace x" in heads[3] and "links to the selected trace" in heads[3]
    # Each subtree has a duration: the request's trace runs from 20 ns to 21 ns + 1 ms.
    assert "1.0 ms" in heads[2]
    [request] = tree.children[2].children
    assert "retrain.requests publish" in str(request.label)
    lines = [str(c.label) for c in request.children]
    assert "↪ linked:" in lines[0] and "nw1a" in lines[0] and "(trace w1)" in lines[0]
    assert "nw2a" in lines[1]
    assert "nrb" in lines[2]  # the child span comes after the link lines


def test_a_link_to_a_span_not_in_the_files_shows_its_ids() -> None:
    tree = render_trace(select_trace(LINKED, "u"), selected="u")
    [top] = tree.children
    [link] = top.children
    assert "span gone" in str(link.label) and "(trace w9)" in str(link.label)
    assert "not in the files" in str(link.label)


def test_linked_spans_outside_the_selection_are_named_from_known_spans() -> None:
    tree = render_trace(select_trace(LINKED, "x", follow_links=False), known=LINKED)
    [top] = tree.children
    [link] = top.children
    assert "retrain.requests publish" in str(link.label) and "(trace r)" in str(link.label)


def test_a_batch_span_with_many_links_shows_a_few_and_a_count() -> None:
    many = [linked("b", "ba", None, 0, [(f"f{i}", f"s{i}") for i in range(12)])]
    [top] = render_trace(many).children
    lines = [str(c.label) for c in top.children]
    assert len(lines) == 6 and "and 7 more links" in lines[-1]


def test_only_so_many_linked_traces_are_drawn() -> None:
    many = [linked("b", "ba", None, 100, [(f"f{i}", f"s{i}") for i in range(4)])]
    many += [span(f"f{i}", f"s{i}", None, i) for i in range(4)]
    tree = render_trace(select_trace(many, "b"), selected="b", max_traces=2)
    heads = [str(c.label) for c in tree.children]
    assert "trace f0" in heads[0] and "trace f1" in heads[1]
    assert "trace b" in heads[2] and "selected" in heads[2]
    assert "and 2 more linked traces" in heads[3]


def test_span_files_record_links() -> None:
    """The trace view draws links from the span files: ``span_to_dict`` must keep them."""
    from opentelemetry.trace import Link

    from shared.settings import TelemetrySettings
    from shared.telemetry import setup_telemetry, span_to_dict

    tel = setup_telemetry("t", TelemetrySettings(exporter="memory"), set_global=False)
    with tel.tracer.start_as_current_span("window") as window:
        pass
    target = window.get_span_context()
    with tel.tracer.start_as_current_span("request", links=[Link(target)]):
        pass
    assert tel.memory is not None
    spans = {s.name: span_to_dict(s) for s in tel.memory.get_finished_spans()}
    assert spans["window"]["links"] == []
    assert spans["request"]["links"] == [
        {"trace_id": format(target.trace_id, "032x"), "span_id": format(target.span_id, "016x")}
    ]
    tel.shutdown()


def test_dependency_failures_are_transient_and_record_failures_are_not() -> None:
    import redis.exceptions
    from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

    from shared.errors import Unavailable, is_transient
    from shared.ports import ClaimsUnavailableError
    from shared.registry import RegistryUnavailableError

    transient = [
        redis.exceptions.ConnectionError("Error 111"),
        redis.exceptions.TimeoutError("timed out"),
        ClaimsUnavailableError("down"),
        RegistryUnavailableError("down"),
        KafkaTimeoutError("metadata not available after 60000 ms"),
        ConnectionRefusedError(111, "refused"),
        Unavailable("model tier"),
    ]
    assert all(is_transient(e) for e in transient)
    assert not any(
        is_transient(e)
        for e in (ValueError("bad frame"), KeyError("x"), MessageSizeTooLargeError("too big"))
    )
    # Wrapped in a domain error, the cause still counts.
    try:
        try:
            raise redis.exceptions.ConnectionError("Error 111")
        except redis.exceptions.ConnectionError as exc:
            raise RuntimeError("could not write the read model") from exc
    except RuntimeError as wrapped:
        assert is_transient(wrapped)


def test_backoff_of_a_long_outage_stays_at_the_cap() -> None:
    p = RetryPolicy(backoff_s=0.2, max_backoff_s=5.0)
    assert p.delay(10_000) == 5.0
