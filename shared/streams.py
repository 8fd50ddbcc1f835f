"""What StreamLoop's faust applications share: broker options from our settings, and tables
that store plain bytes."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import faust
from opentelemetry import trace

from shared.bus import dead_letter_headers
from shared.events import Event, decode, derived_id, encode
from shared.expiry import ExpiryIndex
from shared.metrics import BUS_METRICS
from shared.settings import KafkaSettings, default_var_dir
from shared.stream_consumer import FencedTransport
from shared.telemetry import Headers, dead_letter_span, inject_headers
from shared.topics import dlq_for, event_for

__all__ = [
    "BytesKeyed",
    "ExpiryIndex",
    "FaustDeadLetters",
    "broker_options",
    "new_app",
    "read_source",
    "record_headers",
    "run_worker",
]

log = logging.getLogger("streamloop.streams")


def broker_options(kafka: KafkaSettings) -> dict[str, Any]:
    """faust's broker URL and credentials from StreamLoop's Kafka settings."""
    urls = ";".join(f"kafka://{h.strip()}" for h in kafka.bootstrap_servers.split(","))
    opts: dict[str, Any] = {"broker": urls}
    if kafka.security_protocol != "PLAINTEXT":
        ssl_context = None
        if kafka.security_protocol in ("SSL", "SASL_SSL"):
            from ssl import create_default_context

            ssl_context = create_default_context(cafile=kafka.ssl_cafile)
            if kafka.ssl_certfile:
                ssl_context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
        if kafka.sasl_mechanism:
            opts["broker_credentials"] = faust.SASLCredentials(
                username=kafka.sasl_username,
                password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
                mechanism=kafka.sasl_mechanism,
                ssl_context=ssl_context,
            )
        elif ssl_context is not None:
            opts["broker_credentials"] = faust.SSLCredentials(ssl_context)
    return opts


class BytesKeyed(MutableMapping[str, dict[str, Any]]):
    """A str-keyed, dict-valued view of a table that stores UTF-8 keys and JSON bytes.

    The table itself holds bytes (``value_type=bytes``, raw serializer), so what recovery
    reads back from the changelog after a restart is exactly what was written; entries are
    copied in and out, never mutated in place."""

    def __init__(self, table: MutableMapping[bytes, bytes | None]) -> None:
        self._t = table

    def __getitem__(self, key: str) -> dict[str, Any]:
        value = self._t[key.encode()]
        if value is None:  # the table's default
            raise KeyError(key)
        entry: dict[str, Any] = json.loads(value)
        return entry

    def __setitem__(self, key: str, value: dict[str, Any]) -> None:
        self._t[key.encode()] = json.dumps(value, separators=(",", ":")).encode()

    def __delitem__(self, key: str) -> None:
        del self._t[key.encode()]

    def __iter__(self) -> Iterator[str]:
        return (k.decode() for k in list(self._t.keys()))

    def __len__(self) -> int:
        return len(self._t)


MAX_RECORD_BYTES = 1_500_000
"""Largest record a faust service decodes (a frame of 1 MB grows by a third in base64)."""


def read_source(
    value: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    *,
    max_bytes: int = MAX_RECORD_BYTES,
) -> tuple[Event, bytes]:
    """Decode a record read from ``topic`` (a StreamLoop name) at ``partition``/``offset``,
    for a service that forwards it to a join topic of its own.

    A record without ``event_type`` is that topic's event (``labels`` as documented names
    none). Returns the event and the bytes to forward: the record as it is, or, when it
    named no ``event_type`` or no ``event_id``, the event encoded in full, with an id derived
    from the record's position, so that a redelivered record keeps its id (and the join
    drops the copy), its defaults (``labelled_at``) are fixed once, and the join reads it
    without knowing where it came from.

    Raises:
        DecodeError: the record is not such an event.
    """
    parsed = decode(value, Event, max_bytes=max_bytes, default=event_for(topic))
    given = parsed.model_fields_set
    if value is not None and "event_type" in given and "event_id" in given:
        return parsed, value
    if "event_id" not in given:
        position = derived_id(topic, str(partition), str(offset))
        parsed = parsed.model_copy(update={"event_id": position})
    return parsed, encode(parsed)


def record_headers(message: Any) -> Headers:
    """A faust message's headers as (key, bytes) pairs, whichever shape faust hands them in."""
    headers = message.headers or []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k), v) for k, v in pairs if isinstance(v, bytes)]


class FaustDeadLetters:
    """Parks records a faust agent cannot handle in the dead-letter topic of their source,
    with the original key, value and headers plus the standard ``dlq.*`` headers."""

    def __init__(
        self, app: faust.App, prefix: str, *, group: str, tracer: trace.Tracer | None = None
    ) -> None:
        self._app = app
        self._prefix = prefix
        self._group = group
        self._tracer = tracer or trace.get_tracer("streamloop.streams")
        self._topics: dict[str, Any] = {}

    def logical(self, event: Any) -> str:
        """The StreamLoop name of the topic ``event`` was read from."""
        return str(event.message.topic)[len(self._prefix) :]

    async def send(self, event: Any, reason: str, message: str, source: str) -> None:
        """Park ``event`` in the dead-letter topic of ``source`` (a StreamLoop topic name)."""
        msg = event.message
        dlq = dlq_for(source)
        if dlq not in self._topics:
            self._topics[dlq] = self._app.topic(
                self._prefix + dlq, key_type=bytes, value_type=bytes
            )
        headers = dead_letter_headers(
            record_headers(msg),
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            reason=reason,
            message=message,
            attempts=1,
            group=self._group,
        )
        span = dead_letter_span(
            self._tracer,
            record_headers(msg),
            dlq_topic=self._prefix + dlq,
            source_topic=msg.topic,
            reason=reason,
        )
        with trace.use_span(span, end_on_exit=True):
            headers = inject_headers(headers)
        await self._topics[dlq].send(key=event.key, value=event.value, headers=headers)
        BUS_METRICS.dead_lettered.labels(msg.topic, reason).inc()
        log.warning(
            "dead-lettered",
            extra={
                "topic": msg.topic,
                "partition": msg.partition,
                "offset": msg.offset,
                "reason": reason,
                "detail": message[:300],
            },
        )


METADATA_MAX_AGE_MS = 10_000
"""How often a faust worker's consumer refreshes topic metadata (see ``new_app``)."""


class _App(faust.App):
    """A faust app whose consumer is fenced at each seek (``shared.stream_consumer``)."""

    def _new_transport(self) -> FencedTransport:
        return FencedTransport(self.conf.broker_consumer, self)


def new_app(
    app_id: str,
    kafka: KafkaSettings,
    *,
    partitions: int,
    store: str = "memory://",
    standby_replicas: int = 1,
) -> faust.App:
    """A faust app configured the StreamLoop way: raw bytes in and out (our codec does the
    JSON), tables recovered from their changelogs (``store``: in memory, or ``rocksdb://`` on
    disk in the app's data folder), ``acks=all``, at-least-once, reading from the earliest
    offset, internal topics with ``partitions`` partitions. ``standby_replicas``: workers
    keeping a warm copy of each table partition; 0 for tables on disk, whose workers on one
    host share a data folder where a standby would wait forever for the active worker's
    lock. (A table's own ``store=`` URL is no way round: faust ignores ``rocksdb://`` there,
    the URL being falsy.)"""
    # faust keeps a data folder per app (by default in the working directory); it creates
    # the folder itself but not its parents.
    parent = default_var_dir() / "faust"
    parent.mkdir(parents=True, exist_ok=True)
    return _App(
        app_id,
        **broker_options(kafka),
        datadir=str(parent / f"{app_id}-data"),
        store=store,
        web_enabled=False,
        topic_partitions=partitions,
        table_standby_replicas=standby_replicas,
        topic_replication_factor=kafka.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        # A worker's first assignment can miss an internal topic created a moment before (its
        # metadata not yet known: "Ignoring missing topic"), leaving an agent without
        # partitions until the next metadata refresh, five minutes by default (seen: labelling
        # joining nothing for 5 minutes on a loaded 2-core machine). Refreshed every 10 s,
        # the group sees the topic and rebalances within seconds.
        consumer_metadata_max_age_ms=METADATA_MAX_AGE_MS,
        # A worker that died leaves the group 10 s after its last heartbeat, as the consumer
        # loop's members do (faust's default, 60 s, kept a restarted worker from its
        # partitions, and its windows, for a minute). Heartbeats come from the consumer's own
        # thread, so a busy agent does not miss them.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        processing_guarantee="at_least_once",
        topic_allow_declare=True,
        topic_disable_leader=True,
    )


def run_worker(app: faust.App, log_level: str) -> int:
    """Run ``app`` in a faust worker until SIGTERM/SIGINT; its exit status."""
    worker = faust.Worker(
        app,
        loglevel=log_level,
        quiet=True,
        override_logging=False,
        redirect_stdouts=False,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
