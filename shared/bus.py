"""The Kafka bus: one producer and one consumer loop that every service uses.

Producer: ``acks=all`` and idempotence on; every publish opens a PRODUCER span and writes its
W3C trace context into the record headers.

Consumer loop (at-least-once; exactly once with a transactional producer):

- poll a batch; decode each record into the topic's event type;
- a record that does not decode (not JSON, wrong schema, too large) goes straight to the
  dead-letter topic: retrying a deterministic failure is pointless; so does one whose handler
  raises ``Rejected`` (or that a batch handler returns as a ``Rejection``);
- the handler runs inside a CONSUMER span whose parent is the producer's span; a handler
  that raises is retried ``max_attempts`` times with backoff, then the record is
  dead-lettered and the loop moves on;
- a handler that fails because a dependency did not answer (``shared.errors.is_transient``:
  Kafka, Redis or the model tier down) is retried with the capped backoff for as long as
  ``transient_budget_s`` without using up its attempts: an outage of minutes delays records,
  it does not dead-letter valid ones;
- offsets are committed only after the handler returned (or the record was dead-lettered)
  and after everything the handler published was acknowledged by Kafka; when a publish was
  not acknowledged (the broker was away past the delivery timeout), the batch is not
  committed and the consumer seeks back to process it again;
- ``stop()`` (wired to SIGTERM/SIGINT by ``stop_on_signals``) lets the record in hand finish,
  flushes, commits and closes.

With a transactional producer (``EventProducer(transactional_id=...)``: ingest and serving
when their transactions are on), each polled batch is one transaction: what its handler
published, its dead letters and its offsets commit together, or none of them does. An
attempt that fails publishes nothing (its outputs are staged until it returns), so a retry
does not repeat them. A transaction that
does not commit (the broker away, or the group rebalanced and the broker fenced this member
by its generation) is aborted and its records are read again from the committed offsets.
Consumers read committed records only (``isolation_level=read_committed``), so what an
aborted transaction or a killed process wrote is never seen.

A batch handler (serving) receives every decodable record of one poll at once; when the
batch keeps failing, its records are retried one by one so a single poison record cannot
block the rest.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any, Generic, TypeVar

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError, KafkaTimeoutError
from kafka.future import Future
from kafka.structs import OffsetAndMetadata
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from shared.errors import is_transient, poll_through_outage
from shared.events import DecodeError, Event, decode, encode
from shared.fetch import AT_REST_AFTER_S, AT_REST_WAIT_MS, FetchPacing
from shared.metrics import BUS_METRICS
from shared.ports import (
    BatchHandler,
    Handler,
    Message,
    Publisher,
    Rejected,
    Rejection,
    Unavailable,
)
from shared.settings import KafkaSettings
from shared.telemetry import Headers, dead_letter_span, extract_context, inject_headers
from shared.topics import FRAME_DLQ_MAX_BYTES, dlq_for

__all__ = [
    "PRODUCER_DEFAULTS",
    "BatchHandler",
    "ConsumerLoop",
    "DlqHeaders",
    "EventProducer",
    "Handler",
    "Message",
    "Publisher",
    "Rejected",
    "Rejection",
    "RetryPolicy",
    "dead_letter_headers",
    "member_lost",
    "stop_on_signals",
]

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)

PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    # A few ms of linger lets records of one poll share a request; frames are a few KB.
    "linger_ms": 5,
    # Frames on frames.valid are ~16 KB: 1 MB batches cut the sender thread's per-record cost
    # (measured: 82 us against 136 us per 16.5 KB record with 256 KB batches).
    "batch_size": 1024 * 1024,
    # The client-side cap on one record: large enough for a camera frame on frames.raw (and
    # its dead letter); each topic's max.message.bytes still bounds what the broker takes.
    "max_request_size": FRAME_DLQ_MAX_BYTES,
}
"""kafka-python producer settings of ``EventProducer`` (overridable per producer)."""

DEFAULT_MAX_MESSAGE_BYTES = 1_500_000
"""Largest payload a consumer accepts (a 1 MB image grows by a third in base64)."""


class DlqHeaders:
    """Header names added to every dead-lettered record (the original headers are kept)."""

    SOURCE_TOPIC = "dlq.source_topic"
    SOURCE_PARTITION = "dlq.source_partition"
    SOURCE_OFFSET = "dlq.source_offset"
    ERROR = "dlq.error"
    """Stable reason code, e.g. ``not_json``, ``schema``, ``too_large``, ``handler_error``."""
    ERROR_MESSAGE = "dlq.error_message"
    ATTEMPTS = "dlq.attempts"
    GROUP = "dlq.group"
    FAILED_AT = "dlq.failed_at"


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing handler is tried before its record is dead-lettered."""

    max_attempts: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    transient_budget_s: float = 900.0
    """How long a record failing for a dependency's sake is retried before it counts as an
    ordinary failure. A dependency away for longer is an outage for a person; its records
    then go to the DLQ, which keeps them for replay."""

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (min(attempt, 32) - 1)))


def _tracer(tracer: trace.Tracer | None) -> trace.Tracer:
    return tracer or trace.get_tracer("streamloop.bus")


# --- producer --------------------------------------------------------------------------


class EventProducer:
    """Publishes events (and raw records, for dead letters) with trace context in headers.

    With a ``transactional_id`` it is a transactional producer: ``begin``, then what is
    published, then ``commit`` with the consumed offsets (or ``abort``), all or nothing for
    ``read_committed`` readers. One thread uses it (the consumer loop's); ``staged`` holds
    back what an attempt publishes until the attempt succeeds. A new producer with the same
    id fences the old one and aborts whatever transaction it left open."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        client_id: str = "streamloop",
        tracer: trace.Tracer | None = None,
        transactional_id: str | None = None,
        transaction_timeout_ms: int = 10_000,
        **overrides: Any,
    ) -> None:
        config: dict[str, Any] = {
            **PRODUCER_DEFAULTS,
            "client_id": client_id,
            **settings.client_kwargs(),
        }
        if transactional_id is not None:
            config.update(
                transactional_id=transactional_id, transaction_timeout_ms=transaction_timeout_ms
            )
        config.update(overrides)
        self._config = config
        self.transactional_id = transactional_id
        self._txn_wait_ms = transaction_timeout_ms
        """How long ``commit`` and ``abort`` wait for Kafka: the broker aborts a transaction
        left open longer than this anyway."""
        self._tracer = _tracer(tracer)
        self.topic_prefix = settings.topic_prefix
        self._failed: list[BaseException] = []
        """Sends Kafka did not acknowledge since the last ``flush`` (appended by the
        client's sender thread)."""
        self._staged: list[tuple[Future, tuple[str, bytes | None, bytes | None, Headers]]] | None
        self._staged = None
        self._producer = self._open()

    def _open(self) -> KafkaProducer:
        producer = KafkaProducer(**self._config)
        if self.transactional_id is not None:
            try:
                # Fences any older producer with this id and aborts its open transaction.
                producer.init_transactions()
            except BaseException:
                producer.close(timeout=0)
                raise
        return producer

    def publish(
        self,
        topic: str,
        event: Event,
        *,
        key: str | None = None,
        headers: Headers | None = None,
        context: Context | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> Future:
        """Send ``event`` to ``topic``; the future resolves when Kafka acknowledged it.

        ``context`` parents the PRODUCER span (default: the current span), so a batch
        handler can continue each input record's own trace; ``attributes`` are added to it.
        Under a parent that is not sampled there is no span: the parent's context is sent.
        """
        topic = self.topic_prefix + topic
        value = encode(event)
        raw_key = key.encode() if key is not None else None
        parent = trace.get_current_span(context).get_span_context()
        if parent.is_valid and not parent.trace_flags.sampled:
            # A trace that is not kept records no span of its own (sampling is parent-based,
            # ``shared.telemetry``): the record carries its parent's context on, and this
            # hot path (every frame at a frames ratio of 1 %) skips a span that would
            # record nothing.
            return self._send(topic, value, raw_key, inject_headers(headers, context))
        attrs: dict[str, str] = {
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.message.id": event.event_id,
        }
        if attributes:
            attrs.update(attributes)
        # start_span + an explicit context (no attach/detach): this runs once per record.
        span = self._tracer.start_span(
            f"{topic} publish", context=context, kind=SpanKind.PRODUCER, attributes=attrs
        )
        try:
            return self._send(
                topic, value, raw_key, inject_headers(headers, trace.set_span_in_context(span))
            )
        finally:
            span.end()

    def publish_raw(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: Headers
    ) -> Future:
        """Send bytes as they are (dead letters keep the original payload)."""
        return self._send(self.topic_prefix + topic, value, key, inject_headers(headers))

    def _send(self, topic: str, value: bytes | None, key: bytes | None, headers: Headers) -> Future:
        if self._staged is not None:
            held = Future()
            self._staged.append((held, (topic, value, key, headers)))
            return held
        future = self._producer.send(topic, value=value, key=key, headers=headers)
        future.add_errback(self._failed.append)
        return future

    @contextmanager
    def staged(self) -> Iterator[None]:
        """On a transactional producer, hold back what is published inside the block and
        send it when the block returns; drop it when the block raises (a failed attempt's
        outputs must not join the transaction that its retry also writes to). Elsewhere, it
        changes nothing."""
        if self.transactional_id is None or self._staged is not None:
            yield
            return
        self._staged = []
        try:
            yield
        except BaseException:
            self._staged = None
            raise
        staged, self._staged = self._staged, None
        for held, (topic, value, key, headers) in staged:
            self._send(topic, value, key, headers).chain(held)

    # -- transactions (transactional producers only) -------------------------------------

    def begin(self) -> None:
        """Open a transaction."""
        self._producer.begin_transaction()

    def commit(
        self, offsets: Mapping[TopicPartition, OffsetAndMetadata], group_metadata: Any
    ) -> None:
        """Commit the open transaction with the consumer's ``offsets``; ``group_metadata``
        (``KafkaConsumer.group_metadata()``) lets the broker fence a consumer that is no
        longer a member of its generation of the group. Raises ``KafkaError`` when the
        transaction did not commit (it must be aborted)."""
        # Outputs first (the commit would flush them anyway): a fenced member's outputs are
        # then in the log, aborted, rather than dropped unsent, and either way never read.
        self._producer.flush(timeout=self._txn_wait_ms / 1000)
        manager = self._producer._transaction_manager
        if offsets:
            self._wait(
                manager.send_offsets_to_transaction(dict(offsets), group_metadata), "the offsets"
            )
        self._wait(manager.begin_commit(), "the commit")
        self._failed.clear()

    def _wait(self, result: Any, what: str) -> None:
        """Wait for one of the transaction manager's requests, for at most the transaction
        timeout. kafka-python's ``commit_transaction`` and ``abort_transaction`` wait without
        a bound, and after the broker holding a transaction's coordinator or a partition's
        leadership was killed they were seen waiting for minutes; ``init_transactions``
        waits at most ``max_block_ms``, and this does the same, through the same private
        request objects."""
        self._producer._sender.wakeup()
        if not result.wait(timeout_ms=self._txn_wait_ms):
            raise KafkaTimeoutError(f"{what} not confirmed within {self._txn_wait_ms} ms")

    def abort(self) -> None:
        """Abort the open transaction. When this producer cannot (fenced, in a fatal state,
        or the broker away), it is replaced by a new one with the same id, whose start
        aborts the transaction on the broker. Raises ``KafkaError`` when Kafka does not
        answer (call again)."""
        self._failed.clear()
        self._staged = None
        try:
            self._wait(self._producer._transaction_manager.begin_abort(), "the abort")
            return
        except KafkaError as exc:
            log.warning(
                "cannot abort the transaction; starting a new producer",
                extra={"transactional_id": self.transactional_id, "error": str(exc)},
            )
        self._producer.close(timeout=0)
        self._producer = self._open()

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every record sent so far is acknowledged. Raises ``Unavailable`` when
        a record sent since the last flush was not (it is not coming: the caller must send
        it again), ``KafkaTimeoutError`` when ``timeout_s`` passes first."""
        self._producer.flush(timeout=timeout_s)
        if self._failed:
            failed, self._failed = self._failed, []
            raise Unavailable(
                f"{len(failed)} records were not acknowledged by Kafka: {failed[0]!r}"
            ) from failed[0]

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.close(timeout=timeout_s)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# --- consumer loop ---------------------------------------------------------------------


class ConsumerLoop(Generic[E]):
    """Consumes ``topics`` as consumer group ``group_id`` and calls one handler per record
    (``handler``) or per polled batch (``batch_handler``). See the module docstring."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        group_id: str,
        topics: Sequence[str],
        event_type: type[E],
        producer: EventProducer,
        handler: Handler[E] | None = None,
        batch_handler: BatchHandler[E] | None = None,
        retry: RetryPolicy | None = None,
        tracer: trace.Tracer | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_poll_records: int = 500,
        poll_timeout_ms: int = 200,
        auto_offset_reset: str = "earliest",
        dlq_topic_for: Callable[[str], str] = dlq_for,
        client_id: str | None = None,
        member_lost_after_s: float = 30.0,
        pacing: FetchPacing | None = None,
        **consumer_overrides: Any,
    ) -> None:
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler or batch_handler")
        self.group_id = group_id
        self.topics = list(topics)
        self._prefix = settings.topic_prefix
        self._event_type = event_type
        self._handler = handler
        self._batch_handler = batch_handler
        self._producer = producer
        self._retry = retry or RetryPolicy()
        self._tracer = _tracer(tracer)
        self._max_bytes = max_message_bytes
        self._max_poll_records = max_poll_records
        self._poll_timeout_ms = poll_timeout_ms
        self._dlq_topic_for = dlq_topic_for
        self._member_lost_after_s = member_lost_after_s
        self._stop = threading.Event()
        config: dict[str, Any] = {
            "group_id": group_id,
            "client_id": client_id or group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": auto_offset_reset,
            "max_poll_records": max_poll_records,
            "fetch_min_bytes": 1,
            "fetch_max_wait_ms": 500,
            "fetch_max_bytes": 32 * 1024 * 1024,
            "max_partition_fetch_bytes": 4 * 1024 * 1024,
            # Records of aborted transactions (and of open ones, until they end) are not read.
            "isolation_level": "read_committed",
            # A member that died is out of the group 10 s after its last heartbeat (the
            # client's default is 45 s): a restarted instance waits that long for its
            # partitions, the rebalance waiting for the dead member to leave.
            "session_timeout_ms": 10_000,
            "heartbeat_interval_ms": 3_000,
            # A member that joined before it knew a topic's partitions was assigned none of
            # them; it learns them at the next metadata refresh (by default 5 minutes on).
            "metadata_max_age_ms": 10_000,
            **settings.client_kwargs(),
        }
        config.update(consumer_overrides)
        self._consumer_config = config
        # Any loop waits at rest (shared.fetch): after a quiet spell the broker holds its
        # empty fetches seconds instead of half a second, and answers at the first record.
        self._pacing = pacing or FetchPacing(
            config["fetch_min_bytes"], config["fetch_max_wait_ms"], AT_REST_AFTER_S, AT_REST_WAIT_MS
        )

    # -- lifecycle ---------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the record in hand, commit and return (thread-safe): after
        the poll in progress, which waits up to ``poll_timeout_ms``, at rest up to
        ``shared.fetch.AT_REST_POLL_MS``."""
        self._stop.set()

    def run(self, *, max_idle_s: float | None = None) -> None:
        """Consume until ``stop()``. ``max_idle_s`` also returns after that long without records."""
        consumer = self._new_consumer()
        log.info("consumer started", extra={"group": self.group_id, "topics": self.topics})
        idle_since = created = checked = time.monotonic()
        try:
            while not self._stop.is_set():
                polled = self._poll(consumer)
                # The membership these records were fetched under: a member that drops out
                # of the group before it commits them (its poll interval expired, the group
                # moved on) is fenced by it, even after it forgot its old generation.
                member = consumer.group_metadata() if polled else None
                records = []
                for tp, batch in polled.items():
                    BUS_METRICS.consumed.labels(tp.topic).inc(len(batch))
                    records.extend(batch)
                self._pacing.observe(consumer, len(records), time.monotonic())
                if not records:
                    now = time.monotonic()
                    if max_idle_s is not None and now - idle_since > max_idle_s:
                        break
                    if now - checked > 10 and now - created > self._member_lost_after_s:
                        checked = now
                        if member_lost(consumer.metrics(), self._member_lost_after_s):
                            # The client lost its group membership and is not finding its way
                            # back (seen with kafka-python 3.0 under CPU starvation, and after
                            # the broker holding its group coordinator was killed): start a
                            # fresh client. Uncommitted records are simply redelivered. 30 s
                            # is three session timeouts: the broker removed the member long ago.
                            log.warning(
                                "consumer lost its group membership; reconnecting",
                                extra={"group": self.group_id},
                            )
                            BUS_METRICS.reconnects.labels(self.group_id).inc()
                            consumer = self._replace(consumer)
                            if consumer is None:
                                break
                            created = time.monotonic()
                    continue
                idle_since = time.monotonic()
                if self._producer.transactional_id is None:
                    self._commit(consumer, self._process(records))
                elif not self._transact(consumer, records, member) and not self._rewind(
                    consumer, records
                ):
                    # Aborted, and the committed offsets are out of reach: a new client
                    # starts from them once Kafka answers.
                    consumer = self._replace(consumer)
                    if consumer is None:
                        break
                    created = time.monotonic()
        finally:
            try:
                self._producer.flush(timeout_s=30)
            except (KafkaError, Unavailable):
                log.exception("flush on shutdown failed", extra={"group": self.group_id})
            if consumer is not None:
                consumer.close(autocommit=False)
            log.info("consumer stopped", extra={"group": self.group_id})

    def _poll(self, consumer: KafkaConsumer) -> dict[Any, list[Any]]:
        """One poll; an outage reads as an empty poll after a pause (``poll_through_outage``),
        so the membership watchdog below still sees it and rebuilds the client when needed."""
        return poll_through_outage(
            consumer,
            timeout_ms=self._pacing.poll_timeout_ms(self._poll_timeout_ms),
            max_records=self._max_poll_records,
            pause=self._stop.wait,
            who=self.group_id,
        )

    def _new_consumer(self) -> KafkaConsumer:
        self._pacing.reset()
        consumer = KafkaConsumer(**self._consumer_config)
        consumer.subscribe([self._prefix + t for t in self.topics])
        return consumer

    def _transact(self, consumer: KafkaConsumer, records: list[Any], member: Any) -> bool:
        """Handle ``records`` in one transaction that also commits their offsets as the
        group member ``member`` (``group_metadata()`` when they were polled). False when it
        was aborted: none of its outputs and offsets count, and the caller reads the
        records again from the last committed offsets."""
        try:
            self._producer.begin()
            done = self._process(records)
            self._producer.commit(_next_offsets(done), member)
        except (KafkaError, Unavailable) as exc:
            log.warning(
                "transaction aborted; reading again from the last commit",
                extra={"group": self.group_id, "error": f"{type(exc).__name__}: {exc}"},
            )
            BUS_METRICS.transactions.labels(self.group_id, "aborted").inc()
            self._abort()
            return False
        BUS_METRICS.transactions.labels(self.group_id, "committed").inc()
        return True

    def _rewind(self, consumer: KafkaConsumer, records: list[Any]) -> bool:
        """After an abort, position each partition of ``records`` still assigned at its
        committed offset (where the aborted batch began, unless a transaction of another
        member committed since). False when the offsets could not be read."""
        firsts: dict[TopicPartition, int] = {}
        for rec in records:
            tp = TopicPartition(rec.topic, rec.partition)
            firsts[tp] = min(firsts.get(tp, rec.offset), rec.offset)
        try:
            for tp, first in firsts.items():
                if tp in consumer.assignment():
                    committed = consumer.committed(tp)
                    consumer.seek(tp, first if committed is None else committed)
        except KafkaError as exc:
            log.warning(
                "cannot read the committed offsets",
                extra={"group": self.group_id, "error": str(exc)},
            )
            return False
        return True

    def _abort(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._producer.abort()
                return
            except KafkaError as exc:
                log.warning(
                    "cannot reach Kafka to abort the transaction; retrying",
                    extra={"group": self.group_id, "error": str(exc), "retry_in_s": delay},
                )
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def _replace(self, consumer: KafkaConsumer) -> KafkaConsumer | None:
        """Close ``consumer`` and return a fresh client, which starts from the committed
        offsets; None when the loop is stopped meanwhile."""
        consumer.close(autocommit=False)
        return self._reconnect()

    def _reconnect(self) -> KafkaConsumer | None:
        """A fresh client for one that lost its group. The watchdog fires when polls come
        back empty, which is also what a broker outage looks like: while no broker answers,
        building the client is retried with a capped backoff instead of failing the
        service. None when the loop is stopped meanwhile."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                return self._new_consumer()
            except KafkaError as exc:
                log.warning(
                    "cannot reach Kafka to rebuild the consumer; retrying",
                    extra={"group": self.group_id, "error": str(exc), "retry_in_s": delay},
                )
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
        return None

    # -- processing --------------------------------------------------------------------

    def _process(self, records: list[Any]) -> list[Any]:
        """Handle ``records``; return those fully dealt with (a prefix, when stopping)."""
        done: list[Any] = []
        try:
            if self._batch_handler is not None:
                self._process_batch(records)
                return records
            for rec in records:
                self._process_one(rec)
                done.append(rec)
                if self._stop.is_set():
                    break
        except _Interrupted:
            log.info(
                "stopped during a retry; the record stays uncommitted",
                extra={"group": self.group_id},
            )
        return done

    def _decode(self, rec: Any, context: Context | None = None) -> Message[E] | None:
        """Decode a record, dead-lettering it when it does not decode."""
        try:
            event = decode(rec.value, self._event_type, max_bytes=self._max_bytes)
        except DecodeError as exc:
            span = trace.get_current_span()
            span.set_status(Status(StatusCode.ERROR, exc.reason))
            self._dead_letter(rec, exc.reason, exc.message, attempts=1)
            return None
        key = rec.key.decode("utf-8", "replace") if rec.key is not None else None
        return Message(
            event=event,
            topic=self._logical(rec.topic),
            partition=rec.partition,
            offset=rec.offset,
            key=key,
            headers=list(rec.headers or []),
            timestamp_ms=rec.timestamp,
            context=context,
        )

    def _logical(self, topic: str) -> str:
        """The topic's StreamLoop name, without the deployment's prefix."""
        return (
            topic[len(self._prefix) :] if self._prefix and topic.startswith(self._prefix) else topic
        )

    def _span_attrs(self, rec: Any) -> dict[str, Any]:
        # Kept short: attribute validation is a visible share of the per-record cost.
        return {
            "messaging.system": "kafka",
            "messaging.destination.name": rec.topic,
            "messaging.kafka.offset": rec.offset,
            "messaging.destination.partition.id": rec.partition,
        }

    def _process_one(self, rec: Any) -> None:
        assert self._handler is not None
        context = extract_context(rec.headers)
        with self._tracer.start_as_current_span(
            f"{rec.topic} process",
            context=context,
            kind=SpanKind.CONSUMER,
            attributes=self._span_attrs(rec),
        ) as span:
            msg = self._decode(rec, context)
            if msg is None:
                return
            span.set_attribute("messaging.message.id", msg.event.event_id)
            self._with_retries([rec], lambda: self._handler(msg))  # type: ignore[misc]

    def _process_batch(self, records: list[Any]) -> None:
        assert self._batch_handler is not None
        links = []
        # Each record's context is extracted once: it links the batch span here and parents
        # the handler's publishes (``Message.trace_context``). Only recorded spans are
        # linked: a link to a trace nobody kept leads nowhere, and costs on every record.
        contexts = [extract_context(rec.headers) for rec in records]
        for context in contexts:
            parent = trace.get_current_span(context).get_span_context()
            if parent.is_valid and parent.trace_flags.sampled:
                links.append(Link(parent))
        topic = records[0].topic
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.consumer.group.name": self.group_id,
            "messaging.batch.message_count": len(records),
        }
        if all(rec.topic == topic for rec in records):
            # The sampling policy keeps a frame path batch as it keeps a frame.
            attributes["messaging.destination.name"] = topic
        with self._tracer.start_as_current_span(
            f"{topic} process batch", kind=SpanKind.CONSUMER, links=links, attributes=attributes
        ):
            decoded = [
                (rec, self._decode(rec, context))
                for rec, context in zip(records, contexts, strict=True)
            ]
            good = [(rec, msg) for rec, msg in decoded if msg is not None]
            if not good:
                return
            batch = [msg for _, msg in good]
            record_of = {id(msg): rec for rec, msg in good}
            handler = self._batch_handler
            refused: list[Rejection[E]] = []

            def call(msgs: list[Message[E]]) -> None:
                refused.extend(handler(msgs) or ())

            if not self._with_retries([], lambda: call(batch), dead_letter=False):
                # The batch keeps failing: isolate the poison record(s).
                log.warning(
                    "batch failed after retries; retrying its records one by one",
                    extra={"group": self.group_id, "size": len(batch)},
                )
                refused.clear()
                for rec, msg in good:
                    self._with_retries([rec], lambda m=msg: call([m]))  # type: ignore[misc]
            for r in refused:
                rec = record_of.get(id(r.message))
                if rec is None:
                    raise ValueError("a batch handler refused a message not in its batch")
                self._dead_letter(rec, r.reason, r.detail, attempts=1)

    def _with_retries(
        self, recs: list[Any], call: Callable[[], None], *, dead_letter: bool = True
    ) -> bool:
        """Run ``call`` under the retry policy. True on success; on exhaustion dead-letter
        ``recs`` (when asked) and return False."""
        attempts = self._retry.max_attempts
        started = time.monotonic()
        attempt = failures = 0
        while True:
            attempt += 1
            try:
                with self._producer.staged():
                    call()
                return True
            except Exception as exc:
                if isinstance(exc, Rejected) and recs:
                    # Permanent: no retry. (For a whole batch it is retried record by record.)
                    trace.get_current_span().set_status(Status(StatusCode.ERROR, exc.reason))
                    for rec in recs:
                        self._dead_letter(rec, exc.reason, exc.message, attempts=attempt)
                    return True
                # A dependency's failure does not use up the record's attempts (within the
                # budget): the record is fine, and retrying is how it gets through.
                waiting = (
                    is_transient(exc)
                    and time.monotonic() - started < self._retry.transient_budget_s
                )
                failures += 0 if waiting else 1
                error = f"{type(exc).__name__}: {exc}"
                where: dict[str, object] = {
                    "group": self.group_id,
                    "attempt": attempt,
                    "error": error,
                }
                if recs:
                    where.update(
                        topic=recs[0].topic, partition=recs[0].partition, offset=recs[0].offset
                    )
                trace.get_current_span().record_exception(exc)
                if waiting or failures < attempts:
                    BUS_METRICS.retries.labels(recs[0].topic if recs else "batch").inc()
                    log.warning(
                        "dependency unavailable; retrying"
                        if waiting
                        else "handler failed; retrying",
                        extra=where,
                    )
                    if self._stop.wait(self._retry.delay(attempt)):
                        # Stopping: give up on retries but keep at-least-once (not committed).
                        raise _Interrupted() from exc
                    continue
                log.error("handler failed; giving up", extra=where)
                if dead_letter:
                    for rec in recs:
                        self._dead_letter(rec, "handler_error", error, attempts=attempt)
                return False

    def _dead_letter(self, rec: Any, reason: str, message: str, *, attempts: int) -> None:
        topic = self._dlq_topic_for(self._logical(rec.topic))
        headers = dead_letter_headers(
            rec.headers,
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            reason=reason,
            message=message,
            attempts=attempts,
            group=self.group_id,
        )
        log.warning(
            "dead-lettered",
            extra={
                "topic": rec.topic,
                "partition": rec.partition,
                "offset": rec.offset,
                "reason": reason,
                "detail": message[:300],
                "dlq": topic,
            },
        )
        BUS_METRICS.dead_lettered.labels(rec.topic, reason).inc()
        span = dead_letter_span(
            self._tracer,
            rec.headers,
            dlq_topic=self._prefix + topic,
            source_topic=rec.topic,
            reason=reason,
        )
        with trace.use_span(span, end_on_exit=True):
            self._producer.publish_raw(topic, rec.value, key=rec.key, headers=headers)

    def _commit(self, consumer: KafkaConsumer, records: Iterable[Any]) -> None:
        offsets = _next_offsets(records)
        if not offsets:
            return
        # Outputs (and dead letters) first: a crash after this point redelivers, never loses.
        try:
            self._producer.flush()
        except Unavailable as exc:
            # Something these records produced is not in Kafka: do not commit them, and read
            # them again from the first of them (their outputs may come twice; none is lost).
            log.warning(
                "outputs not acknowledged; processing the records again",
                extra={"group": self.group_id, "error": str(exc)},
            )
            firsts: dict[TopicPartition, int] = {}
            for rec in records:
                tp = TopicPartition(rec.topic, rec.partition)
                firsts[tp] = min(firsts.get(tp, rec.offset), rec.offset)
            for tp, offset in firsts.items():
                if tp in consumer.assignment():
                    consumer.seek(tp, offset)
            return
        try:
            consumer.commit(offsets)
        except CommitFailedError:
            # The group rebalanced; the new owner re-reads from the last commit.
            log.warning(
                "commit failed after a rebalance; records will be redelivered",
                extra={"group": self.group_id},
            )
        except KafkaError as exc:
            if not is_transient(exc):
                raise
            # The broker is away: the next commit (after it returns) covers these offsets.
            log.warning(
                "commit failed; a later commit covers these records",
                extra={"group": self.group_id, "error": str(exc)},
            )


def _next_offsets(records: Iterable[Any]) -> dict[TopicPartition, OffsetAndMetadata]:
    """The offsets to commit once ``records`` are dealt with: per partition, the next one."""
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for rec in records:
        tp = TopicPartition(rec.topic, rec.partition)
        nxt = rec.offset + 1
        if tp not in offsets or offsets[tp].offset < nxt:
            offsets[tp] = OffsetAndMetadata(nxt, "", -1)
    return offsets


def dead_letter_headers(
    original: Headers | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    reason: str,
    message: str,
    attempts: int,
    group: str,
) -> Headers:
    """The headers of a dead letter: the record's own (minus its trace context, which
    belongs to the failed delivery) plus the ``DlqHeaders`` describing the failure."""
    kept = [(k, v) for k, v in (original or []) if k not in ("traceparent", "tracestate")]
    return [
        *kept,
        (DlqHeaders.SOURCE_TOPIC, topic.encode()),
        (DlqHeaders.SOURCE_PARTITION, str(partition).encode()),
        (DlqHeaders.SOURCE_OFFSET, str(offset).encode()),
        (DlqHeaders.ERROR, reason.encode()),
        (DlqHeaders.ERROR_MESSAGE, message[:2000].encode()),
        (DlqHeaders.ATTEMPTS, str(attempts).encode()),
        (DlqHeaders.GROUP, group.encode()),
        (DlqHeaders.FAILED_AT, datetime.now(UTC).isoformat().encode()),
    ]


def member_lost(metrics: Mapping[str, Mapping[str, Any]], after_s: float) -> bool:
    """True when a group member's client reports no successful heartbeat for ``after_s``
    seconds (its session is long gone; the broker has removed it from the group)."""
    ago = metrics.get("consumer-coordinator-metrics", {}).get("last-heartbeat-seconds-ago")
    return isinstance(ago, int | float) and ago > after_s


class _Interrupted(Exception):
    """Raised out of a retry backoff when the loop is stopping."""


def stop_on_signals(*stoppables: Any) -> None:
    """Call ``stop()`` on each object at SIGTERM or SIGINT (main thread only)."""

    def _handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received; stopping", extra={"signal": signal.Signals(signum).name})
        for s in stoppables:
            s.stop()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
