"""Find a trace in the local JSONL span files and draw it as a tree.

A span may carry links to spans of other traces: a batch consumer links every record it
handled, and a retrain request links the monitoring windows behind it. ``select_trace``
follows links one level in both directions (the traces the selected one links to, and the
traces that link to it), and ``render_trace`` draws each trace as its own subtree with a
``↪ linked`` line under every span that has links.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from rich.markup import escape
from rich.tree import Tree

__all__ = [
    "MAX_LINKED_TRACES",
    "MAX_LINK_LINES",
    "linked_trace_ids",
    "render_trace",
    "select_trace",
]

Span = dict[str, Any]

# Span attributes that name the business object a trace is about.
_ID_ATTRIBUTES = ("messaging.message.id", "streamloop.frame_id", "streamloop.request_id")

MAX_LINK_LINES = 5
"""Link lines drawn under one span; a batch span linking hundreds of records says how many
more there are instead."""

MAX_LINKED_TRACES = 20
"""Linked traces drawn besides the selected one (a batch links hundreds of records)."""


def _links(s: Span) -> list[dict[str, str]]:
    return [
        link
        for link in s.get("links") or []
        if isinstance(link, dict) and link.get("trace_id") and link.get("span_id")
    ]


def _matching_trace_ids(spans: Iterable[Span], ident: str) -> set[str]:
    ident = ident.strip().lower()
    return {
        s["trace_id"]
        for s in spans
        if s.get("trace_id") == ident
        or s.get("span_id") == ident
        or any(str(s.get("attributes", {}).get(a, "")).lower() == ident for a in _ID_ATTRIBUTES)
    }


def linked_trace_ids(spans: list[Span], trace_ids: set[str]) -> tuple[set[str], set[str]]:
    """The traces one link away from ``trace_ids``: ``(links_to, linked_from)``, those that
    spans of ``trace_ids`` link to and those whose spans link into ``trace_ids``, both
    without ``trace_ids`` themselves."""
    links_to: set[str] = set()
    linked_from: set[str] = set()
    for s in spans:
        targets = {link["trace_id"] for link in _links(s)}
        if s["trace_id"] in trace_ids:
            links_to |= targets
        elif targets & trace_ids:
            linked_from.add(s["trace_id"])
    return links_to - trace_ids, linked_from - trace_ids


def select_trace(spans: list[Span], ident: str, *, follow_links: bool = True) -> list[Span]:
    """Spans of the trace that ``ident`` names: a trace id, a span id, or an event / frame /
    request id carried in a span attribute; with ``follow_links``, also the spans of the
    traces one link away (what the trace links to: the windows behind a retrain request;
    and what links to it: the batch that handled a record). Sorted by start; empty when
    nothing matches."""
    trace_ids = _matching_trace_ids(spans, ident)
    if follow_links and trace_ids:
        links_to, linked_from = linked_trace_ids(spans, trace_ids)
        trace_ids |= links_to | linked_from
    return sorted((s for s in spans if s["trace_id"] in trace_ids), key=lambda s: s["start_ns"])


def _short(trace_id: str) -> str:
    return trace_id[:8]


def render_trace(
    spans: list[Span],
    *,
    selected: str | None = None,
    known: Iterable[Span] | None = None,
    max_traces: int = MAX_LINKED_TRACES,
) -> Tree:
    """A tree of ``spans`` by parent, with service, duration and offset from the first span.
    Spans whose parent is missing hang under their trace's top.

    One trace hangs directly under the root. Several (a trace and those linked to it) get a
    subtree each, headed by the trace's short id, span count and duration, and by its
    relation to the trace ``selected`` names (same identifiers as ``select_trace``).

    Beyond the selected traces, at most ``max_traces`` others are drawn (the earliest); a
    line counts the rest. Under a span with links, a ``↪ linked`` line per link names the
    linked span when it is in ``spans`` or ``known`` (say, every span read from the files),
    else its ids."""
    root = Tree("[bold]trace[/]")
    if not spans:
        return root
    by_id = {s["span_id"]: s for s in spans}
    index = {s["span_id"]: s for s in known or ()} | by_id
    traces: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        traces[s["trace_id"]].append(s)
    children: dict[tuple[str, str | None], list[Span]] = defaultdict(list)
    for s in spans:
        parent = s.get("parent_span_id")
        top = parent not in by_id or by_id[parent]["trace_id"] != s["trace_id"]
        children[(s["trace_id"], None if top else parent)].append(s)
    t0 = min(s["start_ns"] for s in spans)

    def label(s: Span) -> str:
        status = " [red]ERROR[/]" if s.get("status") == "ERROR" else ""
        offset = (s["start_ns"] - t0) / 1e6
        return (
            f"[cyan]{escape(str(s.get('service')))}[/] {escape(s['name'])} "
            f"[dim]+{offset:.1f} ms[/] [bold]{s['duration_ms']:.1f} ms[/]{status}"
        )

    def link_label(link: dict[str, str]) -> str:
        target = index.get(link["span_id"])
        where = f"(trace {_short(link['trace_id'])})"
        if target is not None:
            return (
                f"[magenta]↪ linked:[/] [cyan]{escape(str(target.get('service')))}[/] "
                f"{escape(target['name'])} [dim]{where}[/]"
            )
        return f"[magenta]↪ linked:[/] span {link['span_id']} [dim]{where}, not in the files[/]"

    def add(node: Tree, trace_id: str, parent: str | None) -> None:
        for s in sorted(children.get((trace_id, parent), []), key=lambda x: x["start_ns"]):
            branch = node.add(label(s))
            links = _links(s)
            for link in links[:MAX_LINK_LINES]:
                branch.add(link_label(link))
            if len(links) > MAX_LINK_LINES:
                branch.add(f"[magenta]↪[/] [dim]and {len(links) - MAX_LINK_LINES} more links[/]")
            add(branch, trace_id, s["span_id"])

    if len(traces) == 1:
        add(root, spans[0]["trace_id"], None)
        return root

    primary = _matching_trace_ids(spans, selected) if selected else set()
    links_to, linked_from = linked_trace_ids(spans, primary) if primary else (set(), set())
    ordered = sorted(traces.items(), key=lambda kv: kv[1][0]["start_ns"])
    others = [t for t, _ in ordered if t not in primary]
    shown = set(primary) | set(others[:max_traces])
    for trace_id, members in ordered:
        if trace_id not in shown:
            continue
        start = min(s["start_ns"] for s in members)
        end = max(int(s.get("end_ns") or s["start_ns"]) for s in members)
        if trace_id in primary:
            relation = "[bold green]selected[/] "
        elif trace_id in links_to:
            relation = "[magenta]linked by the selected trace[/] "
        elif trace_id in linked_from:
            relation = "[magenta]links to the selected trace[/] "
        else:
            relation = ""
        head = (
            f"[bold]trace {_short(trace_id)}[/] {relation}[dim]{len(members)} "
            f"span{'' if len(members) == 1 else 's'}, "
            f"+{(start - t0) / 1e6:.1f} ms[/] [bold]{(end - start) / 1e6:.1f} ms[/]"
        )
        add(root.add(head), trace_id, None)
    if len(others) > max_traces:
        root.add(f"[dim]… and {len(others) - max_traces} more linked traces[/]")
    return root
