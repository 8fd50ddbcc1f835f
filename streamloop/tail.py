"""``streamloop tail``: follow a topic from the terminal, as a live table or JSON lines."""

from __future__ import annotations

import base64
import time
from collections.abc import Generator, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from rich.table import Table

from shared.bus import DlqHeaders
from shared.events import Prediction
from shared.sdk import PredictionFilter
from shared.settings import KafkaSettings
from shared.topics import Topics

__all__ = [
    "PREDICTION_COLUMNS",
    "dlq_record",
    "follow",
    "follow_predictions",
    "prediction_row",
    "prediction_table",
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
    consumer = KafkaConsumer(enable_auto_commit=False, **settings.client_kwargs())
    try:
        tps = [
            TopicPartition(settings.topic_prefix + t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(settings.topic_prefix + t) or ())
        ]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        begins = consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(begins[tp], ends[tp] - last))
        seen = 0
        idle_since = time.monotonic()
        while max_records is None or seen < max_records:
            polled = consumer.poll(timeout_ms=200)
            records = sorted(
                (r for batch in polled.values() for r in batch), key=lambda r: r.timestamp
            )
            if not records:
                if idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s:
                    return
                continue
            idle_since = time.monotonic()
            for rec in records:
                yield rec
                seen += 1
                if max_records is not None and seen >= max_records:
                    return
    finally:
        consumer.close()


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
    if max_records is not None and max_records <= 0:
        return
    topic = Topics.PREDICTIONS_SHADOW if shadow else Topics.PREDICTIONS
    records = follow(settings, [topic], last=last, idle_timeout_s=idle_timeout_s)
    shown = 0
    try:
        for rec in records:
            prediction = sieve(rec.value)
            if prediction is None:
                continue
            yield prediction
            shown += 1
            if max_records is not None and shown >= max_records:
                return
    finally:
        records.close()


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
