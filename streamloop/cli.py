"""``streamloop``: one entry point for infrastructure, services and inspection."""

from __future__ import annotations

import argparse
import importlib
import json
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
    "annotation",
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


def cmd_status(args: argparse.Namespace) -> int:
    """Local infrastructure (the kafka and redis scripts), then every service's consumer
    group with its lag and health, then the HTTP health endpoints. Exits 0 whatever the
    services' state (it reports); 1 only when Kafka does not answer."""
    import logging

    from shared.settings import KafkaSettings
    from streamloop.status import (
        HTTP_ENDPOINTS,
        KafkaUnreachableError,
        ServiceStatus,
        collect,
        http_table,
        probe_http,
        status_table,
    )

    # The client logs every refused connection; status says it once, in its own words.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    kafka = KafkaSettings()
    scripts = [("kafka/kafka.sh", "status"), ("redis/redis.sh", "status")]
    infra: list[str] = []
    for script in scripts:
        if args.json:  # stdout is the JSON document: keep the scripts' lines for it
            done = subprocess.run(
                [str(ROOT / "infra" / script[0]), *script[1:]], capture_output=True, text=True
            )
            infra += done.stdout.splitlines()
        else:
            _script(*script)
    statuses: list[ServiceStatus] = []
    error: str | None = None
    try:
        statuses = collect(kafka, threshold=args.lag_threshold, timeout_s=args.timeout)
    except KafkaUnreachableError as exc:
        error = str(exc)
    probes = [probe_http(name, url, timeout_s=1.0) for name, url in HTTP_ENDPOINTS]
    if args.json:
        doc = {
            "infrastructure": infra,
            "kafka": {
                "bootstrap_servers": kafka.bootstrap_servers,
                "topic_prefix": kafka.topic_prefix,
                "reachable": error is None,
                "error": error,
            },
            "lag_threshold": args.lag_threshold,
            "services": [s.to_dict() for s in statuses],
            "http": [p.to_dict() for p in probes],
        }
        print(json.dumps(doc, indent=2))
    else:
        if error is None:
            console.print(status_table(statuses, threshold=args.lag_threshold))
        else:
            console.print(f"[red]{error}[/]  (is Kafka running? try: streamloop up)")
        console.print(http_table(probes))
    return 0 if error is None else 1


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
    if args.round_trip:
        return _demo_round_trip(args)
    from streamloop.demo import run_demo

    return run_demo(
        console,
        scenario=args.scenario,
        bootstrap_scenario=args.bootstrap_scenario,
        bootstrap_s=args.bootstrap_seconds,
        rate=args.rate,
        timeout_s=args.timeout,
        recovery_ratio=args.recovery_ratio,
        summary_path=Path(args.summary) if args.summary else None,
        model_name=args.model,
        linger_s=args.linger,
    )


def _demo_round_trip(args: argparse.Namespace) -> int:
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


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _image_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {raw}")
    return files


def _read_labels(csv_path: str) -> dict[str, str]:
    """``file,label`` rows (a header row is optional); keys are file names or paths, in
    ``/`` form (``./a.png`` is ``a.png``)."""
    import csv

    out: dict[str, str] = {}
    with open(csv_path, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 2 or not row[0].strip() or row[0].strip().lower() in ("file", "path"):
                continue
            out[Path(row[0].strip()).as_posix()] = row[1].strip()
    return out


def label_keys(path: Path, folders: list[Path], csv_dir: Path | None) -> list[str]:
    """The names a labels CSV may give the image ``path`` by, the most specific first: the
    path as found, the path from the CSV's folder, from each folder published, and the bare
    file name. So ``train/cat/1.jpg,cat`` beside ``train/`` labels ``train/cat/1.jpg`` whether
    ``train`` or ``train/cat`` is published."""
    keys = [path.as_posix()]
    resolved = path.resolve()
    for base in ([csv_dir] if csv_dir is not None else []) + folders:
        try:
            keys.append(resolved.relative_to(base.resolve()).as_posix())
        except ValueError:
            continue
    keys.append(path.name)
    return list(dict.fromkeys(keys))


def match_labels(
    files: list[Path], labels: dict[str, str], folders: list[Path], csv_dir: Path | None
) -> tuple[dict[Path, str], list[str]]:
    """Each file's label from ``labels`` (``_read_labels``), by ``label_keys``; and the CSV
    keys that named none of the files, in CSV order (a typo, or another folder's file)."""
    found: dict[Path, str] = {}
    used: set[str] = set()
    for path in files:
        for key in label_keys(path, folders, csv_dir):
            if key in labels:
                found[path] = labels[key]
                used.add(key)
                break
    return found, [k for k in labels if k not in used]


def cmd_publish(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from shared.sdk import FramePublisher, LabelPublisher
    from shared.settings import KafkaSettings, TaskSettings

    files = _image_files(args.paths)
    if not files:
        console.print("[red]no image files found[/]")
        return 1
    rows = _read_labels(args.labels) if args.labels else {}
    folders = [Path(p) for p in args.paths if Path(p).is_dir()]
    csv_dir = Path(args.labels).parent if args.labels else None
    labels, unmatched = match_labels(files, rows, folders, csv_dir)
    classes = set(TaskSettings().classes)
    unknown = sorted({c for c in labels.values() if c not in classes})
    if unknown:
        console.print(f"[red]labels name unknown classes {unknown}; configured: {sorted(classes)}")
        return 2
    kafka = KafkaSettings()
    published: list[tuple[str, str, str | None]] = []
    failed: list[tuple[str, str]] = []
    with (
        FramePublisher(kafka, camera_id=args.camera, source="cli") as frames,
        LabelPublisher(kafka, annotator="cli") as labeller,
        Progress(
            TextColumn("publishing"), BarColumn(), MofNCompleteColumn(), console=console
        ) as progress,
    ):
        task = progress.add_task("frames", total=len(files))
        for path in files:
            try:
                frame_id = frames.publish(path)
            except (OSError, ValueError) as exc:
                failed.append((str(path), str(exc)))
            else:
                label = labels.get(path)
                if label:
                    labeller.publish(frame_id, label, camera_id=args.camera)
                published.append((str(path), frame_id, label))
            progress.advance(task)
    if args.map:
        import csv

        with open(args.map, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "frame_id", "label"])
            writer.writerows(published)
    n_labels = sum(1 for *_, lab in published if lab)
    console.print(
        f"published [bold]{len(published)}[/] frames from camera [bold]{args.camera}[/] "
        f"and {n_labels} labels" + (f"; frame ids in {args.map}" if args.map else "")
    )
    if n_labels:
        from services.training.settings import TrainingSettings

        need = TrainingSettings().bootstrap_min_examples
        console.print(
            f"until a first model exists, training starts by itself at {need:,} labelled "
            "examples (STREAMLOOP_TRAINING_BOOTSTRAP_MIN_EXAMPLES);\n"
            "`streamloop retrain` trains on the examples present now"
        )
    if unmatched:
        shown = ", ".join(unmatched[:3]) + (", ..." if len(unmatched) > 3 else "")
        console.print(
            f"[yellow]{len(unmatched)} rows of {args.labels} name no file published here "
            f"({shown}); a row names a file by its name, its path, or its path from the "
            "CSV's folder or from a folder published[/]"
        )
    for name, error in failed:
        console.print(f"[red]skipped {name}: {error}")
    return 1 if failed else 0


def cmd_shapes(args: argparse.Namespace) -> int:
    from streamloop.shapes import classes_env, write_set

    out = Path(args.out)
    written = write_set(out, args.per_class, args.seed)
    total = sum(written.per_class.values())
    console.print(
        f"wrote [bold]{total}[/] images of {len(written.per_class)} classes to {written.images}"
        f" and their labels to {written.labels}\nconfigure the task for them with:"
    )
    # Plain print: the line is meant to be copied, and rich would wrap or colour it.
    print(f"export STREAMLOOP_TASK_CLASSES='{classes_env()}'")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from rich.live import Live
    from rich.text import Text

    from services.simulator.app import run
    from services.simulator.runner import Stats
    from services.simulator.settings import SimulatorSettings

    overrides = {
        k: v
        for k, v in {
            "scenario": args.scenario,
            "rate": args.rate,
            "duration_s": args.duration,
            "cameras": args.cameras,
            "seed": args.seed,
            "run_id": args.run_id,
            "summary_path": args.summary,
        }.items()
        if v is not None
    }
    from shared.settings import TelemetrySettings

    # The live line is the output; the service's own log keeps to warnings.
    quiet = TelemetrySettings(log_format="text", log_level="WARNING")
    settings = SimulatorSettings(telemetry=quiet, **overrides)

    def line(stats: Stats) -> Text:
        conditions = " ".join(
            f"{k} {v}"
            for k, v in stats.summary()["frames_by_condition"].items()  # type: ignore[attr-defined]
        )
        return Text.from_markup(
            f"[bold]{stats.frames}[/] frames ({stats.rate():.1f}/s)  "
            f"[bold]{stats.labels}[/] labels ({stats.requested_labels} requested)  "
            f"conditions: {conditions or '-'}"
        )

    console.print(f"simulating [bold]{settings.scenario}[/] (Ctrl-C stops)")
    with Live(Text("starting…"), console=console, refresh_per_second=4) as live:
        stats = run(settings, on_progress=lambda s: live.update(line(s)))
    summary = stats.summary()
    table = Table(title="sent", show_edge=False)
    table.add_column("")
    table.add_column("frames", justify="right")
    table.add_column("labels", justify="right")
    for group in ("class", "condition"):
        frames_by: dict[str, int] = summary[f"frames_by_{group}"]  # type: ignore[assignment]
        labels_by: dict[str, int] = summary[f"labels_by_{group}"]  # type: ignore[assignment]
        for name, n in frames_by.items():
            table.add_row(f"{group} {name}", str(n), str(labels_by.get(name, 0)))
    console.print(table)
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from shared.sdk import LabelPublisher
    from shared.settings import TaskSettings

    classes = TaskSettings().classes
    if args.label not in classes:
        console.print(f"[red]{args.label!r} is not a class; configured: {', '.join(classes)}")
        return 2
    with LabelPublisher(annotator=args.annotator) as labels:
        event_id = labels.publish(args.frame_id, args.label, camera_id=args.camera)
    console.print(f"labelled [bold]{args.frame_id}[/] as [bold]{args.label}[/] (event {event_id})")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from rich.live import Live

    from shared.settings import KafkaSettings
    from streamloop.tail import DLQ_TOPICS, EVENT_TAILS, dlq_record, follow

    kafka = KafkaSettings()
    if args.what == "predictions":
        from collections import deque

        from shared.events import Prediction
        from shared.sdk import PredictionFilter
        from streamloop.tail import follow_predictions, prediction_table

        sieve = PredictionFilter(args.camera)
        predictions = follow_predictions(
            kafka,
            sieve,
            shadow=args.shadow,
            last=args.last,
            max_records=args.max,
            idle_timeout_s=args.idle_exit,
        )
        if args.json:
            for p in predictions:
                print(p.model_dump_json(), flush=True)
            return 0
        title = "shadow predictions" if args.shadow else "predictions"
        recent: deque[Prediction] = deque(maxlen=30)
        with Live(prediction_table([], title=title), console=console, refresh_per_second=4) as live:
            for p in predictions:
                recent.append(p)
                live.update(prediction_table(recent, title=title, skipped=sieve.skipped))
        return 0
    if args.camera or args.shadow:
        console.print("[red]--camera and --shadow apply to tail predictions only[/]")
        return 2
    if args.what in EVENT_TAILS:
        return _tail_events(args)
    records = follow(
        kafka, DLQ_TOPICS, last=args.last, max_records=args.max, idle_timeout_s=args.idle_exit
    )
    if args.json:
        for rec in records:
            print(json.dumps(dlq_record(rec, kafka.topic_prefix), ensure_ascii=False), flush=True)
        return 0

    def table(rows: list[dict[str, object]]) -> Table:
        t = Table(title="dead letters (Ctrl-C stops)", expand=True)
        for col in ("failed_at", "source", "reason", "message", "key"):
            t.add_column(col, overflow="fold")
        for r in rows[-30:]:
            t.add_row(
                str(r["failed_at"])[:19],
                str(r["source"]),
                f"[bold]{r['reason']}[/]",
                str(r["message"])[:120],
                str(r["key"] or ""),
            )
        return t

    rows: list[dict[str, object]] = []
    with Live(table(rows), console=console, refresh_per_second=4) as live:
        for rec in records:
            rows.append(dlq_record(rec, kafka.topic_prefix))
            live.update(table(rows))
    return 0


def _tail_events(args: argparse.Namespace) -> int:
    """``tail metrics|retrain|alerts``: decoded events as JSON lines or a live table of the
    latest 30."""
    from collections import deque

    from rich.live import Live

    from shared.events import Event
    from shared.settings import KafkaSettings
    from streamloop.tail import EVENT_TAILS, EventSieve, event_table, follow_events

    tail = EVENT_TAILS[args.what]
    sieve = EventSieve(tail.types)
    events = follow_events(
        KafkaSettings(),
        tail.topic,
        sieve,
        last=args.last,
        max_records=args.max,
        idle_timeout_s=args.idle_exit,
    )
    if args.json:
        for e in events:
            print(e.model_dump_json(), flush=True)
        return 0
    recent: deque[Event] = deque(maxlen=30)
    with Live(event_table(tail, []), console=console, refresh_per_second=4) as live:
        for e in events:
            recent.append(e)
            live.update(event_table(tail, recent, skipped=sieve.skipped))
        live.update(event_table(tail, recent, skipped=sieve.skipped))  # skips after the last
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from shared.settings import TelemetrySettings
    from shared.telemetry import read_spans
    from streamloop.trace_view import render_trace, select_trace

    telemetry = TelemetrySettings()
    traces_dir = telemetry.traces_dir
    every = read_spans(traces_dir)
    spans = select_trace(every, args.id, follow_links=not args.no_links)
    if not spans:
        console.print(
            f"[red]no trace found for {args.id!r} in {traces_dir}[/]\n"
            f"A frame's trace is kept for a share of frames "
            f"(STREAMLOOP_TELEMETRY_FRAMES_SAMPLE_RATIO, {telemetry.frames_sample_ratio:g} "
            f"here), other traces for STREAMLOOP_TELEMETRY_SAMPLE_RATIO "
            f"({telemetry.sample_ratio:g}); dead letters and retrains always."
        )
        return 1
    console.print(render_trace(spans, selected=args.id, known=every))
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
    p = sub.add_parser("status", help="local infrastructure, services' consumer lag and health")
    p.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    p.add_argument(
        "--lag-threshold",
        type=int,
        default=1000,
        metavar="N",
        help="a running service with more than N records to read is lagging (default 1000)",
    )
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for Kafka (default 5)"
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("topics", help="create (idempotent) or list StreamLoop's topics")
    p.add_argument("action", choices=["create", "list"])
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser(
        "demo", help="the closed loop from nothing: drift, retrain, shadow, promotion, recovery"
    )
    p.add_argument("--scenario", default="day-to-night", help="drift scenario (name or TOML)")
    p.add_argument(
        "--bootstrap-scenario", default="labelled-day", help="scenario that trains the first model"
    )
    p.add_argument(
        "--bootstrap-seconds", type=float, default=150.0, help="scenario seconds of bootstrap"
    )
    p.add_argument("--rate", type=float, help="frames per second (default: the scenario's)")
    p.add_argument("--timeout", type=float, default=1500.0, help="give up after this long")
    p.add_argument(
        "--recovery-ratio",
        type=float,
        default=0.9,
        help="recovered when live accuracy is back to this share of its pre-drift value",
    )
    p.add_argument("--summary", help="also write the summary as JSON to this file")
    p.add_argument("--model", default="vehicle-classifier", help="model name")
    p.add_argument(
        "--linger",
        type=float,
        default=0.0,
        help="after the recovery, run on this many seconds (more windows in the figures)",
    )
    p.add_argument("--round-trip", action="store_true", help="only a traced bus round trip")
    p.add_argument("--events", type=int, default=5, help="events of the round trip")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="run a camera-fleet scenario into frames.raw and labels")
    p.add_argument("--scenario", default="day-to-night", help="built-in name or TOML path")
    p.add_argument("--rate", type=float, help="frames per second (0: as fast as possible)")
    p.add_argument("--duration", type=float, help="seconds to run (0: until Ctrl-C)")
    p.add_argument("--cameras", type=int, help="number of cameras")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--run-id", help="frame_id prefix (default random)")
    p.add_argument("--summary", help="write a JSON summary of what was sent here")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "shapes", help="write a ten-class set of shape images and labels.csv (a task of one's own)"
    )
    p.add_argument("out", metavar="OUT_DIR", help="writes OUT_DIR/images/ and OUT_DIR/labels.csv")
    p.add_argument("--per-class", type=int, default=100, help="images per class (default 100)")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same files")
    p.set_defaults(func=cmd_shapes)

    p = sub.add_parser("publish", help="publish image files to frames.raw")
    p.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    p.add_argument("--camera", required=True, help="camera id of these frames")
    p.add_argument("--labels", help="CSV of file,label rows: also publish ground truth")
    p.add_argument("--map", help="write a CSV of file,frame_id,label here")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("label", help="publish the ground-truth class of one frame")
    p.add_argument("frame_id")
    p.add_argument("label", metavar="CLASS")
    p.add_argument("--camera", help="camera id (optional)")
    p.add_argument("--annotator", default="cli")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser(
        "tail", help="follow a topic: predictions, metrics, retrain (requests), alerts or dlq"
    )
    p.add_argument("what", choices=["predictions", "metrics", "retrain", "alerts", "dlq"])
    p.add_argument("--camera", action="append", metavar="ID", help="only this camera (repeatable)")
    p.add_argument("--shadow", action="store_true", help="the shadow model's predictions")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--max", type=int, help="stop after this many records")
    p.add_argument("--last", type=int, default=10, help="start with the last N per partition")
    p.add_argument("--idle-exit", type=float, help="stop after this many seconds without records")
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("trace", help="print a trace from the local trace files")
    p.add_argument("id", help="trace id, span id, or event / frame / request id")
    p.add_argument(
        "--no-links", action="store_true", help="only this trace, not the traces linked to it"
    )
    p.set_defaults(func=cmd_trace)

    from streamloop.models_cli import add_commands

    add_commands(sub)

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
