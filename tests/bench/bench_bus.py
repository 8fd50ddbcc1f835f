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
import logging
import os
import platform
import pstats
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from opentelemetry import trace
from rich.console import Console

from shared.events import Alert, encode
from shared.kafka_admin import KafkaAdmin
from shared.settings import KafkaSettings, TelemetrySettings, default_var_dir
from shared.telemetry import setup_telemetry
from shared.topics import TOPICS, Topics, TopicSpec, provision
from tests.bench.lib.bus import (
    PARTITIONS,
    TARGET_RATIO,
    WARMUP_EVENTS,
    codec_costs,
    count_lines,
    crc32c_fast_path,
    median_phases,
    render,
    run_bare,
    run_bus,
)
from tests.bench.lib.control import delete_groups, delete_topics
from tests.bench.lib.fixtures import make_alerts
from tests.bench.lib.measure import Phase
from tests.bench.lib.procs import pidfile_rss_kib, status_kib
from tests.bench.lib.report import fmt_kib, write_figures


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


@dataclass
class Payload:
    """The same alerts for both sides: events for the bus, their JSON bytes (encoded once,
    outside the clock) for the bare client."""

    warmup_events: list[Alert]
    timed_events: list[Alert]
    warmup_values: list[bytes]
    timed_values: list[bytes]

    @classmethod
    def of(cls, events: int, size: int) -> Payload:
        alerts = make_alerts(WARMUP_EVENTS + events, size)
        warmup, timed = alerts[:WARMUP_EVENTS], alerts[WARMUP_EVENTS:]
        return cls(warmup, timed, [encode(e) for e in warmup], [encode(e) for e in timed])

    @property
    def total_bytes(self) -> int:
        return sum(map(len, self.timed_values))


@dataclass
class Rounds:
    phases: list[dict[str, tuple[Phase, Phase]]] = field(default_factory=list)
    lag: dict[str, int] = field(default_factory=lambda: {"bare": 0, "bus": 0})
    dead_lettered: int = 0
    topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)


def one_round(
    console: Console,
    settings: KafkaSettings,
    prefix: str,
    r: int,
    payload: Payload,
    tracer: trace.Tracer,
    profiler: cProfile.Profile | None,
    out: Rounds,
) -> None:
    """Bare, then bus, on topics of the round's own; their phases, lag and DLQ into ``out``."""
    alerts = dataclasses.replace(TOPICS[Topics.ALERTS], partitions=PARTITIONS)
    dlq: TopicSpec = dataclasses.replace(TOPICS[Topics.EVENTS_DLQ], partitions=PARTITIONS)
    bare_prefix, bus_prefix = f"{prefix}r{r}.bare.", f"{prefix}r{r}.bus."
    bare_topic = bare_prefix + alerts.name
    bus_topic, dlq_topic = bus_prefix + alerts.name, bus_prefix + dlq.name
    bare_group, bus_group = f"{prefix}r{r}.bare-group", f"{prefix}r{r}.bus-group"
    out.topics += [bare_topic, bus_topic, dlq_topic]
    out.groups += [bare_group, bus_group]
    provision(settings, [alerts], name_prefix=bare_prefix)
    provision(settings, [alerts, dlq], name_prefix=bus_prefix)
    bare = run_bare(settings, bare_topic, bare_group, payload.warmup_values, payload.timed_values)
    bus = run_bus(
        settings,
        bus_topic,
        dlq_topic,
        bus_group,
        tracer,
        payload.warmup_events,
        payload.timed_events,
        payload.total_bytes,
        profiler,
    )
    out.phases.append({"bare": bare, "bus": bus})
    e2e = bus[0].then(bus[1]).msgs_per_s / bare[0].then(bare[1]).msgs_per_s
    console.print(f"round {r + 1}: end-to-end bus / bare {e2e:.2f}")
    with KafkaAdmin(settings) as admin:
        out.lag["bare"] += admin.lag(bare_group, bare_topic)
        out.lag["bus"] += admin.lag(bus_group, bus_topic)
        out.dead_lettered += sum(admin.end_offsets(dlq_topic).values())


def memory_kib() -> dict[str, int | None]:
    var = default_var_dir()
    return {
        "kafka_broker_rss": pidfile_rss_kib(var / "kafka" / "node-1" / "kafka.pid"),
        "redis_rss": pidfile_rss_kib(var / "redis" / "redis.pid"),
        "bench_rss": status_kib(os.getpid(), "VmRSS"),
        "bench_peak_rss": status_kib(os.getpid(), "VmHWM"),
    }


def print_summary(
    console: Console,
    ratio: float,
    verdict: str,
    codec: dict[str, float],
    rounds: Rounds,
    spans: dict[str, int],
    fast_crc: bool,
    memory: dict[str, int | None],
) -> None:
    console.print(f"end-to-end bus / bare: {ratio:.2f} (target ≥ {TARGET_RATIO:.1f}): {verdict}")
    console.print(
        f"codec per event (no Kafka): encode {codec['encode_us']} µs, "
        f"decode {codec['decode_us']} µs, json.loads {codec['json_loads_us']} µs"
    )
    console.print(
        f"lag after run: bare {rounds.lag['bare']}, bus {rounds.lag['bus']}; "
        f"dead-lettered: {rounds.dead_lettered}; "
        f"spans exported: {spans['exported']:,} of {spans['expected']:,}"
    )
    console.print(f"crc32c fast path: {'yes' if fast_crc else 'no'}")
    console.print(
        f"resident memory: kafka broker {fmt_kib(memory['kafka_broker_rss'])}, "
        f"redis {fmt_kib(memory['redis_rss'])}, "
        f"this process {fmt_kib(memory['bench_rss'])} "
        f"(peak {fmt_kib(memory['bench_peak_rss'])})"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    console = Console(soft_wrap=True)
    settings = KafkaSettings()
    started = datetime.now(UTC)

    # Unique names: a run never reads another run's records, and cleanup cannot hit real topics.
    prefix = f"bench-{int(time.time())}-{os.getpid()}."
    payload = Payload.of(args.events, args.size)
    total_bytes = payload.total_bytes
    codec = codec_costs(payload.timed_events, payload.timed_values)

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
    rounds = Rounds()
    try:
        # Alternating rounds and medians: on 2 shared cores one pass of each side is noise.
        for r in range(args.rounds):
            one_round(console, settings, prefix, r, payload, tel.tracer, profiler, rounds)
    finally:
        tel.shutdown()
        delete_topics(rounds.topics, print)
        delete_groups(settings, rounds.groups)
    # One PRODUCER and one CONSUMER span per event, warm-up included. Fewer exported means the
    # BatchSpanProcessor's queue overflowed and dropped spans: tracing was cheaper than in a
    # service whose exporter keeps up.
    spans = {
        "exported": count_lines(traces_dir / "bench.jsonl"),
        "expected": 2 * (WARMUP_EVENTS + args.events) * args.rounds,
    }
    shutil.rmtree(traces_dir, ignore_errors=True)

    bare, bus = median_phases(rounds.phases, "bare"), median_phases(rounds.phases, "bus")
    ratios = {k: bus[k].msgs_per_s / bare[k].msgs_per_s for k in bare}
    verdict = render(console, bare, bus, ratios)
    memory = memory_kib()
    fast_crc = crc32c_fast_path()
    print_summary(console, ratios["end_to_end"], verdict, codec, rounds, spans, fast_crc, memory)
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
        console.print("bus consumer thread, top 25 by cumulative time (figures above are slowed):")
        print(out.getvalue())

    result: dict[str, Any] = {
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
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
        "lag": rounds.lag,
        "dead_lettered": rounds.dead_lettered,
        "spans": spans,
        "memory_kb": memory,
    }
    out_path = write_figures("bus", result)
    console.print(f"figures written to {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
