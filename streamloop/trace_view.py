"""Find a trace in the local JSONL span files and draw it as a tree."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rich.tree import Tree

__all__ = ["render_trace", "select_trace"]

Span = dict[str, Any]

# Span attributes that name the business object a trace is about.
_ID_ATTRIBUTES = ("messaging.message.id", "streamloop.frame_id", "streamloop.request_id")


def select_trace(spans: list[Span], ident: str) -> list[Span]:
    """Spans of the trace that ``ident`` names: a trace id, a span id, or an event / frame /
    request id carried in a span attribute. Empty when nothing matches."""
    ident = ident.strip().lower()
    trace_ids = {
        s["trace_id"]
        for s in spans
        if s.get("trace_id") == ident
        or s.get("span_id") == ident
        or any(str(s.get("attributes", {}).get(a, "")).lower() == ident for a in _ID_ATTRIBUTES)
    }
    return sorted((s for s in spans if s["trace_id"] in trace_ids), key=lambda s: s["start_ns"])


def render_trace(spans: list[Span]) -> Tree:
    """A tree of ``spans`` (one or more traces) by parent, with service, duration and offset
    from the trace's first span. Spans whose parent is missing hang under the root."""
    root = Tree("[bold]trace[/]")
    if not spans:
        return root
    by_id = {s["span_id"]: s for s in spans}
    children: dict[str | None, list[Span]] = defaultdict(list)
    for s in spans:
        parent = s.get("parent_span_id")
        children[parent if parent in by_id else None].append(s)
    t0 = min(s["start_ns"] for s in spans)

    def label(s: Span) -> str:
        status = " [red]ERROR[/]" if s.get("status") == "ERROR" else ""
        offset = (s["start_ns"] - t0) / 1e6
        return (
            f"[cyan]{s.get('service')}[/] {s['name']} "
            f"[dim]+{offset:.1f} ms[/] [bold]{s['duration_ms']:.1f} ms[/]{status}"
        )

    def add(node: Tree, parent: str | None) -> None:
        for s in sorted(children.get(parent, []), key=lambda x: x["start_ns"]):
            add(node.add(label(s)), s["span_id"])

    add(root, None)
    return root
