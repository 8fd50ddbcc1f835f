"""What the monitor publishes once, across a kill: windows, comparisons, retrain requests and
alerts.

The monitor folds an observation into its ``state`` table and then publishes what the fold
produced. A worker killed between the two would either publish again what it had already
published (the fold not yet on the table's changelog when the publish was) or never publish
it (the other way round). So a fold that produces any of these outputs also writes them to
``state`` as its outbox, and the app waits for the changelog to hold the fold, its offset and
the outbox before it publishes. A restarted monitor that finds an outbox reads the output
topics from a little before the outbox was written and publishes only the records whose
``event_id`` it does not find there.

Label requests stay out of the outbox: they are many at a drift, and a request sent twice is
answered by a label the join already holds, which counts for nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.monitoring.monitor import Outputs
from shared.events import (
    Alert,
    Event,
    LiveComparison,
    RetrainRequest,
    WindowMetrics,
    decode,
    encode,
)
from shared.reader import TopicReader
from shared.settings import KafkaSettings
from shared.topics import Topics

__all__ = ["EMPTY", "OUTBOX", "SLACK", "Outbox", "PublishedIds", "event_ids_since"]

OUTBOX = "outbox/published"
"""The ``state`` document holding the outputs of the last fold that produced any."""

EMPTY: dict[str, Any] = {"events": []}
"""The outbox document once its outputs were published."""

SLACK = timedelta(seconds=60)
"""How far before the outbox's time its topics are read back: a record's timestamp is its
producer's clock, which may lag the monitor's."""

PublishedIds = Callable[[Sequence[str], datetime], set[str]]
"""The ``event_id`` of every record on the given topics with a timestamp at or after the given
time (the port the app reads its output topics through after a restart)."""


def _topic(event: Event) -> str:
    if isinstance(event, RetrainRequest):
        return Topics.RETRAIN_REQUESTS
    if isinstance(event, Alert):
        return Topics.ALERTS
    return Topics.METRICS


@dataclass(frozen=True)
class Outbox:
    """The outputs of one fold that are published exactly once, with when they were folded."""

    at: datetime
    events: tuple[Event, ...]

    @classmethod
    def of(cls, out: Outputs, at: datetime) -> Outbox | None:
        """The outbox of ``out``; ``None`` when it holds nothing but label requests."""
        events: tuple[Event, ...] = (*out.windows, *out.comparisons, *out.retrains, *out.alerts)
        return cls(at, events) if events else None

    @property
    def topics(self) -> list[str]:
        return sorted({_topic(e) for e in self.events})

    def dump(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "events": [encode(e).decode() for e in self.events],
        }

    @classmethod
    def load(cls, doc: dict[str, Any]) -> Outbox | None:
        """The outbox a document holds; ``None`` for an emptied one."""
        events = tuple(decode(e.encode(), Event) for e in doc.get("events", ()))
        return cls(datetime.fromisoformat(doc["at"]), events) if events else None

    def unpublished(self, published: PublishedIds) -> Outputs:
        """What of the outbox its topics do not hold, as outputs to publish."""
        found = published(self.topics, self.at - SLACK)
        out = Outputs()
        for e in self.events:
            if e.event_id in found:
                continue
            if isinstance(e, WindowMetrics):
                out.windows.append(e)
            elif isinstance(e, LiveComparison):
                out.comparisons.append(e)
            elif isinstance(e, RetrainRequest):
                out.retrains.append(e)
            elif isinstance(e, Alert):
                out.alerts.append(e)
        return out


def event_ids_since(kafka: KafkaSettings) -> PublishedIds:
    """``PublishedIds`` read from the broker (without a consumer group, committed records)."""

    def published(topics: Sequence[str], since: datetime) -> set[str]:
        with TopicReader(kafka, topics) as reader:
            reader.seek_to_time(since)
            found: set[str] = set()
            for rec in reader.until_end(timeout_s=60):
                try:
                    found.add(str(json.loads(rec.value)["event_id"]))
                except (ValueError, TypeError, KeyError):
                    continue  # not an event of ours: it cannot be one the outbox holds
            return found

    return published
