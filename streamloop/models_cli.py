"""``streamloop retrain`` and ``streamloop models …``: the model lifecycle from the terminal.

Reads come from the registry's read model (Redis); changes are events: ``retrain`` publishes a
retrain request and follows its progress on the topics, ``promote`` and ``rollback`` publish
operator commands on ``models.lifecycle`` and wait for the registry's answer.

The events and how they are published live in ``shared.commands``, shared with the
registry's HTTP API.
"""

from __future__ import annotations

import argparse
import getpass
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from shared.bus import EventProducer
from shared.calibration import Calibration
from shared.commands import (
    import_request,
    lifecycle_command,
    publish_command,
    publish_retrain,
    retrain_request,
)
from shared.events import (
    Alert,
    Event,
    ModelEvaluated,
    ModelLifecycle,
    ModelTrained,
    RetrainRequest,
    TrainingProgress,
    decode,
)
from shared.reader import TopicReader
from shared.redis_registry import RedisRegistry
from shared.redis_store import connect
from shared.registry import DEFAULT_MODEL_NAME, RegistryView, VersionView, valid_name
from shared.settings import ArtifactSettings, KafkaSettings, RedisSettings, TaskSettings
from shared.topics import Topics

__all__ = ["add_commands", "print_versions"]

console = Console()


class _Watch:
    """Events on ``topics`` published after the watch was opened (no consumer group)."""

    def __init__(self, settings: KafkaSettings, topics: list[str]) -> None:
        self._reader = TopicReader(settings, topics, start="end")

    def events(self, timeout_s: float) -> Iterator[tuple[str, Event | None]]:
        """Events as they come; ``(topic, None)`` after each quiet poll, so callers can look
        elsewhere in between. Raises TimeoutError after ``timeout_s``."""
        for rec in self._reader.follow(timeout_s=timeout_s, poll_ms=300):
            if rec is None:
                yield "", None
                continue
            try:
                yield self._reader.logical(rec.topic), decode(rec.value, Event)
            except ValueError:
                continue

    def close(self) -> None:
        self._reader.close()


def _registry() -> RedisRegistry:
    return RedisRegistry(connect(RedisSettings()))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


# --- retrain ---------------------------------------------------------------------------


def cmd_retrain(args: argparse.Namespace) -> int:
    request = retrain_request(args.model, args.reason, args.key)
    return _request(request, args)


def _request(request: RetrainRequest, args: argparse.Namespace) -> int:
    """Publish ``request`` and, unless ``--no-wait``, follow it to the gate's verdict."""
    kafka = KafkaSettings()
    key = request.idempotency_key
    watch = (
        _Watch(
            kafka,
            [
                Topics.TRAINING_PROGRESS,
                Topics.MODELS_TRAINED,
                Topics.MODELS_EVALUATED,
                Topics.ALERTS,
                Topics.MODELS_LIFECYCLE,
            ],
        )
        if not args.no_wait
        else None
    )
    with EventProducer(kafka, client_id="streamloop-cli") as producer:
        publish_retrain(producer, request)
    asked = "import" if request.trigger == "import" else "retrain"
    console.print(f"{asked} requested for [bold]{args.model}[/] (key {key})")
    if watch is None:
        return 0
    try:
        return _follow_retrain(watch, key, args.model, args.timeout)
    finally:
        watch.close()


def _follow_retrain(watch: _Watch, key: str, model: str, timeout_s: float) -> int:
    registry = _registry()
    version: str | None = None
    verdict: ModelEvaluated | None = None
    blessed_at = 0.0
    with Progress(
        TextColumn("[bold]training[/]"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total}"),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("train", total=None, stats="waiting for the training service…")
        for _topic, ev in watch.events(timeout_s):
            if isinstance(ev, TrainingProgress) and ev.idempotency_key == key:
                bar.update(
                    task,
                    completed=ev.epoch,
                    total=ev.epochs,
                    stats=f"loss {ev.loss:.3f}  accuracy {100 * ev.accuracy:.1f}%",
                )
            elif isinstance(ev, ModelTrained) and ev.idempotency_key == key:
                version = ev.model_version
                bar.update(task, stats=f"trained {version}; evaluating…")
            elif isinstance(ev, ModelEvaluated) and ev.model_version == version:
                verdict = ev
                if ev.verdict == "rejected":
                    break
                blessed_at = time.monotonic()
                bar.update(task, stats=f"{ev.verdict}; waiting for the registry…")
            elif isinstance(ev, Alert) and ev.details.get("idempotency_key") == key:
                bar.stop()
                console.print(f"[yellow]{ev.message}[/]")
                return 1
            elif blessed_at and version is not None:
                # The registry answers with an alias move, or none when the version already
                # holds its alias (the same data and seed give the same weights).
                held = registry.get_version(model, version)
                if held is not None and held.aliases:
                    bar.update(task, stats=f"{version}: {', '.join(held.aliases)}")
                    break
                if time.monotonic() - blessed_at > 20:
                    bar.update(task, stats=f"{version} blessed; no alias moved")
                    break
    if verdict is None:
        return 1
    if verdict.verdict == "rejected":
        console.print(f"[red]{version} rejected by the gate:[/]")
        for reason in verdict.reasons:
            console.print(f"  • {reason}")
        return 1
    held = registry.get_version(model, version or "")
    aliases = ", ".join(held.aliases) if held and held.aliases else "no alias"
    console.print(f"[green]{version} blessed[/]: now {aliases}")
    return 0


# --- models ----------------------------------------------------------------------------


def _aliases(v: VersionView) -> str:
    return ", ".join(v.aliases) or ("rolled back" if v.rolled_back else "")


def print_versions(view: RegistryView) -> None:
    """The versions of a model as a table, newest first."""
    table = Table(title=f"{view.model_name}: {len(view.versions)} versions", expand=False)
    for col in (
        "#",
        "version",
        "alias",
        "created",
        "dataset",
        "fresh acc",
        "reference acc",
        "verdict",
    ):
        table.add_column(col, justify="right" if col in ("#", "dataset") else "left")
    for v in reversed(view.versions):
        colour = {"blessed": "green", "rejected": "red"}.get(v.status, "yellow")
        table.add_row(
            str(v.number),
            v.version,
            f"[bold]{_aliases(v)}[/]",
            v.registered_at.strftime("%Y-%m-%d %H:%M:%S"),
            str(v.dataset.size),
            _pct(v.fresh_accuracy),
            _pct(v.reference_accuracy),
            f"[{colour}]{v.verdict or 'pending'}[/]",
        )
    console.print(table)


def cmd_models_list(args: argparse.Namespace) -> int:
    view = _registry().view(args.model)
    if not view.versions:
        console.print(f"no versions of {args.model} registered yet")
        return 0
    print_versions(view)
    return 0


def _metrics_table(title: str, holdout: dict[str, Any], classes: list[str]) -> Table:
    table = Table(title=title)
    table.add_column("class")
    for col in ("precision", "recall", "F1", "support"):
        table.add_column(col, justify="right")
    cand = holdout.get("candidate") or {}
    for c in classes:
        m = (cand.get("per_class") or {}).get(c) or {}
        table.add_row(
            c,
            _pct(m.get("precision")),
            _pct(m.get("recall")),
            _pct(m.get("f1")),
            str(m.get("support", "")),
        )
    return table


def cmd_models_show(args: argparse.Namespace) -> int:
    if not valid_name(args.version):
        console.print(f"[red]{args.version!r} is not a version id[/]")
        return 2
    view = _registry().view(args.model)
    v = view.version(args.version)
    if v is None:
        console.print(f"[red]no version {args.version} of {args.model}[/]")
        return 1
    _show_version(view, v)
    return 0


def _show_version(view: RegistryView, v: VersionView) -> None:
    tree = Tree(f"[bold]{v.model_name} {v.version}[/] (#{v.number}) {_aliases(v)}")
    lineage = tree.add("lineage")
    lineage.add(f"parent: {v.parent_version or '—'}")
    lineage.add(f"init: {v.init}")
    if v.imported is not None:
        i = v.imported
        note = f": {i.note}" if i.note else ""
        lineage.add(f"imported: {i.file_name} (sha256 {i.file_sha256[:16]}…) by {i.actor}{note}")
    lineage.add(
        f"request: {v.idempotency_key} ({v.tags.get('trigger', '?')}: {v.tags.get('reason', '')})"
    )
    d = v.dataset
    ds = lineage.add(f"dataset {d.snapshot_id}: {d.size} train, {d.holdout_size} fresh holdout")
    ds.add(f"manifest: {d.manifest_uri} (sha256 {d.manifest_sha256[:16]}…)")
    ds.add(f"frame ids sha256: {d.frame_ids_sha256[:16]}…")
    ds.add(f"offsets: {d.topic_offsets}")
    ds.add(f"per class: {d.per_class}")
    ds.add(f"per condition: {d.per_condition}")
    lineage.add(f"artifact: {v.artifact_uri}")
    lineage.add(f"code {v.code_version}, seed {v.seed}, trained in {v.duration_s:.1f}s")
    lineage.add(f"hyperparameters: {v.hyperparameters}")
    lineage.add(f"training metrics: { {k: round(x, 4) for k, x in v.training_metrics.items()} }")
    if v.evaluation is None:
        tree.add("[yellow]not evaluated yet[/]")
        console.print(tree)
        return
    ev = v.evaluation
    colour = "green" if ev.verdict == "blessed" else "red"
    verdict = tree.add(f"[{colour}]{ev.verdict}[/] vs champion {ev.champion_version or '—'}")
    for reason in ev.reasons:
        verdict.add(reason)
    console.print(tree)
    classes = list(ev.metrics.get("classes") or [])
    for name, holdout in (ev.metrics.get("holdouts") or {}).items():
        cand = holdout.get("candidate")
        if not cand:
            console.print(f"{name} holdout: empty")
            continue
        champ = holdout.get("champion") or {}
        console.print(
            f"\n[bold]{name} holdout[/] ({holdout.get('n')} examples): accuracy "
            f"{_pct(cand.get('accuracy'))} (champion {_pct(champ.get('accuracy'))}), macro-F1 "
            f"{_pct(cand.get('macro_f1'))}, ECE {cand.get('ece', 0):.3f}"
        )
        console.print(_metrics_table(f"{name}: per class", holdout, classes))
        slices = Table(title=f"{name}: per slice")
        for col in ("slice", "n", "accuracy", "champion"):
            slices.add_column(col, justify="left" if col == "slice" else "right")
        champ_slices = champ.get("per_slice") or {}
        for key, m in sorted((cand.get("per_slice") or {}).items()):
            slices.add_row(
                key,
                str(m.get("n")),
                _pct(m.get("accuracy")),
                _pct((champ_slices.get(key) or {}).get("accuracy")),
            )
        console.print(slices)
    calibration = _calibration_line(ev.metrics)
    if calibration is not None:
        console.print(calibration)
    lat = ev.metrics.get("latency")
    if lat:
        console.print(
            f"CPU latency: {lat['median_ms']:.1f} ms per batch of {lat['batch_size']} "
            f"({lat['per_item_ms']:.3f} ms per image)"
        )


def _calibration_line(metrics: Mapping[str, Any]) -> str | None:
    """What ``models show`` says of a version's calibration (``metrics["calibration"]``,
    ``shared.calibration``): its temperature and the ECE and NLL before and after, on the
    holdout it was fitted on. None when the evaluation has none or it does not parse."""
    try:
        c = Calibration.model_validate(metrics.get("calibration"))
    except ValidationError:
        return None
    return (
        f"calibration: temperature {c.temperature:.3f}, fitted on the {c.fitted_on} holdout "
        f"({c.n} examples): ECE {c.ece_before:.3f} -> {c.ece_after:.3f}, "
        f"NLL {c.nll_before:.3f} -> {c.nll_after:.3f}"
    )


def _command(
    args: argparse.Namespace,
    action: Literal["promote_requested", "rollback_requested"],
    version: str | None,
) -> int:
    kafka = KafkaSettings()
    command = lifecycle_command(
        args.model,
        action,
        version,
        actor=f"{getpass.getuser()}@cli",
        reason=args.reason,
        force=bool(getattr(args, "force", False)),
    )
    watch = _Watch(kafka, [Topics.MODELS_LIFECYCLE])
    try:
        with EventProducer(kafka, client_id="streamloop-cli") as producer:
            publish_command(producer, command)
        for _, ev in watch.events(args.timeout):
            if isinstance(ev, ModelLifecycle) and ev.cause_id == command.event_id:
                if ev.action == "command_rejected":
                    console.print(f"[red]refused:[/] {ev.reason}")
                    return 1
                console.print(
                    f"[green]{ev.alias} is now {ev.model_version}[/] "
                    f"(was {ev.previous_version or '—'}; {ev.action})"
                )
                return 0
    except TimeoutError:
        console.print("[red]the registry did not answer; is it running?[/]")
        return 1
    finally:
        watch.close()
    return 1


def cmd_models_promote(args: argparse.Namespace) -> int:
    if not valid_name(args.version):
        console.print(f"[red]{args.version!r} is not a version id[/]")
        return 2
    return _command(args, "promote_requested", args.version)


def cmd_models_rollback(args: argparse.Namespace) -> int:
    return _command(args, "rollback_requested", None)


def cmd_models_import(args: argparse.Namespace) -> int:
    # torch and torchvision load only for the commands that need them.
    from shared.artifacts import ArtifactStore, FormatError
    from shared.imports import ImportRefusedError, import_weights, spec_for_import

    path = Path(args.file)
    try:
        spec = spec_for_import(args.architecture, args.classes, args.input, TaskSettings())
        data = path.read_bytes()
        imported = import_weights(
            data,
            path.name,
            spec,
            ArtifactStore(ArtifactSettings().root),
            actor=f"{getpass.getuser()}@cli",
            note=args.note,
        )
    except (ImportRefusedError, FormatError, OSError) as exc:
        console.print(f"[red]not imported:[/] {exc}")
        return 1
    version = imported.artifact_sha256[:12]
    known = _registry().get_version(args.model, version)
    if known is not None:
        console.print(
            f"{path.name} is already version {version} of {args.model} "
            f"({known.verdict or 'not evaluated yet'}); nothing to do"
        )
        return 0
    console.print(
        f"{path.name}: a {spec.architecture} for {len(spec.classes)} classes at "
        f"{spec.image_width}x{spec.image_height}, stored as version {version}"
    )
    return _request(import_request(args.model, imported), args)


def cmd_models_convert(args: argparse.Namespace) -> int:
    from shared.imports import ImportRefusedError, convert_checkpoint

    try:
        count = convert_checkpoint(Path(args.checkpoint), Path(args.output))
    except (ImportRefusedError, OSError) as exc:
        console.print(f"[red]not converted:[/] {exc}")
        return 1
    console.print(f"{count} tensors written to {args.output}")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``retrain`` and ``models`` to the CLI's sub-parsers."""
    p = sub.add_parser("retrain", help="request a training run and follow it to its verdict")
    p.add_argument("--reason", default="operator request")
    p.add_argument("--model", default=DEFAULT_MODEL_NAME)
    p.add_argument("--key", help="idempotency key (default: a new one)")
    p.add_argument("--no-wait", action="store_true", help="publish the request and return")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to follow the run")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("models", help="list, show, promote, roll back and import model versions")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    for name, func, helptext in (
        ("list", cmd_models_list, "versions with aliases, data size, accuracy and verdict"),
        ("show", cmd_models_show, "lineage and metrics per class and slice of one version"),
        ("promote", cmd_models_promote, "make VERSION the champion"),
        ("rollback", cmd_models_rollback, "give the champion alias back to the previous one"),
    ):
        q = msub.add_parser(name, help=helptext)
        if name in ("show", "promote"):
            q.add_argument("version")
        q.add_argument("--model", default=DEFAULT_MODEL_NAME)
        if name in ("promote", "rollback"):
            q.add_argument("--reason", default="operator request")
            q.add_argument("--timeout", type=float, default=30.0)
        if name == "promote":
            q.add_argument("--force", action="store_true", help="even a version the gate rejected")
        q.set_defaults(func=func)

    q = msub.add_parser(
        "import",
        help="register weights trained elsewhere (safetensors) as a candidate for the gate",
    )
    q.add_argument("file", help="a .safetensors state dict")
    q.add_argument("--architecture", required=True, help="streamloop-cnn-v1 or a torchvision name")
    q.add_argument("--classes", required=True, help="class names in output order: c1,c2,...")
    q.add_argument("--input", help="input size WxH (default: the task's)")
    q.add_argument("--note", default="", help="why, where from (kept in the lineage)")
    q.add_argument("--model", default=DEFAULT_MODEL_NAME)
    q.add_argument("--no-wait", action="store_true", help="publish the request and return")
    q.add_argument("--timeout", type=float, default=900.0, help="seconds to follow it")
    q.set_defaults(func=cmd_models_import)

    q = msub.add_parser(
        "convert", help="a torch checkpoint's state dict to safetensors (weights_only loading)"
    )
    q.add_argument("checkpoint", help="a torch .pt/.pth file holding a state dict")
    q.add_argument("output", help="the .safetensors file to write")
    q.set_defaults(func=cmd_models_convert)
