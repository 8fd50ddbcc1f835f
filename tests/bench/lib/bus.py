"""``bench_bus``'s two sides: the StreamLoop bus and a bare kafka-python loop moving the same
alerts through topics of their own, timed in a produce and a consume phase; and its table."""

from __future__ import annotations

import cProfile
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from opentelemetry import trace
from rich.console import Console
from rich.table import Table

from shared.bus import PRODUCER_DEFAULTS, ConsumerLoop, EventProducer, Message
from shared.events import Alert, decode, encode
from shared.settings import KafkaSettings
from tests.bench.lib.measure import Phase, median_phase

TARGET_RATIO = 0.8
"""The bus should keep at least this share of the bare client's end-to-end throughput."""

WARMUP_EVENTS = 500
PARTITIONS = 3
POLL_TIMEOUT_MS = 200
MAX_POLL_RECORDS = 500
STALL_TIMEOUT_S = 60.0
"""Give up when a consumer has seen no new record for this long (a broken run, not a slow one)."""

# The producer settings of EventProducer (shared/bus.py) and the consumer settings of
# ConsumerLoop: the bare side copies them so the ratio measures the bus's own work, not
# different client tuning.
PRODUCER_CONFIG: dict[str, Any] = PRODUCER_DEFAULTS
CONSUMER_CONFIG: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "max_poll_records": MAX_POLL_RECORDS,
    "fetch_max_bytes": 32 * 1024 * 1024,
    "max_partition_fetch_bytes": 4 * 1024 * 1024,
}


def codec_costs(events: list[Alert], values: list[bytes]) -> dict[str, float]:
    """Microseconds per event of the codec work alone (no Kafka), to explain the ratios."""
    sample = min(len(events), 2000)

    def per_event(fn: Callable[[int], object]) -> float:
        start = time.perf_counter()
        for i in range(sample):
            fn(i)
        return round((time.perf_counter() - start) / sample * 1e6, 2)

    return {
        "encode_us": per_event(lambda i: encode(events[i])),
        "decode_us": per_event(lambda i: decode(values[i], Alert, max_bytes=1_500_000)),
        "json_loads_us": per_event(lambda i: json.loads(values[i])),
    }


# --- bare kafka-python ------------------------------------------------------------------


def bare_produce(producer: KafkaProducer, topic: str, values: list[bytes]) -> None:
    for value in values:
        producer.send(topic, value=value)
    producer.flush()


def bare_consume(consumer: KafkaConsumer, expected: int) -> float:
    """Poll, parse and commit until ``expected`` records arrived.

    Returns the ``perf_counter`` time at which the last record was parsed: the final commit
    is left out of the clock, as on the bus side (whose handler stops the clock).
    """
    received = 0
    last_progress = time.monotonic()
    while True:
        polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_POLL_RECORDS)
        for records in polled.values():
            for rec in records:
                json.loads(rec.value)
            received += len(records)
        if received >= expected:
            finished = time.perf_counter()
            consumer.commit()
            return finished
        if polled:
            consumer.commit()
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > STALL_TIMEOUT_S:
            raise TimeoutError(f"bare consumer stalled at {received}/{expected} records")


def run_bare(
    settings: KafkaSettings, topic: str, group: str, warmup: list[bytes], values: list[bytes]
) -> tuple[Phase, Phase]:
    """Warm up, then time producing and consuming ``values``."""
    client = settings.client_kwargs()
    total_bytes = sum(map(len, values))
    producer = KafkaProducer(client_id="bench-bare", **PRODUCER_CONFIG, **client)
    consumer = KafkaConsumer(group_id=group, client_id=group, **CONSUMER_CONFIG, **client)
    try:
        consumer.subscribe([topic])
        bare_produce(producer, topic, warmup)
        bare_consume(consumer, len(warmup))

        # The consumer is idle (not polling) while the producer runs, as on the bus side.
        start = time.perf_counter()
        bare_produce(producer, topic, values)
        produce = Phase(time.perf_counter() - start, len(values), total_bytes)

        start = time.perf_counter()
        finished = bare_consume(consumer, len(values))
        consume = Phase(finished - start, len(values), total_bytes)
        return produce, consume
    finally:
        producer.close(timeout=10)
        consumer.close(autocommit=False)


# --- the bus ----------------------------------------------------------------------------


class CountingHandler:
    """The bus handler: counts records. It parks the loop once the warm-up is handled, so the
    timed produce phase runs without a consumer competing for the CPU (the bare consumer is
    idle then too), and stops the loop and the clock at the last record."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup = warmup
        self.total = total
        self.count = 0
        self.loop: ConsumerLoop[Alert] | None = None
        self.warmed = threading.Event()
        self.go = threading.Event()
        self.done = threading.Event()
        self.finished_at = 0.0

    def __call__(self, msg: Message[Alert]) -> None:
        self.count += 1
        if self.count == self.warmup:
            self.warmed.set()
            self.go.wait()
        elif self.count >= self.total:
            self.finished_at = time.perf_counter()
            self.done.set()
            if self.loop is not None:
                self.loop.stop()


def _wait(
    event: threading.Event,
    worker: threading.Thread,
    handler: CountingHandler,
    what: str,
    errors: list[BaseException],
) -> None:
    """Wait for ``event`` while the consumer thread is alive and making progress; surface
    its failure, if any."""
    seen, last_progress = handler.count, time.monotonic()
    while not event.wait(0.1):
        if errors:
            raise RuntimeError(f"bus consumer failed during {what}") from errors[0]
        if not worker.is_alive():
            raise RuntimeError(f"bus consumer exited during {what}")
        if handler.count != seen:
            seen, last_progress = handler.count, time.monotonic()
        elif time.monotonic() - last_progress > STALL_TIMEOUT_S:
            raise TimeoutError(f"bus consumer stalled at {seen} records during {what}")


def run_bus(
    settings: KafkaSettings,
    topic: str,
    dlq_topic: str,
    group: str,
    tracer: trace.Tracer,
    warmup: list[Alert],
    events: list[Alert],
    total_bytes: int,
    profiler: cProfile.Profile | None,
) -> tuple[Phase, Phase]:
    """Warm up, then time publishing and consuming ``events`` through the bus."""
    producer = EventProducer(settings, client_id="bench-bus", tracer=tracer)
    handler = CountingHandler(len(warmup), len(warmup) + len(events))
    loop: ConsumerLoop[Alert] = ConsumerLoop(
        settings,
        group_id=group,
        topics=[topic],
        event_type=Alert,
        producer=producer,
        handler=handler,
        tracer=tracer,
        max_poll_records=MAX_POLL_RECORDS,
        poll_timeout_ms=POLL_TIMEOUT_MS,
        dlq_topic_for=lambda _source: dlq_topic,
    )
    handler.loop = loop
    errors: list[BaseException] = []

    def consume_in_thread() -> None:
        try:
            if profiler is not None:
                profiler.runcall(loop.run)
            else:
                loop.run()
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    worker = threading.Thread(target=consume_in_thread, name="bench-bus-consumer", daemon=True)
    try:
        for event in warmup:
            producer.publish(topic, event)
        producer.flush()
        worker.start()
        _wait(handler.warmed, worker, handler, "the warm-up", errors)

        start = time.perf_counter()
        for event in events:
            producer.publish(topic, event)
        producer.flush()
        produce = Phase(time.perf_counter() - start, len(events), total_bytes)

        # Unparking also commits the warm-up's last poll inside the clock: one commit, a
        # millisecond or two, against the bus.
        start = time.perf_counter()
        handler.go.set()
        _wait(handler.done, worker, handler, "the timed consume", errors)
        consume = Phase(handler.finished_at - start, len(events), total_bytes)
        return produce, consume
    finally:
        handler.go.set()
        loop.stop()
        if worker.is_alive():
            worker.join(timeout=30)
        producer.close()


# --- environment ------------------------------------------------------------------------


def crc32c_fast_path() -> bool:
    """Whether kafka-python checksums record batches with the C ``crc32c`` package.

    kafka-python falls back to a pure-Python CRC32C (``kafka.record._crc32c``) when the
    package is missing, which costs a lot on every batch produced and fetched."""
    import kafka.record.util as record_util

    try:
        import crc32c
    except ImportError:
        return False
    return getattr(record_util, "_crc32c", None) is crc32c.crc32c


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


def median_phases(rounds: list[dict[str, tuple[Phase, Phase]]], side: str) -> dict[str, Phase]:
    """The median produce, consume and end-to-end phase of ``side`` over the rounds."""
    produce = [rd[side][0] for rd in rounds]
    consume = [rd[side][1] for rd in rounds]
    end_to_end = [p.then(c) for p, c in zip(produce, consume, strict=True)]
    return {
        "produce": median_phase(produce),
        "consume": median_phase(consume),
        "end_to_end": median_phase(end_to_end),
    }


# --- report -----------------------------------------------------------------------------


def render(
    console: Console, bare: dict[str, Phase], bus: dict[str, Phase], ratios: dict[str, float]
) -> str:
    """Print the table; return the verdict (PASS or BELOW) on the end-to-end ratio."""
    verdict = "PASS" if ratios["end_to_end"] >= TARGET_RATIO else "BELOW"
    table = Table(
        title="StreamLoop bus vs bare kafka-python",
        caption=f"target: bus end-to-end ≥ {TARGET_RATIO:.1f} x bare",
    )
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("msgs/s", justify="right")
    table.add_column("MB/s", justify="right")
    table.add_column("bus / bare", justify="right")
    labels = {"produce": "produce", "consume": "consume", "end_to_end": "end-to-end"}
    for key, label in labels.items():
        for side, phases in (("bare", bare), ("bus", bus)):
            phase = phases[key]
            ratio = ""
            if side == "bus":
                ratio = f"{ratios[key]:.2f}"
                if key == "end_to_end":
                    ratio += f" {verdict}"
            table.add_row(
                f"{side} {label}",
                f"{phase.seconds:.2f}",
                f"{phase.msgs_per_s:,.0f}",
                f"{phase.mb_per_s:.1f}",
                ratio,
            )
    console.print(table)
    return verdict
