"""The dashboard's read model: what the monitoring page shows, folded from events.

``DashboardState`` keeps, in memory and bounded, the last closed monitoring windows of every
model version, the latest live comparison per champion/challenger pair, the model-lifecycle
moments worth drawing on the accuracy chart (markers), the last alerts and the number of
dead-lettered records per DLQ topic. The feed (``services.monitoring.feed``) folds records
into it from a background thread while the HTTP server (``services.monitoring.dashboard``)
takes snapshots from others, so every method holds one lock.

It is pure: nothing here talks to Kafka, Redis or HTTP, and the same events give the same
snapshot. Records are delivered at least once, so events are folded idempotently (by event
id, and windows by version, stream and window id).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from shared.events import (
    AccuracyEstimate,
    Alert,
    Event,
    LiveComparison,
    ModelEvaluated,
    ModelLifecycle,
    ModelTrained,
    RetrainRequest,
    WindowMetrics,
)
from shared.registry import RegistryView, VersionView
from shared.topics import Topics

__all__ = [
    "DLQ_TOPICS",
    "MARKER_KINDS",
    "DashboardState",
    "Marker",
    "MarkerKind",
    "WindowPoint",
]

MarkerKind = Literal[
    "retrain_requested", "trained", "evaluated", "promoted", "challenger", "rolled_back"
]
MARKER_KINDS: tuple[MarkerKind, ...] = (
    "retrain_requested",
    "trained",
    "evaluated",
    "promoted",
    "challenger",
    "rolled_back",
)

DLQ_TOPICS: tuple[str, ...] = (Topics.FRAMES_DLQ, Topics.EVENTS_DLQ)
"""Dead-letter topics the dashboard counts (names without the deployment's prefix)."""

_MAX_TEXT = 300
"""Marker and alert texts are cut to this many characters: they come from other processes,
and the state must stay bounded whatever they hold."""

_MAX_REASONS = 20
"""Distinct DLQ reason codes kept per topic; further codes are counted as ``other``."""


def _iso(at: datetime) -> str:
    """``at`` in UTC, ISO 8601 (naive datetimes are taken as UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat()


def _num(value: float | None) -> float | None:
    """A JSON-safe number: NaN and infinities become None (JSON has no spelling for them)."""
    if value is None or isinstance(value, bool) or not math.isfinite(value):
        return None
    return float(value)


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


@dataclass(frozen=True)
class WindowPoint:
    """One closed monitoring window of one model version, as the charts need it."""

    model_version: str
    shadow: bool
    window_id: str
    window_end: datetime
    accuracy: float | None
    macro_f1: float | None
    label_coverage: float
    labelled_count: int
    sample_count: int
    mean_confidence: float | None
    psi: float | None
    estimate: AccuracyEstimate | None = None
    estimate_error: float | None = None

    @classmethod
    def of(cls, event: WindowMetrics) -> WindowPoint:
        """The point of a ``WindowMetrics`` event."""
        return cls(
            model_version=event.model_version,
            shadow=event.shadow,
            window_id=event.window_id,
            window_end=event.window_end,
            accuracy=event.accuracy,
            macro_f1=event.macro_f1,
            label_coverage=event.label_coverage,
            labelled_count=event.labelled_count,
            sample_count=event.sample_count,
            mean_confidence=event.mean_confidence,
            psi=event.psi,
            estimate=event.estimate,
            estimate_error=event.estimate_error,
        )

    def json(self) -> dict[str, Any]:
        """The point as the page reads it."""
        return {
            "t": _iso(self.window_end),
            "window_id": self.window_id,
            "accuracy": _num(self.accuracy),
            "macro_f1": _num(self.macro_f1),
            "coverage": _num(self.label_coverage),
            "labelled": self.labelled_count,
            "samples": self.sample_count,
            "mean_confidence": _num(self.mean_confidence),
            "psi": _num(self.psi),
            "estimated": _num(self.estimate.value) if self.estimate else None,
            "estimated_low": _num(self.estimate.low) if self.estimate else None,
            "estimated_high": _num(self.estimate.high) if self.estimate else None,
            "estimate_method": self.estimate.method if self.estimate else None,
            "estimate_error": _num(self.estimate_error),
        }


@dataclass(frozen=True)
class Marker:
    """A moment of the model lifecycle, drawn as a vertical line on the accuracy chart."""

    at: datetime
    kind: MarkerKind
    version: str | None
    text: str
    action: str
    """What exactly happened within the kind: ``requested`` (retrain), ``trained``,
    ``blessed`` / ``rejected`` (evaluation), or the lifecycle action (``alias_set``,
    ``rolled_back``, ``promote_requested``, ``rollback_requested``, ``probation_passed``,
    ``command_rejected``). The page draws requests and rejections fainter than facts."""
    event_id: str

    def json(self) -> dict[str, Any]:
        """The marker as the page reads it."""
        return {
            "t": _iso(self.at),
            "kind": self.kind,
            "version": self.version,
            "text": self.text,
            "action": self.action,
        }


class _IdSet:
    """The last ``limit`` event ids folded into one collection: redeliveries (which come
    soon after the original) are dropped without the set growing for ever."""

    def __init__(self, limit: int) -> None:
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        self._limit = limit

    def add(self, event_id: str) -> bool:
        """Remember ``event_id``; False when it was already remembered."""
        if event_id in self._ids:
            return False
        self._ids.add(event_id)
        self._order.append(event_id)
        while len(self._order) > self._limit:
            self._ids.discard(self._order.popleft())
        return True


class DashboardState:
    """The monitoring page's data, folded from events; bounded and thread-safe.

    ``model_name``, when given, ignores events of other models (alerts and dead letters
    name no model and are always kept).
    """

    def __init__(
        self,
        *,
        model_name: str | None = None,
        max_windows: int = 500,
        max_markers: int = 500,
        max_alerts: int = 50,
        max_comparisons: int = 20,
    ) -> None:
        if min(max_windows, max_markers, max_alerts, max_comparisons) < 1:
            raise ValueError("every bound must be at least 1")
        self.model_name = model_name
        self._lock = threading.Lock()
        self._max_windows = max_windows
        self._max_comparisons = max_comparisons
        self._max_markers = max_markers
        self._windows: OrderedDict[tuple[str, bool, str], WindowPoint] = OrderedDict()
        self._comparisons: dict[tuple[str, str], LiveComparison] = {}
        self._markers: deque[Marker] = deque(maxlen=max_markers)
        self._marker_ids = _IdSet(4 * max_markers)
        self._alerts: deque[Alert] = deque(maxlen=max_alerts)
        self._alert_ids = _IdSet(4 * max_alerts)
        self._commands: OrderedDict[str, MarkerKind] = OrderedDict()
        """Lifecycle command event id -> the marker kind of what it asked for, so that a
        ``command_rejected`` answering it can be drawn as the same kind."""
        self._dlq: dict[str, int] = dict.fromkeys(DLQ_TOPICS, 0)
        self._dlq_reasons: dict[str, dict[str, int]] = {t: {} for t in DLQ_TOPICS}
        self._applied = 0

    # --- folding -----------------------------------------------------------------------

    @property
    def applied(self) -> int:
        """Events and dead letters folded so far (redeliveries and ignored events aside)."""
        with self._lock:
            return self._applied

    def apply(self, event: Event, topic: str) -> None:
        """Fold one event read from ``topic`` (its name without the deployment's prefix).

        Event types the dashboard does not show are ignored, as are redeliveries.
        """
        with self._lock:
            if self._fold(event, topic):
                self._applied += 1

    def count_dlq(self, topic: str, reason: str | None = None) -> None:
        """Count one dead-lettered record read from ``topic`` (``frames.dlq`` or
        ``events.dlq``), with its ``dlq.error`` reason code when it has one."""
        key = reason or "unknown"
        with self._lock:
            self._dlq[topic] = self._dlq.get(topic, 0) + 1
            reasons = self._dlq_reasons.setdefault(topic, {})
            if key not in reasons and len(reasons) >= _MAX_REASONS:
                key = "other"
            reasons[key] = reasons.get(key, 0) + 1
            self._applied += 1

    def _ours(self, model_name: str) -> bool:
        return self.model_name is None or model_name == self.model_name

    def _fold(self, event: Event, topic: str) -> bool:
        match event:
            case WindowMetrics() if self._ours(event.model_name):
                return self._fold_window(event)
            case LiveComparison() if self._ours(event.model_name):
                return self._fold_comparison(event)
            case Alert():
                if not self._alert_ids.add(event.event_id):
                    return False
                self._alerts.append(event)
                return True
            case RetrainRequest() if self._ours(event.model_name):
                return self._mark(
                    event,
                    "retrain_requested",
                    None,
                    f"retrain requested ({event.trigger}): {event.reason}",
                    "requested",
                )
            case ModelTrained() if self._ours(event.model_name):
                return self._mark(
                    event,
                    "trained",
                    event.model_version,
                    f"{event.model_version} trained on {event.dataset.size} examples in "
                    f"{event.duration_s:.0f} s" + (f" ({event.trigger})" if event.trigger else ""),
                    "trained",
                )
            case ModelEvaluated() if self._ours(event.model_name):
                why = "; ".join(event.reasons)
                return self._mark(
                    event,
                    "evaluated",
                    event.model_version,
                    f"{event.model_version} {event.verdict}" + (f": {why}" if why else ""),
                    event.verdict,
                )
            case ModelLifecycle() if self._ours(event.model_name):
                return self._fold_lifecycle(event)
        return False

    def _fold_window(self, event: WindowMetrics) -> bool:
        key = (event.model_version, event.shadow, event.window_id)
        point = WindowPoint.of(event)
        if self._windows.get(key) == point:
            return False
        self._windows[key] = point
        self._windows.move_to_end(key)
        while len(self._windows) > self._max_windows:
            self._windows.popitem(last=False)
        return True

    def _fold_comparison(self, event: LiveComparison) -> bool:
        key = (event.champion_version, event.challenger_version)
        held = self._comparisons.get(key)
        # Counts are cumulative: a comparison older than the one held says nothing new.
        if held is not None and (held.event_id == event.event_id or held.until > event.until):
            return False
        self._comparisons[key] = event
        if len(self._comparisons) > self._max_comparisons:
            oldest = min(self._comparisons, key=lambda k: self._comparisons[k].until)
            del self._comparisons[oldest]
        return True

    def _fold_lifecycle(self, event: ModelLifecycle) -> bool:
        version, previous = event.model_version, event.previous_version
        why = f": {event.reason}" if event.reason else ""
        action: str = event.action
        kind: MarkerKind
        match action:
            case "alias_set" if event.alias == "champion":
                kind = "promoted"
                if version is None:
                    text = "champion alias cleared"
                else:
                    text = f"{version} is champion" + (f" (was {previous})" if previous else "")
            case "alias_set" if event.alias == "challenger":
                kind = "challenger"
                if version is None:
                    text = "challenger alias cleared"
                else:
                    of = event.details.get("probation_of")
                    text = f"{version} is challenger (shadow" + (
                        f", predecessor of {of} on probation)" if isinstance(of, str) else ")"
                    )
            case "rolled_back":
                kind = "rolled_back"
                text = f"rolled back {previous or 'the champion'} to {version or 'no champion'}"
            case "promote_requested":
                kind = "promoted"
                text = f"promotion of {version} requested by {event.actor}"
            case "rollback_requested":
                kind = "rolled_back"
                text = f"rollback of {version} requested by {event.actor}"
            case "probation_passed":
                kind = "promoted"
                text = f"{version} passed probation" + (f" against {previous}" if previous else "")
            case "command_rejected":
                asked = self._commands.get(event.cause_id or "")
                if asked is None:
                    return False
                kind = asked
                text = f"command on {version} rejected by the registry"
            case _:
                return False
        if action in ("promote_requested", "rollback_requested"):
            self._commands[event.event_id] = kind
            while len(self._commands) > self._max_markers:
                self._commands.popitem(last=False)
        return self._mark(event, kind, version, text + why, action)

    def _mark(
        self, event: Event, kind: MarkerKind, version: str | None, text: str, action: str
    ) -> bool:
        if not self._marker_ids.add(event.event_id):
            return False
        self._markers.append(
            Marker(
                at=event.produced_at,
                kind=kind,
                version=version,
                text=_cut(text),
                action=action,
                event_id=event.event_id,
            )
        )
        return True

    # --- reading -----------------------------------------------------------------------

    def windows(self) -> list[WindowPoint]:
        """The windows held, oldest arrival first."""
        with self._lock:
            return list(self._windows.values())

    def markers(self) -> list[Marker]:
        """The markers held, in time order."""
        with self._lock:
            return sorted(self._markers, key=lambda m: m.at)

    def snapshot(self, threshold: float, models: RegistryView | None) -> dict[str, Any]:
        """Everything the page draws, as JSON-ready data (str, int, float, bool, None, lists
        and dicts only; no NaN).

        - ``series``: one per (model version, ``live`` | ``shadow``), points in time order;
        - ``markers``: lifecycle moments in time order;
        - ``threshold``: the accuracy below which the monitor asks for a retrain;
        - ``models``: the registry's versions, newest first (empty without ``models``),
          with ``champion`` and ``challenger`` naming the aliased versions;
        - ``alerts``: newest first; ``dlq`` / ``dlq_reasons``: dead letters per DLQ topic;
        - ``comparisons``: the latest live comparison per pair, newest first, and
          ``comparison``: the one of the current champion and challenger when the registry
          says which those are, else the newest.
        """
        with self._lock:
            windows = list(self._windows.values())
            markers = sorted(self._markers, key=lambda m: m.at)
            alerts = sorted(self._alerts, key=lambda a: a.produced_at, reverse=True)
            comparisons = sorted(self._comparisons.values(), key=lambda c: c.until, reverse=True)
            dlq = dict(self._dlq)
            dlq_reasons = {t: dict(r) for t, r in self._dlq_reasons.items()}
            applied = self._applied
        aliases = dict(models.aliases) if models is not None else {}
        current = next(
            (
                c
                for c in comparisons
                if (c.champion_version, c.challenger_version)
                == (aliases.get("champion"), aliases.get("challenger"))
            ),
            comparisons[0] if comparisons else None,
        )
        return {
            "generated_at": _iso(datetime.now(UTC)),
            "applied": applied,
            "threshold": _num(threshold),
            "series": _series(windows),
            "markers": [m.json() for m in markers],
            "models": [_model_row(v) for v in reversed(models.versions)] if models else [],
            "champion": aliases.get("champion"),
            "challenger": aliases.get("challenger"),
            "alerts": [_alert_row(a) for a in alerts],
            "dlq": dlq,
            "dlq_reasons": dlq_reasons,
            "comparisons": [_comparison_row(c) for c in comparisons],
            "comparison": _comparison_row(current) if current is not None else None,
        }


def _series(windows: list[WindowPoint]) -> list[dict[str, Any]]:
    grouped: dict[tuple[str, bool], list[WindowPoint]] = {}
    for w in windows:
        grouped.setdefault((w.model_version, w.shadow), []).append(w)
    out: list[dict[str, Any]] = []
    for (version, shadow), points in grouped.items():
        points.sort(key=lambda p: (p.window_end, p.window_id))
        out.append(
            {
                "version": version,
                "stream": "shadow" if shadow else "live",
                "points": [p.json() for p in points],
            }
        )
    out.sort(key=lambda s: (s["points"][0]["t"], s["version"], s["stream"]))
    return out


def _model_row(v: VersionView) -> dict[str, Any]:
    return {
        "version": v.version,
        "number": v.number,
        "aliases": list(v.aliases),
        "status": v.status,
        "verdict": v.verdict,
        "fresh_accuracy": _num(v.fresh_accuracy),
        "reference_accuracy": _num(v.reference_accuracy),
        "created": _iso(v.registered_at),
        "was_champion": v.was_champion,
        "rolled_back": v.rolled_back,
    }


def _alert_row(a: Alert) -> dict[str, Any]:
    return {
        "t": _iso(a.produced_at),
        "severity": a.severity,
        "kind": _cut(a.kind),
        "message": _cut(a.message),
        "version": a.model_version,
        "camera": a.camera_id,
    }


def _comparison_row(c: LiveComparison) -> dict[str, Any]:
    return {
        "champion": c.champion_version,
        "challenger": c.challenger_version,
        "labelled": c.labelled,
        "champion_correct": c.champion_correct,
        "challenger_correct": c.challenger_correct,
        "champion_only": c.champion_only,
        "challenger_only": c.challenger_only,
        "champion_accuracy": _num(c.champion_accuracy),
        "challenger_accuracy": _num(c.challenger_accuracy),
        "since": _iso(c.since),
        "until": _iso(c.until),
    }
