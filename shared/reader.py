"""Reading topics without a consumer group: the one reader behind every replay and viewer.

A ``TopicReader`` assigns itself the partitions of its topics and seeks, so it never joins
a group, never commits, and never takes partitions from the services that own the topics:
the registry replays ``models.lifecycle``, serving follows it, training and evaluation read
``examples``, and the CLI, the demo and the dashboard watch whatever they show. Where each
partition starts is the ``start`` policy: its beginning, its end, or its last N records.

A poll that cannot reach the broker reads as an empty poll after a pause
(``poll_through_outage``): a reader waits out an outage instead of raising it to the service
that follows a topic.

Topics are named as StreamLoop names them; the settings' prefix is added here, and
``logical`` takes it off a record's topic again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from shared.errors import poll_through_outage
from shared.fetch import AT_REST_AFTER_S, AT_REST_WAIT_MS, FetchPacing
from shared.settings import KafkaSettings

__all__ = ["ConsumerRecord", "RecordCounter", "Start", "TopicReader", "offsets_at"]

Start = Literal["beginning", "end"] | int
"""Where a partition is first read: ``"beginning"``, ``"end"`` (only what comes after), or
an int N (its last N records, or its beginning when it holds fewer)."""


def offsets_at(
    consumer: KafkaConsumer, partitions: Sequence[TopicPartition], at: datetime
) -> dict[TopicPartition, int]:
    """Each partition's offset of its first record with a timestamp at or after ``at``
    (naive means UTC), or its end offset when it holds none such."""
    if not partitions:
        return {}
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    ms = int(at.timestamp() * 1000)
    found = consumer.offsets_for_times({tp: ms for tp in partitions})
    ends = consumer.end_offsets(list(partitions))
    return {tp: hit.offset if (hit := found.get(tp)) is not None else ends[tp] for tp in partitions}


class TopicReader:
    """Records of ``topics`` read without a consumer group; close it (or use ``with``).

    A topic that does not exist yet is not an error: it holds no partitions until it
    appears and ``refresh`` is called. Positions are resolved at construction (or at the
    ``refresh`` that finds a partition), so a record published after that is always read.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topics: Sequence[str],
        *,
        start: Start = "beginning",
        **consumer_kwargs: Any,
    ) -> None:
        self._prefix = settings.topic_prefix
        self._names = [self._prefix + t for t in topics]
        self._start = start
        self._consumer = KafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            # What an aborted transaction wrote (ingest's and serving's, after a crash or a
            # fence) is not read, nor what an open one wrote until it commits.
            isolation_level="read_committed",
            **{**settings.client_kwargs(), **consumer_kwargs},
        )
        config = getattr(self._consumer, "config", {})
        # A reader that follows a topic (``poll``, ``follow``) waits at rest as the consumer
        # loops do: after a quiet spell the broker holds its fetch and a poll waits longer.
        self._pacing = FetchPacing(
            config.get("fetch_min_bytes", 1),
            config.get("fetch_max_wait_ms", 500),
            AT_REST_AFTER_S,
            AT_REST_WAIT_MS,
        )
        self._assigned: list[TopicPartition] = []
        try:
            self.refresh()
        except BaseException:
            self._consumer.close()
            raise

    # --- partitions ----------------------------------------------------------------------

    @property
    def partitions(self) -> list[TopicPartition]:
        """The partitions read so far, in topic and partition order."""
        return list(self._assigned)

    def refresh(self) -> set[TopicPartition]:
        """Assign the partitions that appeared since the last call, each positioned by the
        start policy; partitions already read keep their positions. Returns the new ones."""
        known = self._consumer.topics()
        found: list[TopicPartition] = []
        for name in self._names:
            if name not in known:
                continue
            for p in sorted(self._consumer.partitions_for_topic(name) or ()):
                found.append(TopicPartition(name, p))
        assigned = set(self._assigned)
        new = [tp for tp in found if tp not in assigned]
        if not new:
            return set()
        self._assigned = sorted(assigned | set(new))
        self._consumer.assign(self._assigned)
        self._position(new)
        return set(new)

    def _position(self, tps: list[TopicPartition]) -> None:
        if self._start == "beginning":
            self._consumer.seek_to_beginning(*tps)
        elif self._start == "end":
            self._consumer.seek_to_end(*tps)
        else:
            ends = self._consumer.end_offsets(tps)
            begins = self._consumer.beginning_offsets(tps)
            for tp in tps:
                self._consumer.seek(tp, self._last_records(tp, begins[tp], ends[tp], self._start))
        for tp in tps:  # resolve now: what is published from here on is read
            self._consumer.position(tp)

    def _last_records(self, tp: TopicPartition, begin: int, end: int, n: int) -> int:
        """The offset from which ``tp`` holds its last ``n`` readable records (or its
        beginning). Usually ``end - n``; on a topic written in transactions further back,
        since each transaction's commit marker takes an offset of its own and an aborted
        transaction's records are not read: the span before the end is widened until it
        holds ``n`` records."""
        if n <= 0 or end - begin <= n:
            return max(begin, end - max(n, 0))
        others = [p for p in self._assigned if p != tp]
        self._consumer.pause(*others)
        try:
            span = n
            while True:
                start = max(begin, end - span)
                self._consumer.seek(tp, start)
                offsets: list[int] = []
                deadline = time.monotonic() + 60
                while self._consumer.position(tp) < end:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"reading the last {n} records of {tp} took over 60 s")
                    polled = self._poll(500)
                    offsets.extend(r.offset for r in polled.get(tp, ()) if r.offset < end)
                if len(offsets) >= n:
                    return offsets[-n]
                if start == begin:
                    return begin
                span *= 2
        finally:
            self._consumer.resume(*others)

    def positions(self) -> dict[TopicPartition, int]:
        """The offset of the next record each partition will return."""
        return {tp: self._consumer.position(tp) for tp in self._assigned}

    def seek(self, offsets: dict[TopicPartition, int]) -> None:
        """Read each partition of ``offsets`` from that offset on."""
        for tp, offset in offsets.items():
            self._consumer.seek(tp, offset)

    def seek_to_time(self, at: datetime) -> None:
        """Read each partition from its first record with a timestamp at or after ``at``
        (naive means UTC); a partition with none such is read from its end."""
        for tp, offset in offsets_at(self._consumer, self._assigned, at).items():
            self._consumer.seek(tp, offset)

    def end_offsets(self) -> dict[TopicPartition, int]:
        """Each partition's end offset now (the offset its next record will get)."""
        return dict(self._consumer.end_offsets(self._assigned)) if self._assigned else {}

    def count(self, topic: str | None = None) -> int:
        """Records held now (end minus beginning offsets) by ``topic``, or by every topic:
        an upper bound on what a compacted topic holds, cheap enough to poll."""
        tps = [tp for tp in self._assigned if topic is None or tp.topic == self._prefix + topic]
        if not tps:
            return 0
        ends = self._consumer.end_offsets(tps)
        begins = self._consumer.beginning_offsets(tps)
        return sum(max(ends[tp] - begins[tp], 0) for tp in tps)

    def logical(self, topic: str) -> str:
        """StreamLoop's name of a record's ``topic`` (the prefix taken off)."""
        return topic[len(self._prefix) :] if topic.startswith(self._prefix) else topic

    # --- records -------------------------------------------------------------------------

    def poll(self, timeout_ms: int = 500, max_records: int | None = None) -> list[ConsumerRecord]:
        """One poll's records, in partition order. After ``shared.fetch.AT_REST_AFTER_S``
        without a record it waits up to ``AT_REST_POLL_MS`` instead of ``timeout_ms`` (it
        returns at the first record either way)."""
        if not self._assigned:
            time.sleep(timeout_ms / 1000)
            return []
        polled = self._poll(self._pacing.poll_timeout_ms(timeout_ms), max_records)
        records = [rec for batch in polled.values() for rec in batch]
        self._pacing.observe(self._consumer, len(records), time.monotonic())
        return records

    def _poll(self, timeout_ms: int, max_records: int | None = None) -> dict[Any, list[Any]]:
        return poll_through_outage(
            self._consumer,
            timeout_ms=timeout_ms,
            max_records=max_records,
            pause=time.sleep,
            who=",".join(self._names),
        )

    def until_end(
        self,
        ends: dict[TopicPartition, int] | None = None,
        *,
        timeout_s: float | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        progress_every: int = 5000,
        max_records: int | None = None,
    ) -> Iterator[ConsumerRecord]:
        """Every record from the current positions up to the end offsets taken when the
        iteration starts (or up to ``ends``, from ``end_offsets``, when the caller must know
        the cut it read): a well-defined cut of the log. ``on_progress(read, total)`` is
        called every ``progress_every`` records and once at the end.

        Raises TimeoutError when the end is not reached within ``timeout_s``."""
        ends = self.end_offsets() if ends is None else ends
        positions = {tp: self._consumer.position(tp) for tp in self._assigned}
        total = sum(max(ends[tp] - positions[tp], 0) for tp in self._assigned)
        remaining = {tp for tp in self._assigned if positions[tp] < ends[tp]}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        read, next_report = 0, progress_every
        while remaining:
            if deadline is not None and time.monotonic() > deadline:
                names = sorted({tp.topic for tp in remaining})
                raise TimeoutError(
                    f"reading {', '.join(names)} did not reach its end in {timeout_s}s"
                )
            polled = self._poll(500, max_records)
            for tp, batch in polled.items():
                end = ends[tp]
                for rec in batch:
                    if rec.offset < end:
                        read += 1
                        yield rec
            remaining = {tp for tp in remaining if self._consumer.position(tp) < ends[tp]}
            if on_progress is not None and read >= next_report:
                on_progress(read, total)
                next_report = read + progress_every
        if on_progress is not None:
            on_progress(read, total)

    def follow(
        self,
        *,
        stop: threading.Event | None = None,
        timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
        poll_ms: int = 500,
        by_time: bool = False,
    ) -> Iterator[ConsumerRecord | None]:
        """Records as they come, in partition order (or, ``by_time``, in timestamp order
        within each poll, for people reading several topics), and ``None`` after each poll
        that brought nothing (so a caller can look elsewhere in between). Ends when ``stop``
        is set or after ``idle_timeout_s`` without a record.

        Raises TimeoutError after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        idle_since = time.monotonic()
        while stop is None or not stop.is_set():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"nothing more within {timeout_s:.0f}s")
            records = self.poll(poll_ms)
            if by_time:
                records.sort(key=lambda r: r.timestamp)
            if not records:
                if idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s:
                    return
                yield None
                continue
            idle_since = time.monotonic()
            yield from records

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class RecordCounter:
    """Counts the records ``topic`` holds (``TopicReader.count``) each time it is called,
    with one reader, opened on the first call, that also finds the topic once it exists."""

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        self._settings = settings
        self._topic = topic
        self._reader: TopicReader | None = None

    def __call__(self) -> int:
        if self._reader is None:
            self._reader = TopicReader(self._settings, [self._topic], start="end")
        else:
            self._reader.refresh()
        return self._reader.count()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def __enter__(self) -> RecordCounter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
