"""Benchmark: the StreamLoop bus against a bare kafka-python loop, on the real local broker.

    python -m tests.bench.bench_bus [--events N] [--size BYTES] [--quick] [--profile]

Both sides move the same ``Alert`` payloads (about ``--size`` bytes of JSON each) through a
fresh 3-partition topic of their own, with the same client settings, and are timed in two
phases: produce (send everything, then flush) and consume (poll until every record has been
handled, committing synchronously after each poll).

What each side does per record, i.e. what the ratio measures:

- bare produce: ``KafkaProducer.send`` of bytes encoded before the clock starts, no headers;
- bus produce: ``EventProducer.publish``: a PRODUCER span, pydantic JSON encoding of the
  event and W3C trace headers, i.e. the whole cost a service pays;
- bare consume: ``json.loads`` of the value (a bare loop still parses its payload);
- bus consume: ``ConsumerLoop``: a CONSUMER span linked to the producer's, pydantic
  validation into ``Alert``, the ``Message`` wrapper, metrics, a producer flush before
  every commit.

Tracing is on for the bus (JSONL exporter into a temporary folder), as in production.
Before timing, each side sends and consumes a short warm-up so connection set-up, metadata,
the group join and first-call costs are not counted. The result is a measurement, never a
test: the script exits 0 whether or not the bus reaches the target. Figures go to
``var/bench/bus.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import logging
import os
import platform
import pstats
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from opentelemetry import trace
from rich.console import Console
from rich.table import Table

from shared.bus import PRODUCER_DEFAULTS, ConsumerLoop, EventProducer, Message
from shared.events import Alert, decode, encode
from shared.kafka_admin import KafkaAdmin
from shared.settings import KafkaSettings, TelemetrySettings, default_var_dir
from shared.telemetry import setup_telemetry
from shared.topics import TOPICS, Topics, TopicSpec, provision

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


@dataclass(frozen=True)
class Phase:
    """One timed phase: ``messages`` records of ``payload_bytes`` in total in ``seconds``."""

    seconds: float
    messages: int
    payload_bytes: int

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.payload_bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def then(self, other: Phase) -> Phase:
        """The two phases back to back (end-to-end: the same records produced, then consumed)."""
        return Phase(self.seconds + other.seconds, self.messages, self.payload_bytes)

    def as_dict(self) -> dict[str, float]:
        return {
            "seconds": round(self.seconds, 4),
            "messages": self.messages,
            "payload_bytes": self.payload_bytes,
            "msgs_per_s": round(self.msgs_per_s, 1),
            "mb_per_s": round(self.mb_per_s, 3),
        }


# --- payload ----------------------------------------------------------------------------


def make_alerts(count: int, size: int) -> list[Alert]:
    """``count`` distinct alerts whose wire form is about ``size`` bytes each."""
    probe = Alert(severity="warning", kind="bench", message="", source="bench")
    overhead = len(encode(probe))
    # Plain ASCII: JSON escaping leaves it one byte per character, so the size is exact
    # (give or take the produced_at fraction). One shared string keeps memory flat.
    filler = ("the quick brown fox jumps over the lazy dog " * (size // 44 + 1))[
        : max(0, size - overhead)
    ]
    return [
        Alert(severity="warning", kind="bench", message=filler, source="bench")
        for _ in range(count)
    ]


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


def proc_status_kb(pid: int | str, field: str) -> int | None:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/<pid>/status; None when there is no such process."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def rss_from_pidfile(pidfile: Path) -> int | None:
    try:
        pid = pidfile.read_text().strip()
    except OSError:
        return None
    return proc_status_kb(pid, "VmRSS") if pid.isdigit() else None


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


def cleanup(settings: KafkaSettings, topics: list[str], groups: list[str]) -> None:
    """Delete the run's topics and consumer groups; never raises (it runs in ``finally``)."""
    try:
        with KafkaAdmin(settings) as admin:
            admin.delete_topics(topics)
    except (KafkaError, OSError) as exc:
        print(f"warning: could not delete the bench topics {topics}: {exc}")
    # The groups' committed offsets would otherwise linger until offsets.retention expires.
    admin_client = None
    try:
        admin_client = KafkaAdminClient(client_id="bench-cleanup", **settings.client_kwargs())
        admin_client.delete_groups(groups)
    except (KafkaError, OSError):
        pass
    finally:
        if admin_client is not None:
            admin_client.close()


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


def fmt_kb(kb: int | None) -> str:
    return "not running" if kb is None else f"{kb / 1024:.0f} MiB"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_bus",
        description="Throughput of the StreamLoop bus against a bare kafka-python loop.",
    )
    parser.add_argument("--events", type=int, default=20_000, help="timed events (default 20000)")
    parser.add_argument("--size", type=int, default=4096, help="payload bytes (default 4096)")
    parser.add_argument("--quick", action="store_true", help="2000 events (a smoke run)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument(
        "--sample-ratio",
        type=float,
        default=1.0,
        help="share of traces recorded on the bus side (default 1.0: every record traced)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the bus consumer thread and print its top 25 (slows the bus figures)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.events = 2000
    if args.events < 1 or args.size < 1:
        parser.error("--events and --size must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    console = Console(soft_wrap=True)
    settings = KafkaSettings()
    started = datetime.now(UTC)

    # Unique names: a run never reads another run's records, and cleanup cannot hit real topics.
    prefix = f"bench-{int(time.time())}-{os.getpid()}."
    alerts = dataclasses.replace(TOPICS[Topics.ALERTS], partitions=PARTITIONS)
    dlq: TopicSpec = dataclasses.replace(TOPICS[Topics.EVENTS_DLQ], partitions=PARTITIONS)

    events = make_alerts(WARMUP_EVENTS + args.events, args.size)
    warmup_events, timed_events = events[:WARMUP_EVENTS], events[WARMUP_EVENTS:]
    # What a bare client sends: the same JSON bytes, encoded once, outside the clock.
    warmup_values = [encode(e) for e in warmup_events]
    timed_values = [encode(e) for e in timed_events]
    total_bytes = sum(map(len, timed_values))
    codec = codec_costs(timed_events, timed_values)

    traces_dir = Path(tempfile.mkdtemp(prefix="streamloop-bench-traces-"))
    tel = setup_telemetry(
        "bench",
        TelemetrySettings(exporter="jsonl", traces_dir=traces_dir, sample_ratio=args.sample_ratio),
        set_global=False,
    )
    profiler = cProfile.Profile() if args.profile else None
    console.print(
        f"{args.events:,} events of ~{total_bytes // args.events:,} bytes per side and round "
        f"(+{WARMUP_EVENTS} warm-up), {PARTITIONS} partitions, {args.rounds} alternating rounds, "
        f"bus trace sample ratio {args.sample_ratio:g}"
    )
    console.print(f"topics: {prefix}*")
    rounds: list[dict[str, tuple[Phase, Phase]]] = []
    lag = {"bare": 0, "bus": 0}
    dead_lettered = 0
    made_topics: list[str] = []
    made_groups: list[str] = []
    try:
        # Alternating rounds and medians: on 2 shared cores one pass of each side is noise.
        for r in range(args.rounds):
            bare_prefix, bus_prefix = f"{prefix}r{r}.bare.", f"{prefix}r{r}.bus."
            bare_topic = bare_prefix + alerts.name
            bus_topic, dlq_topic = bus_prefix + alerts.name, bus_prefix + dlq.name
            bare_group, bus_group = f"{prefix}r{r}.bare-group", f"{prefix}r{r}.bus-group"
            made_topics += [bare_topic, bus_topic, dlq_topic]
            made_groups += [bare_group, bus_group]
            provision(settings, [alerts], name_prefix=bare_prefix)
            provision(settings, [alerts, dlq], name_prefix=bus_prefix)
            bare_phases = run_bare(settings, bare_topic, bare_group, warmup_values, timed_values)
            bus_phases = run_bus(
                settings,
                bus_topic,
                dlq_topic,
                bus_group,
                tel.tracer,
                warmup_events,
                timed_events,
                total_bytes,
                profiler,
            )
            rounds.append({"bare": bare_phases, "bus": bus_phases})
            e2e = (
                bus_phases[0].then(bus_phases[1]).msgs_per_s
                / bare_phases[0].then(bare_phases[1]).msgs_per_s
            )
            console.print(f"round {r + 1}: end-to-end bus / bare {e2e:.2f}")
            with KafkaAdmin(settings) as admin:
                lag["bare"] += admin.lag(bare_group, bare_topic)
                lag["bus"] += admin.lag(bus_group, bus_topic)
                dead_lettered += sum(admin.end_offsets(dlq_topic).values())
    finally:
        tel.shutdown()
        cleanup(settings, made_topics, made_groups)
    spans_exported = count_lines(traces_dir / "bench.jsonl")
    shutil.rmtree(traces_dir, ignore_errors=True)

    def median_phases(side: str) -> dict[str, Phase]:
        def med(phases: list[Phase]) -> Phase:
            return sorted(phases, key=lambda p: p.seconds)[len(phases) // 2]

        produce = [rd[side][0] for rd in rounds]
        consume = [rd[side][1] for rd in rounds]
        end_to_end = [p.then(c) for p, c in zip(produce, consume, strict=True)]
        return {"produce": med(produce), "consume": med(consume), "end_to_end": med(end_to_end)}

    bare, bus = median_phases("bare"), median_phases("bus")
    ratios = {k: bus[k].msgs_per_s / bare[k].msgs_per_s for k in bare}
    verdict = render(console, bare, bus, ratios)

    var = default_var_dir()
    memory_kb = {
        "kafka_broker_rss": rss_from_pidfile(var / "kafka" / "node-1" / "kafka.pid"),
        "redis_rss": rss_from_pidfile(var / "redis" / "redis.pid"),
        "bench_rss": proc_status_kb(os.getpid(), "VmRSS"),
        "bench_peak_rss": proc_status_kb(os.getpid(), "VmHWM"),
    }
    # One PRODUCER and one CONSUMER span per event, warm-up included. Fewer exported means the
    # BatchSpanProcessor's queue overflowed and dropped spans: tracing was cheaper than in a
    # service whose exporter keeps up.
    spans_expected = 2 * (WARMUP_EVENTS + args.events) * args.rounds
    fast_crc = crc32c_fast_path()
    console.print(
        f"end-to-end bus / bare: {ratios['end_to_end']:.2f} "
        f"(target ≥ {TARGET_RATIO:.1f}): {verdict}"
    )
    console.print(
        f"codec per event (no Kafka): encode {codec['encode_us']} µs, "
        f"decode {codec['decode_us']} µs, json.loads {codec['json_loads_us']} µs"
    )
    console.print(
        f"lag after run: bare {lag['bare']}, bus {lag['bus']}; dead-lettered: {dead_lettered}; "
        f"spans exported: {spans_exported:,} of {spans_expected:,}"
    )
    console.print(f"crc32c fast path: {'yes' if fast_crc else 'no'}")
    console.print(
        f"resident memory: kafka broker {fmt_kb(memory_kb['kafka_broker_rss'])}, "
        f"redis {fmt_kb(memory_kb['redis_rss'])}, "
        f"this process {fmt_kb(memory_kb['bench_rss'])} "
        f"(peak {fmt_kb(memory_kb['bench_peak_rss'])})"
    )
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
        console.print("bus consumer thread, top 25 by cumulative time (figures above are slowed):")
        print(out.getvalue())

    finished = datetime.now(UTC)
    result = {
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "events": args.events,
        "rounds": args.rounds,
        "sample_ratio": args.sample_ratio,
        "size": args.size,
        "payload_bytes_mean": round(total_bytes / args.events, 1),
        "warmup_events": WARMUP_EVENTS,
        "partitions": PARTITIONS,
        "profiled": args.profile,
        "python": platform.python_version(),
        "kafka_python": metadata.version("kafka-python"),
        "cpu_count": os.cpu_count(),
        "crc32c_fast_path": fast_crc,
        "bare": {k: p.as_dict() for k, p in bare.items()},
        "bus": {k: p.as_dict() for k, p in bus.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "target_ratio": TARGET_RATIO,
        "verdict": verdict,
        "codec_us_per_event": codec,
        "lag": lag,
        "dead_lettered": dead_lettered,
        "spans": {"exported": spans_exported, "expected": spans_expected},
        "memory_kb": memory_kb,
    }
    out_path = var / "bench" / "bus.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    console.print(f"figures written to {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
