"""``streamloop tail``: follow a topic from the terminal, as a live table or JSON lines."""

from __future__ import annotations

import base64
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from rich.table import Table
from rich.text import Text

from shared.bus import DlqHeaders
from shared.events import (
    AccuracyEstimate,
    Alert,
    DecodeError,
    Event,
    LiveComparison,
    Prediction,
    RetrainRequest,
    WindowMetrics,
    decode,
)
from shared.reader import TopicReader
from shared.sdk import PredictionFilter
from shared.settings import KafkaSettings
from shared.topics import Topics

T = TypeVar("T")

__all__ = [
    "ALERT_COLUMNS",
    "EVENT_TAILS",
    "METRICS_COLUMNS",
    "PREDICTION_COLUMNS",
    "RETRAIN_COLUMNS",
    "EventSieve",
    "EventTail",
    "alert_row",
    "comparison_text",
    "dlq_record",
    "event_table",
    "follow",
    "follow_events",
    "follow_predictions",
    "metrics_row",
    "prediction_row",
    "prediction_table",
    "retrain_row",
]


def follow(
    settings: KafkaSettings,
    topics: list[str],
    *,
    last: int = 10,
    max_records: int | None = None,
    idle_timeout_s: float | None = None,
) -> Generator[Any, None, None]:
    """Records of ``topics`` (StreamLoop names; the settings' prefix is added): the ``last``
    ones already there per partition, then new ones as they come. No consumer group is used,
    so tailing never disturbs a service. Stops after ``max_records``, or after
    ``idle_timeout_s`` without a record."""
    seen = 0
    with TopicReader(settings, topics, start=last) as reader:
        if max_records is not None and max_records <= 0:
            return
        for rec in reader.follow(idle_timeout_s=idle_timeout_s, poll_ms=200, by_time=True):
            if rec is None:
                continue
            yield rec
            seen += 1
            if max_records is not None and seen >= max_records:
                return


def _text(value: bytes | None) -> tuple[str, bool]:
    if value is None:
        return "", True
    try:
        return value.decode("utf-8"), True
    except UnicodeDecodeError:
        return base64.b64encode(value).decode(), False


def dlq_record(rec: Any, prefix: str = "") -> dict[str, Any]:
    """A dead letter as a flat dict: where it came from, why, and the original payload."""
    headers = {k: (v or b"").decode("utf-8", "replace") for k, v in rec.headers or []}
    payload, is_text = _text(rec.value)
    return {
        "dlq_topic": rec.topic[len(prefix) :] if prefix else rec.topic,
        "dlq_offset": rec.offset,
        "failed_at": headers.get(DlqHeaders.FAILED_AT)
        or datetime.fromtimestamp(rec.timestamp / 1000, UTC).isoformat(),
        "source": f"{headers.get(DlqHeaders.SOURCE_TOPIC, '?')}"
        f"[{headers.get(DlqHeaders.SOURCE_PARTITION, '?')}]"
        f"@{headers.get(DlqHeaders.SOURCE_OFFSET, '?')}",
        "reason": headers.get(DlqHeaders.ERROR, "?"),
        "message": headers.get(DlqHeaders.ERROR_MESSAGE, ""),
        "group": headers.get(DlqHeaders.GROUP, ""),
        "attempts": headers.get(DlqHeaders.ATTEMPTS, ""),
        "key": _text(rec.key)[0] if rec.key is not None else None,
        "payload": payload,
        "payload_encoding": "utf-8" if is_text else "base64",
        "payload_bytes": len(rec.value or b""),
    }


DLQ_TOPICS = [Topics.FRAMES_DLQ, Topics.EVENTS_DLQ]


def follow_predictions(
    settings: KafkaSettings,
    sieve: PredictionFilter,
    *,
    shadow: bool = False,
    last: int = 10,
    max_records: int | None = None,
    idle_timeout_s: float | None = None,
) -> Iterator[Prediction]:
    """``follow`` on ``predictions`` (or ``predictions.shadow``), decoded and filtered by
    ``sieve``. ``last`` counts records per partition, ``max_records`` the predictions that
    pass the filter."""
    topic = Topics.PREDICTIONS_SHADOW if shadow else Topics.PREDICTIONS
    yield from follow_events(
        settings,
        topic,
        sieve,
        last=last,
        max_records=max_records,
        idle_timeout_s=idle_timeout_s,
    )


PREDICTION_COLUMNS = ("time", "camera", "frame", "class", "confidence", "model", "latency ms")


def prediction_row(p: Prediction) -> tuple[str, ...]:
    """One prediction as the cells of ``PREDICTION_COLUMNS`` (time is when it was served,
    UTC; latency is from capture)."""
    return (
        p.served_at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3],
        p.camera_id,
        p.frame_id,
        p.predicted_class,
        f"{p.confidence:.1%}",
        p.model_version,
        f"{p.latency_from_capture_ms:.0f}",
    )


def prediction_table(
    predictions: Iterable[Prediction], *, title: str = "predictions", skipped: int = 0
) -> Table:
    """The live table of ``streamloop tail predictions``."""
    caption = f"{skipped} undecodable records skipped" if skipped else None
    table = Table(title=f"{title} (Ctrl-C stops)", caption=caption, expand=True)
    for col in PREDICTION_COLUMNS:
        right = col in ("confidence", "latency ms")
        table.add_column(col, justify="right" if right else "left", overflow="fold")
    for p in predictions:
        table.add_row(*prediction_row(p))
    return table


# --- metrics, retrain requests, alerts ----------------------------------------------------


class EventSieve:
    """Turns record values into events of ``types``: ``None`` for a value that is none of
    them (counted in ``skipped``), so one bad record never stops a tail."""

    def __init__(self, types: Iterable[type[Event]]) -> None:
        self.types = tuple(types)
        self.skipped = 0

    def __call__(self, value: bytes | None) -> Event | None:
        try:
            event = decode(value, Event)
        except DecodeError:
            self.skipped += 1
            return None
        if not isinstance(event, self.types):
            self.skipped += 1
            return None
        return event


def follow_events(
    settings: KafkaSettings,
    topic: str,
    sieve: Callable[[bytes | None], T | None],
    *,
    last: int = 10,
    max_records: int | None = None,
    idle_timeout_s: float | None = None,
) -> Iterator[T]:
    """``follow`` on one topic, decoded by ``sieve`` (an ``EventSieve``, a prediction
    filter); ``max_records`` counts the events shown (records the sieve drops do not
    count)."""
    if max_records is not None and max_records <= 0:
        return
    records = follow(settings, [topic], last=last, idle_timeout_s=idle_timeout_s)
    shown = 0
    try:
        for rec in records:
            event = sieve(rec.value)
            if event is None:
                continue
            yield event
            shown += 1
            if max_records is not None and shown >= max_records:
                return
    finally:
        records.close()


def _clock(when: datetime) -> str:
    """A timestamp cell: UTC, to the second, with the day (windows and requests span days)."""
    return when.astimezone(UTC).strftime("%m-%d %H:%M:%S")


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def _acc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


METRICS_COLUMNS = (
    "time",
    "version",
    "stream",
    "window",
    "kind",
    "labelled/samples",
    "coverage",
    "accuracy",
    "estimated",
    "est. error",
    "macro-F1",
    "confidence",
    "PSI",
)


def estimate_text(e: AccuracyEstimate | None) -> str:
    """``0.912 (0.871-0.944)``: an estimated accuracy and its interval; ``*`` marks an
    estimate capped by the class mix."""
    if e is None:
        return "-"
    mark = "*" if e.method == "class-mix" else ""
    return f"{e.value:.3f}{mark} ({e.low:.3f}-{e.high:.3f})"


def comparison_text(c: LiveComparison) -> str:
    """``compare v3 0.41 vs v4 0.93 on 200 frames``: both versions' live accuracy on the
    same labelled frames."""
    return (
        f"compare {c.champion_version} {_acc(c.champion_accuracy)} vs "
        f"{c.challenger_version} {_acc(c.challenger_accuracy)} on {c.labelled:,} frames"
    )


PSI_NOTABLE = 0.25
"""A class-mix PSI above this is a large shift (the rule of thumb the monitor's drift policy
starts from); the metrics table shows it in yellow."""


def metrics_row(e: WindowMetrics | LiveComparison) -> tuple[str, ...]:
    """One event of ``metrics`` as the cells of ``METRICS_COLUMNS``. A window's time is when
    it closed; a comparison fills the window cell with ``comparison_text`` and its time is
    the end of the frames it covers."""
    if isinstance(e, LiveComparison):
        blank = ("",) * (len(METRICS_COLUMNS) - 4)
        return (_clock(e.until), e.champion_version, "compare", comparison_text(e), *blank)
    return (
        _clock(e.window_end),
        e.model_version,
        "shadow" if e.shadow else "live",
        e.window_id,
        e.window_kind,
        f"{e.labelled_count:,}/{e.sample_count:,}",
        f"{e.label_coverage:.1%}",
        _num(e.accuracy),
        estimate_text(e.estimate),
        _num(e.estimate_error, "+.3f"),
        _num(e.macro_f1),
        _num(e.mean_confidence),
        _num(e.psi),
    )


RETRAIN_COLUMNS = ("time", "model", "key", "trigger", "reason", "windows")


def retrain_row(r: RetrainRequest) -> tuple[str, ...]:
    """One retrain request as the cells of ``RETRAIN_COLUMNS`` (time: when it was asked)."""
    return (
        _clock(r.produced_at),
        r.model_name,
        r.idempotency_key,
        r.trigger,
        r.reason,
        ", ".join(r.window_ids) or "-",
    )


ALERT_COLUMNS = ("time", "severity", "kind", "version", "camera", "message")

SEVERITY_STYLES = {"info": "cyan", "warning": "bold yellow", "critical": "bold white on red"}


def alert_row(a: Alert) -> tuple[str, ...]:
    """One alert as the cells of ``ALERT_COLUMNS`` (``event_table`` colours the severity)."""
    return (
        _clock(a.produced_at),
        a.severity,
        a.kind,
        a.model_version or "-",
        a.camera_id or "-",
        a.message,
    )


@dataclass(frozen=True)
class EventTail:
    """What ``streamloop tail <what>`` shows for one event topic."""

    topic: str
    types: tuple[type[Event], ...]
    title: str
    columns: tuple[str, ...]
    row: Callable[[Any], tuple[str, ...]]
    right: frozenset[str] = frozenset()
    """Columns aligned right (numbers)."""


EVENT_TAILS: dict[str, EventTail] = {
    "metrics": EventTail(
        Topics.METRICS,
        (WindowMetrics, LiveComparison),
        "monitoring windows and live comparisons",
        METRICS_COLUMNS,
        metrics_row,
        frozenset(METRICS_COLUMNS[5:]),
    ),
    "retrain": EventTail(
        Topics.RETRAIN_REQUESTS, (RetrainRequest,), "retrain requests", RETRAIN_COLUMNS, retrain_row
    ),
    "alerts": EventTail(Topics.ALERTS, (Alert,), "alerts", ALERT_COLUMNS, alert_row),
}


def _styled(tail: EventTail, event: Event, cells: tuple[str, ...]) -> list[Text | str]:
    out: list[Text | str] = list(cells)
    if isinstance(event, Alert):
        i = tail.columns.index("severity")
        out[i] = Text(cells[i], style=SEVERITY_STYLES.get(event.severity, ""))
    elif isinstance(event, LiveComparison):
        out[3] = Text(cells[3], style="bold")
    elif isinstance(event, WindowMetrics):
        if event.shadow:
            out[2] = Text(cells[2], style="magenta")
        if event.psi is not None and event.psi > PSI_NOTABLE:
            i = tail.columns.index("PSI")
            out[i] = Text(cells[i], style="bold yellow")
    return out


def event_table(tail: EventTail, events: Iterable[Event], *, skipped: int = 0) -> Table:
    """The live table of ``streamloop tail metrics|retrain|alerts``."""
    caption = f"{skipped} records of other types or undecodable skipped" if skipped else None
    table = Table(title=f"{tail.title} (Ctrl-C stops)", caption=caption, expand=True)
    for col in tail.columns:
        table.add_column(col, justify="right" if col in tail.right else "left", overflow="fold")
    for e in events:
        table.add_row(*_styled(tail, e, tail.row(e)))
    return table
