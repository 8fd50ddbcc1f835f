"""``streamloop tail``: follow a topic from the terminal, as a live table or JSON lines."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from shared.bus import DlqHeaders
from shared.settings import KafkaSettings
from shared.topics import Topics

__all__ = ["dlq_record", "follow"]


def follow(
    settings: KafkaSettings,
    topics: list[str],
    *,
    last: int = 10,
    max_records: int | None = None,
    idle_timeout_s: float | None = None,
) -> Iterator[Any]:
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
