"""The dashboard's feed: a background thread that reads the topics the page shows into a
``DashboardState``.

The feed is a viewer, not a processor: it joins no consumer group and commits nothing, so
it never takes partitions from the services that own these topics and any number of
dashboards can run side by side. It starts ``history`` records before the end of each
partition, so a freshly opened page already shows the recent past, then follows the topics
live. Topics that do not exist yet (a deployment still coming up) are picked up when they
appear: the assignment is re-checked every ``refresh_s`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from kafka import TopicPartition

from services.monitoring.board import DLQ_TOPICS, DashboardState
from shared.bus import DEFAULT_MAX_MESSAGE_BYTES, DlqHeaders
from shared.events import DecodeError, Event, decode
from shared.reader import TopicReader
from shared.settings import KafkaSettings
from shared.topics import Topics

__all__ = ["FEED_TOPICS", "DashboardFeed", "fold_record"]

log = logging.getLogger(__name__)

FEED_TOPICS: tuple[str, ...] = (
    Topics.METRICS,
    Topics.RETRAIN_REQUESTS,
    Topics.MODELS_TRAINED,
    Topics.MODELS_EVALUATED,
    Topics.MODELS_LIFECYCLE,
    Topics.ALERTS,
    Topics.FRAMES_DLQ,
    Topics.EVENTS_DLQ,
)
"""What the dashboard reads (names without the deployment's prefix)."""


def _header(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name and value is not None:
            return value.decode("utf-8", errors="replace")
    return None


def fold_record(
    state: DashboardState,
    topic: str,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None = None,
) -> bool:
    """Fold one record read from ``topic`` (without the prefix) into ``state``.

    A dead letter is counted, never decoded (it holds whatever bytes were refused). Any
    other record is decoded as an event; one that does not decode is skipped, because the
    dashboard must keep drawing whatever else the topic carries. Returns False when the
    record was skipped.
    """
    if topic in DLQ_TOPICS:
        state.count_dlq(topic, _header(headers, DlqHeaders.ERROR))
        return True
    try:
        event = decode(value, Event, max_bytes=DEFAULT_MAX_MESSAGE_BYTES)
    except DecodeError as exc:
        log.debug("dashboard skipped a record", extra={"topic": topic, "reason": exc.reason})
        return False
    state.apply(event, topic)
    return True


class DashboardFeed:
    """Reads the dashboard's topics into ``state`` from a daemon thread.

    ``start`` returns at once: the thread connects (and keeps retrying while Kafka is not
    reachable) on its own. ``stop`` ends the thread and closes the consumer.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        state: DashboardState,
        *,
        history: int = 2000,
        refresh_s: float = 5.0,
        poll_ms: int = 250,
    ) -> None:
        if history < 0:
            raise ValueError("history must be >= 0")
        if refresh_s <= 0:
            raise ValueError("refresh_s must be > 0")
        self._kafka = kafka
        self._state = state
        self._history = history
        self._refresh_s = refresh_s
        self._poll_ms = poll_ms
        self._prefix = kafka.topic_prefix
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._assigned: set[TopicPartition] = set()
        self.records = 0
        """Records read so far (folded or skipped)."""

    @property
    def topics(self) -> list[str]:
        """The full (prefixed) names of the topics the feed reads."""
        return [self._prefix + t for t in FEED_TOPICS]

    def assignment(self) -> set[TopicPartition]:
        """The partitions read so far (a copy)."""
        return set(self._assigned)

    def start(self) -> None:
        """Start the reading thread (once)."""
        if self._thread is not None:
            raise RuntimeError("the feed has already been started")
        self._thread = threading.Thread(target=self._run, name="dashboard-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop reading and wait up to ``timeout_s`` for the thread to close its consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> DashboardFeed:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        reader = self._connect()
        if reader is None:
            return
        try:
            next_refresh = time.monotonic() + self._refresh_s
            failing = False
            while not self._stop.is_set():
                try:
                    if time.monotonic() >= next_refresh:
                        self._note(reader.refresh())
                        next_refresh = time.monotonic() + self._refresh_s
                    if not self._assigned:
                        self._stop.wait(min(self._refresh_s, 0.5))
                        continue
                    for rec in reader.poll(self._poll_ms, max_records=500):
                        self.records += 1
                        fold_record(self._state, reader.logical(rec.topic), rec.value, rec.headers)
                    if failing:
                        failing = False
                        log.info("dashboard feed recovered")
                except Exception:
                    # A viewer must outlive broker outages: say so once, then keep retrying.
                    log.log(
                        logging.DEBUG if failing else logging.WARNING,
                        "dashboard feed error; retrying",
                        exc_info=True,
                    )
                    failing = True
                    self._stop.wait(1.0)
        finally:
            reader.close()

    def _connect(self) -> TopicReader | None:
        """A reader of the feed's topics, each partition ``history`` records before its end
        (or at its beginning); retried until Kafka answers or the feed stops."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                reader = TopicReader(
                    self._kafka,
                    FEED_TOPICS,
                    start=self._history,
                    auto_offset_reset="earliest",
                    client_id="streamloop-dashboard",
                )
            except Exception:
                log.warning("dashboard feed cannot reach Kafka; retrying", exc_info=True)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            self._note(set(reader.partitions))
            return reader
        return None

    def _note(self, new: set[TopicPartition]) -> None:
        if not new:
            return
        self._assigned = self._assigned | new
        log.info(
            "dashboard feed reads new partitions",
            extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in new)},
        )
