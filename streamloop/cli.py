"""``streamloop``: one entry point for infrastructure, services and inspection."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
SERVICES = (
    "simulator",
    "ingest",
    "serving",
    "labelling",
    "monitoring",
    "training",
    "evaluation",
    "registry",
)

console = Console()


def _script(*args: str) -> int:
    return subprocess.call([str(ROOT / "infra" / args[0]), *args[1:]])


def cmd_up(args: argparse.Namespace) -> int:
    mode = "cluster" if args.cluster else "single"
    rc = _script("kafka/kafka.sh", "start", mode) or _script("redis/redis.sh", "start")
    if rc:
        return rc
    if not args.cluster:
        return cmd_topics(argparse.Namespace(action="create"))
    return 0


def cmd_down(_args: argparse.Namespace) -> int:
    return (
        _script("kafka/kafka.sh", "stop", "single")
        | _script("kafka/kafka.sh", "stop", "cluster")
        | _script("redis/redis.sh", "stop")
    )


def cmd_status(_args: argparse.Namespace) -> int:
    rc = _script("kafka/kafka.sh", "status") | _script("redis/redis.sh", "status")
    from shared.kafka_admin import KafkaAdmin
    from shared.settings import KafkaSettings

    try:
        with KafkaAdmin(KafkaSettings()) as admin:
            topics = admin.list_topics()
        console.print(f"topics: {len(topics)} ({', '.join(topics) or 'none'})")
    except Exception as exc:  # noqa: BLE001 - status reports, it does not fail
        console.print(f"[yellow]kafka not reachable:[/] {exc}")
    return rc


def cmd_topics(args: argparse.Namespace) -> int:
    from shared.kafka_admin import KafkaAdmin, wait_for_kafka
    from shared.settings import KafkaSettings
    from shared.topics import TOPICS, provision

    settings = KafkaSettings()
    wait_for_kafka(settings, timeout_s=30)
    if args.action == "create":
        report = provision(settings)
        for name in report.created:
            console.print(f"[green]created[/] {name}")
        for name, diff in report.updated.items():
            console.print(f"[yellow]updated[/] {name}: {diff}")
        for name, n in report.partitions_added.items():
            console.print(f"[yellow]partitions[/] {name} -> {n}")
        console.print(f"topics: {len(report.unchanged)} unchanged, {len(report.created)} created")
        return 0
    with KafkaAdmin(settings) as admin:
        counts = admin.describe_partition_counts()
    table = Table("topic", "partitions", "cleanup", "retention", "key", "payload")
    for name, spec in TOPICS.items():
        days = f"{spec.retention_ms / 86_400_000:g} d" if spec.retention_ms else "forever"
        payload = spec.event.__name__ if spec.event else "original bytes"
        table.add_row(name, str(counts.get(name, "missing")), spec.cleanup, days, spec.key, payload)
    console.print(table)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A traced round trip: a producer publishes events, a consumer loop in another
    tracer provider handles them, and the span tree is read back from the trace files."""
    from shared.bus import ConsumerLoop, EventProducer, Message
    from shared.events import Alert
    from shared.kafka_admin import wait_for_kafka
    from shared.settings import KafkaSettings, TelemetrySettings
    from shared.telemetry import read_spans, setup_telemetry
    from shared.topics import Topics, provision
    from streamloop.trace_view import render_trace, select_trace

    kafka, tel_settings = KafkaSettings(), TelemetrySettings(exporter="jsonl")
    console.rule("[bold]StreamLoop demo: a traced round trip through Kafka")
    wait_for_kafka(kafka, timeout_s=60)
    provision(kafka)
    camera = setup_telemetry("demo-publisher", tel_settings, set_global=False)
    worker = setup_telemetry("demo-consumer", tel_settings, set_global=False)
    producer = EventProducer(kafka, client_id="demo-publisher", tracer=camera.tracer)
    run = f"demo-{int(time.time())}"
    sent: dict[str, float] = {}
    for i in range(args.events):
        event = Alert(severity="info", kind=run, message=f"round trip {i + 1}", source="demo")
        sent[event.event_id] = time.perf_counter()
        producer.publish(Topics.ALERTS, event, key=run)
    producer.flush()
    console.print(f"published {len(sent)} events to [bold]{Topics.ALERTS}[/]")

    got: dict[str, float] = {}
    done = threading.Event()

    def handle(msg: Message[Alert]) -> None:
        eid = msg.event.event_id
        if eid in sent:
            got[eid] = time.perf_counter()
            console.print(
                f"  handled [bold]{msg.event.message}[/] from partition {msg.partition} "
                f"offset {msg.offset} after {1000 * (got[eid] - sent[eid]):.0f} ms"
            )
            if len(got) == len(sent):
                done.set()

    loop = ConsumerLoop(
        kafka,
        group_id=f"streamloop-demo-{run}",
        topics=[Topics.ALERTS],
        event_type=Alert,
        producer=producer,
        handler=handle,
        tracer=worker.tracer,
    )
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    ok = done.wait(60)
    loop.stop()
    thread.join(30)
    producer.close()
    camera.shutdown()
    worker.shutdown()
    if not ok:
        console.print(f"[red]only {len(got)} of {len(sent)} events came back within 60 s")
        return 1
    first = next(iter(sent))
    spans = select_trace(read_spans(tel_settings.traces_dir), first)
    console.print(render_trace(spans))
    console.print(
        f"\n{len(got)}/{len(sent)} events made the round trip. Traces: {tel_settings.traces_dir}\n"
        f"See one again with: [bold]streamloop trace {first}[/]"
    )
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from shared.settings import TelemetrySettings
    from shared.telemetry import read_spans
    from streamloop.trace_view import render_trace, select_trace

    traces_dir = TelemetrySettings().traces_dir
    spans = select_trace(read_spans(traces_dir), args.id)
    if not spans:
        console.print(f"[red]no trace found for {args.id!r} in {traces_dir}")
        return 1
    console.print(render_trace(spans))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module(f"services.{args.service}.__main__")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(f"services.{args.service}"):
            console.print(f"[red]service {args.service!r} is not part of this release[/]")
            return 2
        raise
    rc: int = module.main()
    return rc


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="streamloop", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start local Kafka and Redis and create the topics")
    p.add_argument("--cluster", action="store_true", help="the 3-broker cluster instead")
    p.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop local Kafka and Redis").set_defaults(func=cmd_down)
    sub.add_parser("status", help="local infrastructure and topics").set_defaults(func=cmd_status)

    p = sub.add_parser("topics", help="create (idempotent) or list StreamLoop's topics")
    p.add_argument("action", choices=["create", "list"])
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("demo", help="a traced round trip through the bus")
    p.add_argument("--events", type=int, default=5)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("trace", help="print a trace from the local trace files")
    p.add_argument("id", help="trace id, span id, or event / frame / request id")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("serve", help="run one service in the foreground")
    p.add_argument("service", choices=SERVICES)
    p.set_defaults(func=cmd_serve)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":  # services configure their own logging
        from shared.settings import TelemetrySettings
        from shared.telemetry import configure_logging

        configure_logging(
            "streamloop-cli", TelemetrySettings(log_format="text", log_level="WARNING")
        )
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except TimeoutError as exc:
        console.print(f"[red]{exc}[/]  (is Kafka running? try: streamloop up)")
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
