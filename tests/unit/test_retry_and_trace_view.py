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
