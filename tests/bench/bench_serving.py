"""Benchmark: serving throughput in process, through Ray Serve and end to end; latency under load.

    python -m tests.bench.bench_serving [--runtime R] [--frames N] [--paced-s S]
                                        [--sample-ratio F] [--quick]

One small model is trained first (one epoch on a few hundred rendered 64x64 examples) and
stored in a temporary artifact store, then exported for the inference runtime measured
(``--runtime``, by default serving's: ``ServingSettings().runtime``) the way training does
it: ``shared.runtimes.export_model``, stored as an export artifact, checked against eager on
the frames used throughout and named in the ``models.trained`` event the benchmark announces.
``eager`` needs no export. Then, one step after the other:

(a) in process: ``ServingCore.probabilities`` with that runtime (ONNX Runtime's intra-op
    threads or torch's: 2) on batches of 128 frames, for a few seconds after a warm-up: the
    CPU ceiling of the model on this machine, as deployed. Measured before (b) and again
    after (c); the better run is the ceiling (other work on a small machine only ever lowers
    it). A call with one frame shows the fixed cost of a call. (a') is the same with
    ``eager``, measured beside it, so the runtime's gain stays visible; every ratio is to (a);
(b) Ray Serve: a local Ray started in this process the way ``services.serving`` starts it,
    ``serve.run(build_app(settings))`` with 1 replica (1 CPU, 2 threads, the runtime measured),
    called through its handle with the same batches, one call at a time (what the Kafka
    ingress does), then with two calls in flight; Ray is shut down afterwards. The replica's
    first answer is compared with the in-process runtime's and with eager's;
(c) end to end, on topics of the run's own (``bench<hex>.``): the ingest service and the
    serving service (Ray backend, same replica settings, ``STREAMLOOP_SERVING_RUNTIME`` set
    to the runtime measured) run as subprocesses with their default telemetry; the model is
    announced on ``models.lifecycle`` (``registered``, its details naming the export, then
    ``alias_set champion``) and serving must report loading it with that runtime; a warm-up
    goes through, then N PNG frames (simulator renderer, ``FramePublisher``) are published to
    ``frames.raw`` as fast as possible. Saturation rate = predictions after the first model
    call / seconds from the first to the last ``served_at``. Then three paced streams, one
    after the other, at 25 %, 50 % and 90 % of that rate, each for ``--paced-s`` seconds (the
    next starts once every prediction of the previous one has arrived); each frame's latency
    is taken from its ``captured_at`` (set when it is published) to its prediction: to
    ``served_at``, to the prediction record's Kafka timestamp (the target's measure), and to
    its receipt by a consumer in this process (p50, p95, p99, max). The CPU time of every
    process involved (from /proc) is taken over each phase.

Peak resident memory is sampled from /proc every 0.5 s: the sum over this process's
descendants whose command line names ``ray::``, ``raylet`` or ``gcs_server``; the sum over
every process below the Ray driver (Ray also runs Python helpers those names miss), with its
PSS (shared pages counted once; an RSS sum counts them in every process); the serving
process; the ingest process. Everything shares the machine's CPUs with Kafka, Redis and this
process (which publishes and reads the predictions), as a one-machine deployment would.

A measurement, not a test: it exits 0 whatever the figures, 1 only when a part failed.
Every subprocess is stopped and the run's topics are deleted at the end. Figures go to
``var/bench/serving.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import numpy as np
import numpy.typing as npt
import torch
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from rich.console import Console

from services.serving.core import ModelRef, ServingCore
from services.serving.settings import ServingSettings
from services.simulator.render import CONDITIONS
from services.training.settings import Hyperparameters
from services.training.trainer import fit
from shared.artifacts import ArtifactStore
from shared.bus import EventProducer
from shared.events import ExportRef, ModelLifecycle, ModelTrained, Prediction, decode
from shared.images import encode_image
from shared.kafka_admin import KafkaAdmin, wait_for_kafka
from shared.model import ModelSpec, example_pixels, load_model
from shared.redis_store import connect
from shared.registry import lifecycle_key
from shared.runtimes import (
    EXPORT_FORMATS,
    EagerRuntime,
    ExportFormat,
    RuntimeName,
    compare,
)
from shared.sdk import FramePublisher
from shared.settings import (
    ArtifactSettings,
    KafkaSettings,
    RedisSettings,
    TaskSettings,
    default_var_dir,
)
from shared.topics import TOPICS, Topics, provision
from tests.integration.helpers import free_port
from tests.synthetic import render_examples, store_export, trained_event

MODULE = "tests.bench.bench_serving"
REPO = Path(__file__).resolve().parents[2]

TARGET_RATIO = 0.75
"""Target: end-to-end saturation rate at least this share of the in-process rate (c/a)."""
TARGET_P99_MS = 100.0
"""Target: p99 publish-to-prediction latency (to the prediction record's Kafka timestamp) at
half the saturation rate."""
TARGET_LOAD = 0.5
"""The load level (share of the saturation rate) the latency target is taken at."""
LOAD_LEVELS = (0.25, 0.5, 0.9)
"""Paced streams, as shares of (c)'s saturation rate, run one after the other."""
RUNTIMES: tuple[RuntimeName, ...] = get_args(RuntimeName)

BATCH = 128
TORCH_THREADS = 2
REPLICA_CPUS = 1.0
SEED = 23
POOL = 256
"""Distinct rendered frames reused for every part (batches and PNG payloads)."""
CAMERAS = 4
SAMPLE_EVERY_S = 0.5
INGEST_CLAIMS = "streamloop:ingest:frame"
"""Redis namespace of ingest's duplicate claims (``services.ingest.__main__``)."""
RUNTIME_LOADED = '"model runtime"'
RUNTIME_FELL_BACK = '"no export for the requested runtime'
"""Serving's log lines (``ServingCore``) when a version is loaded with the runtime asked for,
and when it has no export for it and falls back to eager."""

TOPIC_NAMES = (
    Topics.FRAMES_RAW,
    Topics.FRAMES_VALID,
    Topics.FRAMES_DLQ,
    Topics.PREDICTIONS,
    Topics.PREDICTIONS_SHADOW,
    Topics.MODELS_LIFECYCLE,
    Topics.ALERTS,
    Topics.EVENTS_DLQ,
)


class BenchError(RuntimeError):
    """A part of the benchmark could not be measured (the message says why)."""


def condition_of(i: int) -> str:
    return CONDITIONS[i % len(CONDITIONS)]


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def mib(n_bytes: float) -> float:
    return n_bytes / 2**20


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


# --- processes and memory -----------------------------------------------------------------

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")
RAY_MARKERS = ("ray::", "raylet", "gcs_server")


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    start: int
    """Start time in clock ticks since boot: tells a process from a later one on its pid."""
    ticks: int
    """CPU time so far (user + system), in clock ticks."""
    rss: int
    cmdline: str


def scan_procs() -> dict[int, ProcInfo]:
    """Every process readable in /proc now."""
    out: dict[int, ProcInfo] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
            with open(f"/proc/{pid}/statm", encoding="ascii") as f:
                statm = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as fb:
                cmd = fb.read()
        except OSError:
            continue
        try:
            # Fields after "pid (comm) ": state ppid ... utime(14) stime(15) ... starttime(22).
            rest = stat[stat.rindex(")") + 2 :].split()
            ppid, start = int(rest[1]), int(rest[19])
            ticks = int(rest[11]) + int(rest[12])
            rss = int(statm.split()[1]) * PAGE_SIZE
        except (ValueError, IndexError):
            continue
        cmdline = cmd.replace(b"\0", b" ").decode("utf-8", "replace").strip()
        out[pid] = ProcInfo(pid, ppid, start, ticks, rss, cmdline)
    return out


def pss_of(pid: int) -> int:
    """Proportional set size (shared pages split between their users), 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return 0


def descendants(procs: dict[int, ProcInfo], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    out: set[int] = set()
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, ()))
    return out


def is_ray(cmdline: str) -> bool:
    return any(m in cmdline for m in RAY_MARKERS)


def own_descendants() -> list[ProcInfo]:
    procs = scan_procs()
    return [procs[pid] for pid in descendants(procs, os.getpid())]


@dataclass
class Peak:
    rss: int = 0
    pss: int = 0
    processes: int = 0
    names: list[str] = field(default_factory=list)


class MemorySampler:
    """Samples resident memory every ``SAMPLE_EVERY_S`` into per-phase peaks.

    Per phase: ``ray`` sums the RSS of this process's descendants whose command line names
    ``ray::``, ``raylet`` or ``gcs_server``; ``ray_all`` sums every process below the Ray
    driver (Ray's Python helpers too: autoscaler monitor, log monitor, dashboard head), with
    their PSS besides (shared pages counted once); ``watch`` adds single processes."""

    def __init__(self) -> None:
        self.phase = "setup"
        self.paused = False
        self.driver: int | None = None
        """pid whose descendants are all Ray's (this process in (b), serving's in (c))."""
        self.watch: dict[str, int] = {}
        """label -> pid of a process whose own RSS is tracked."""
        self.peaks: dict[str, Peak] = {}
        self.foreign_ray = 0
        """Most Ray processes seen at once that are not ours (another run on the machine)."""
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.paused:
                try:
                    self.sample()
                except Exception as exc:  # noqa: BLE001 - a failed sample must not end the run
                    logging.getLogger(MODULE).warning("memory sample failed: %s", exc)
            self._stop.wait(SAMPLE_EVERY_S)

    def _peak(self, key: str, procs: list[ProcInfo], pss: bool = False) -> None:
        rss = sum(p.rss for p in procs)
        peak = self.peaks.setdefault(key, Peak())
        if rss > peak.rss:
            peak.rss, peak.processes = rss, len(procs)
            peak.pss = sum(pss_of(p.pid) for p in procs) if pss else 0
            peak.names = sorted(p.cmdline.split(" ")[0][-60:] for p in procs)

    def sample(self) -> None:
        procs = scan_procs()
        mine = descendants(procs, os.getpid())
        ray = [procs[pid] for pid in mine if is_ray(procs[pid].cmdline)]
        self.foreign_ray = max(
            self.foreign_ray,
            sum(1 for p in procs.values() if p.pid not in mine and is_ray(p.cmdline)),
        )
        phase = self.phase
        if ray:
            self._peak(f"{phase}:ray", ray)
        driver = self.driver
        if driver is not None:
            below = [procs[pid] for pid in descendants(procs, driver)]
            if below:
                self._peak(f"{phase}:ray_all", below, pss=True)
        for label, pid in list(self.watch.items()):
            p = procs.get(pid)
            if p is not None:
                self._peak(f"{phase}:{label}", [p])
        self.samples += 1

    def peak(self, key: str) -> Peak | None:
        return self.peaks.get(key)


# --- CPU accounting -----------------------------------------------------------------------

CPU_GROUPS = {
    "serving": "serving process (Kafka ingress, Ray driver)",
    "replica": "Ray Serve replica",
    "ray": "Ray's other processes (raylet, GCS, controller, proxy, agents)",
    "ingest": "ingest process",
    "kafka": "Kafka broker",
    "redis": "Redis",
    "bench": "this benchmark (publisher, prediction reader)",
}


@dataclass
class CpuSnapshot:
    at: float
    groups: dict[str, dict[tuple[int, int], int]]
    busy: int
    """Machine-wide busy ticks (``/proc/stat``), all CPUs."""


def machine_busy() -> int:
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return sum(fields[:3]) + sum(fields[5:8])


def cpu_snapshot(serving: int, ingest: int) -> CpuSnapshot:
    procs = scan_procs()
    ray = descendants(procs, serving)
    groups: dict[str, dict[tuple[int, int], int]] = {g: {} for g in CPU_GROUPS}
    for p in procs.values():
        if p.pid in ray:
            group = "replica" if "ServeReplica" in p.cmdline else "ray"
        elif p.pid == serving:
            group = "serving"
        elif p.pid == ingest:
            group = "ingest"
        elif p.pid == os.getpid():
            group = "bench"
        elif "kafka.Kafka" in p.cmdline:
            group = "kafka"
        elif p.cmdline.startswith("redis-server"):
            group = "redis"
        else:
            continue
        groups[group][(p.pid, p.start)] = p.ticks
    return CpuSnapshot(time.monotonic(), groups, machine_busy())


def cpu_between(before: CpuSnapshot, after: CpuSnapshot, frames: int) -> dict[str, Any]:
    """CPU seconds, cores and CPU ms per frame of each group between two snapshots; ``other``
    is the rest of the machine (another run, the kernel), ``machine`` all of it."""
    wall = after.at - before.at
    ticks: dict[str, int] = {}
    for group, now in after.groups.items():
        then = before.groups.get(group, {})
        ticks[group] = sum(t - then.get(key, 0) for key, t in now.items())
    machine = after.busy - before.busy
    ticks["other"] = max(0, machine - sum(ticks.values()))
    ticks["machine"] = machine
    out: dict[str, Any] = {"wall_s": round(wall, 2), "frames": frames}
    for group, t in ticks.items():
        seconds = t / CLK_TCK
        out[group] = {
            "cpu_s": round(seconds, 2),
            "cores": round(seconds / wall, 2) if wall > 0 else None,
            "ms_per_frame": round(seconds * 1e3 / frames, 3) if frames else None,
        }
    return out


def end_processes(snapshot: list[ProcInfo], console: Console, grace_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL, the processes of ``snapshot`` that still run (same pid and start
    time: never a later process on a reused pid). Returns how many had to be ended."""

    def alive() -> list[ProcInfo]:
        now = scan_procs()
        return [p for p in snapshot if p.pid in now and now[p.pid].start == p.start]

    left = alive()
    if not left:
        return 0
    for p in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive():
        time.sleep(0.3)
    for p in alive():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, signal.SIGKILL)
    console.print(f"  ended {len(left)} leftover process(es): {[p.pid for p in left]}")
    return len(left)


class Service:
    """A service run as ``python -m MODULE``; its output is kept (the last lines) for errors."""

    def __init__(self, name: str, module: str, env: dict[str, str], markers: tuple[str, ...]):
        self.name = name
        self.tail: deque[str] = deque(maxlen=300)
        self.seen: set[str] = set()
        self.first: dict[str, str] = {}
        """marker -> the first output line that showed it."""
        self._markers = markers
        base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.p = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**base, "PYTHONUNBUFFERED": "1", **env},
        )
        self._pump = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            for m in self._markers:
                if m in line:
                    self.first.setdefault(m, line)
                    self.seen.add(m)

    def last_lines(self, n: int = 25) -> str:
        return "\n".join(f"    | {ln[:300]}" for ln in list(self.tail)[-n:])

    def check(self, doing: str) -> None:
        """Raise BenchError when the process has exited."""
        rc = self.p.poll()
        if rc is not None:
            raise BenchError(
                f"the {self.name} process exited ({rc}) {doing}; its last lines:\n"
                + self.last_lines()
            )

    def wait_for(self, marker: str, timeout_s: float, what: str) -> float:
        """Seconds until ``marker`` appeared in the output."""
        start = time.monotonic()
        while marker not in self.seen:
            self.check(f"before {what}")
            if time.monotonic() - start > timeout_s:
                raise BenchError(
                    f"the {self.name} process showed no {what} within {timeout_s:.0f} s; "
                    f"its last lines:\n" + self.last_lines()
                )
            time.sleep(0.2)
        return time.monotonic() - start

    def stop(self, timeout_s: float) -> str:
        """SIGTERM, then SIGKILL after ``timeout_s``; how it ended."""
        if self.p.poll() is not None:
            return f"had exited ({self.p.returncode})"
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout_s)
            return f"stopped ({self.p.returncode})"
        except subprocess.TimeoutExpired:
            self.p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.p.wait(10)
            return f"killed after {timeout_s:.0f} s without stopping"


# --- the model and the frames -------------------------------------------------------------


@dataclass
class Fixture:
    spec: ModelSpec
    runtime: RuntimeName
    """The runtime measured; ``ref`` and ``trained`` name its export (none for eager)."""
    trained: ModelTrained
    ref: ModelRef
    pixels: npt.NDArray[np.uint8]
    """``POOL`` rendered frames, ``(POOL, H, W, 3)``."""
    png: list[bytes]
    """The same frames as PNG."""
    conditions: list[str]
    train_s: float
    holdout: dict[str, float]
    export: dict[str, Any]
    """The export's artifact, size, time and agreement with eager (empty for eager)."""


def export_format(runtime: RuntimeName) -> ExportFormat | None:
    """The export ``runtime`` loads, None for eager (which needs only the weights)."""
    for fmt in EXPORT_FORMATS:
        if fmt == runtime:
            return fmt
    return None


def make_fixture(
    console: Console, root: Path, examples: int, model_name: str, runtime: RuntimeName
) -> Fixture:
    task = TaskSettings()
    spec = ModelSpec(
        classes=task.classes, image_height=task.image_height, image_width=task.image_width
    )
    if (spec.image_height, spec.image_width) != (64, 64):
        raise BenchError("the renderer draws 64x64 frames; set STREAMLOOP_TASK_IMAGE_* to 64")
    console.print(f"training a model on {examples:,} rendered examples (1 epoch)")
    start = time.perf_counter()
    rendered = render_examples(examples, seed=SEED, condition=condition_of, classes=spec.classes)
    pixels = np.stack([example_pixels(e.pixels_b64, 64, 64, 3) for e in rendered])
    labels = np.asarray([spec.classes.index(e.label) for e in rendered], dtype=np.int64)
    result = fit(
        spec,
        pixels,
        labels,
        Hyperparameters(epochs=1),
        seed=SEED,
        time_budget_s=60,
        threads=TORCH_THREADS,
    )
    store = ArtifactStore(root)
    art = store.put_weights(result.state_dict, spec.to_metadata({"seed": str(SEED)}))
    train_s = time.perf_counter() - start
    version = art.sha256[:12]
    exports: dict[str, ExportRef] = {}
    export: dict[str, Any] = {}
    fmt = export_format(runtime)
    if fmt is not None:
        # What training does (``services.training.service``), on the stored weights.
        start = time.perf_counter()
        exports[fmt], stored = store_export(store, art.uri, art.sha256, fmt)
        export = {
            "format": fmt,
            "uri": stored.uri,
            "sha256": stored.sha256,
            "bytes": stored.size,
            "export_s": round(time.perf_counter() - start, 2),
        }
    trained = trained_event(
        model_name,
        version,
        art.uri,
        art.sha256,
        size=examples,
        seed=SEED,
        duration_s=train_s,
        code_version="bench",
    ).model_copy(update={"exports": exports})
    ref = ModelRef(model_name, version, art.uri, art.sha256, exports=tuple(sorted(exports.items())))

    pool = render_examples(
        POOL, seed=SEED + 1, condition=condition_of, classes=spec.classes, prefix="pool"
    )
    pool_pixels = np.stack([example_pixels(e.pixels_b64, 64, 64, 3) for e in pool])
    truth = np.asarray([spec.classes.index(e.label) for e in pool])
    png = [encode_image(p, "image/png") for p in pool_pixels]
    core = ServingCore(store, runtime=runtime, threads=TORCH_THREADS)
    loaded, _ = core.model(ref)
    if loaded.name != runtime:
        raise BenchError(f"the serving core runs {loaded.name}, not {runtime}, with this model")
    probs = core.probabilities(ref, pool_pixels)
    accuracy = float((probs.argmax(axis=1) == truth).mean())
    console.print(
        f"  model {version} stored in {train_s:.1f} s; accuracy on {POOL} fresh frames "
        f"{accuracy:.2f} ({runtime}); PNG frames {statistics.mean(map(len, png)) / 1024:.1f} KiB"
    )
    if export:
        network, _ = load_model(store, art.uri, art.sha256)
        agreement = compare(EagerRuntime(network).predict_proba(pool_pixels), probs)
        export.update(
            agrees=agreement.agrees,
            same_class=agreement.same_class,
            max_abs_diff=agreement.max_abs_diff,
        )
        console.print(
            f"  {runtime} export {export['bytes'] / 1024:.0f} KiB in {export['export_s']:.1f} s; "
            f"against eager on the {POOL} frames: same class {agreement.same_class}, "
            f"max |dp| {agreement.max_abs_diff:.1e}"
        )
        if not agreement.agrees:
            raise BenchError(f"the {runtime} export disagrees with the weights")
    return Fixture(
        spec=spec,
        runtime=runtime,
        trained=trained,
        ref=ref,
        pixels=pool_pixels,
        png=png,
        conditions=[e.condition or "day" for e in pool],
        train_s=train_s,
        holdout={"examples": POOL, "accuracy": round(accuracy, 4)},
        export=export,
    )


def batches_of(pixels: npt.NDArray[np.uint8]) -> list[npt.NDArray[np.uint8]]:
    return [
        np.ascontiguousarray(pixels[i : i + BATCH])
        for i in range(0, len(pixels) - BATCH + 1, BATCH)
    ]


def timed_calls(
    call: Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]],
    batches: list[npt.NDArray[np.uint8]],
    seconds: float,
    warmup: int = 3,
) -> dict[str, Any]:
    """Calls ``call`` one batch after the other for ``seconds`` (at least 10 calls)."""
    for i in range(warmup):
        call(batches[i % len(batches)])
    times: list[float] = []
    frames = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 10:
        b = batches[len(times) % len(batches)]
        t = time.perf_counter()
        call(b)
        times.append(time.perf_counter() - t)
        frames += len(b)
    total = time.perf_counter() - start
    return {
        "calls": len(times),
        "frames": frames,
        "seconds": round(total, 3),
        "frames_per_s": round(frames / total, 1),
        "batch_ms_median": round(statistics.median(times) * 1e3, 2),
        "batch_ms_p95": round(pct(times, 95) * 1e3, 2),
    }


# --- (a) in process -----------------------------------------------------------------------


def bench_inprocess(
    console: Console, fx: Fixture, root: Path, seconds: float, when: str, runtime: RuntimeName
) -> dict[str, Any]:
    label = "(a)" if runtime == fx.runtime else "(a')"
    console.print(
        f"{label} in process, {runtime} ({when}): ServingCore.probabilities, batches of {BATCH}, "
        f"{TORCH_THREADS} threads, {seconds:g} s"
    )
    torch.set_num_threads(TORCH_THREADS)
    core = ServingCore(ArtifactStore(root), runtime=runtime, threads=TORCH_THREADS)
    if core.model(fx.ref)[0].name != runtime:
        raise BenchError(f"the serving core does not run {runtime} with this model")
    out = timed_calls(lambda b: core.probabilities(fx.ref, b), batches_of(fx.pixels), seconds)
    single = timed_calls(lambda b: core.probabilities(fx.ref, b), [fx.pixels[:1]], 1.0)
    out["single_frame_ms_median"] = single["batch_ms_median"]
    console.print(
        f"  {out['frames_per_s']:,.0f} frames/s (batch median {out['batch_ms_median']:.1f} ms, "
        f"p95 {out['batch_ms_p95']:.1f} ms); one frame alone {single['batch_ms_median']:.1f} ms"
    )
    return out


# --- (b) Ray Serve through its handle -----------------------------------------------------


def serving_settings(root: Path, model_name: str, runtime: RuntimeName) -> ServingSettings:
    return ServingSettings(
        model_name=model_name,
        runtime=runtime,
        min_replicas=1,
        max_replicas=1,
        replica_cpus=REPLICA_CPUS,
        torch_threads=TORCH_THREADS,
        artifacts=ArtifactSettings(root=root),
    )


def wait_ray_gone(console: Console, timeout_s: float = 20.0) -> None:
    """Wait for Ray's processes (all of this one's children at this point) to exit; end any
    left after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not own_descendants():
            return
        time.sleep(0.5)
    left = own_descendants()
    if left:
        console.print(f"  warning: {len(left)} Ray process(es) still running after shutdown")
        end_processes(left, console)


def bench_ray(
    console: Console,
    fx: Fixture,
    root: Path,
    seconds: float,
    sampler: MemorySampler,
    references: dict[str, npt.NDArray[np.float32]],
) -> dict[str, Any]:
    """``references``: the in-process probabilities of the first batch, by runtime (the one
    measured, and eager)."""
    import ray
    from ray import serve

    from services.serving.ray_app import APP_NAME, RayBackend, build_app

    settings = serving_settings(root, fx.ref.model_name, fx.runtime)
    console.print(
        f"(b) Ray Serve: local Ray in this process, 1 replica ({REPLICA_CPUS:g} CPU, "
        f"{TORCH_THREADS} threads, runtime {settings.runtime}), called through the handle"
    )
    os.environ.pop("RAY_ADDRESS", None)
    sampler.phase, sampler.driver = "b", os.getpid()
    out: dict[str, Any] = {}
    try:
        start = time.perf_counter()
        ray.init(
            object_store_memory=settings.object_store_mb * 2**20,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        out["ray_init_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        handle = serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
        out["deploy_s"] = round(time.perf_counter() - start, 2)
        console.print(
            f"  Ray started in {out['ray_init_s']:.1f} s, application deployed in "
            f"{out['deploy_s']:.1f} s"
        )
        backend = RayBackend(handle, settings.call_timeout_s)
        batches = batches_of(fx.pixels)
        first = backend.submit(fx.ref, batches[0]).result()
        diffs = {
            name: float(np.abs(first.astype(np.float64) - ref).max())
            if ref.shape == first.shape
            else float("inf")
            for name, ref in references.items()
        }
        out["replica_max_abs_diff"] = diffs
        if diffs[fx.runtime] > 1e-5:
            raise BenchError(
                f"the Ray replica's probabilities differ from the in-process {fx.runtime} ones "
                f"(max |dp| {diffs[fx.runtime]:.1e})"
            )
        console.print(
            "  the replica's first batch against in process: "
            + ", ".join(f"{name} max |dp| {d:.1e}" for name, d in diffs.items())
        )
        if fx.runtime != "eager" and diffs["eager"] < diffs[fx.runtime]:
            console.print(
                f"  [yellow]note:[/] the replica's probabilities are closer to eager's than to "
                f"{fx.runtime}'s: it may not run {fx.runtime}"
            )
        sequential = timed_calls(lambda b: backend.submit(fx.ref, b).result(), batches, seconds)
        single = timed_calls(lambda b: backend.submit(fx.ref, b).result(), [fx.pixels[:1]], 1.0)
        sequential["single_frame_ms_median"] = single["batch_ms_median"]
        console.print(
            f"  one call at a time: {sequential['frames_per_s']:,.0f} frames/s "
            f"(batch median {sequential['batch_ms_median']:.1f} ms); one frame alone "
            f"{single['batch_ms_median']:.1f} ms"
        )
        out["sequential"] = sequential
        out["two_in_flight"] = two_in_flight(handle, fx.ref, batches, seconds, settings)
        console.print(
            f"  two calls in flight: {out['two_in_flight']['frames_per_s']:,.0f} frames/s"
        )
        sampler.sample()
    finally:
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()
            sampler.phase, sampler.driver = "between", None
            wait_ray_gone(console)
    return out


def two_in_flight(
    handle: Any,
    ref: ModelRef,
    batches: list[npt.NDArray[np.uint8]],
    seconds: float,
    settings: ServingSettings,
) -> dict[str, Any]:
    pending: deque[Any] = deque()
    frames, calls, i = 0, 0, 0
    start = time.perf_counter()
    while True:
        while len(pending) < 2:
            pending.append(handle.predict.remote(batches[i % len(batches)], ref))
            i += 1
        pending.popleft().result(timeout_s=settings.call_timeout_s)
        frames += BATCH
        calls += 1
        if time.perf_counter() - start >= seconds and calls >= 10:
            break
    for resp in pending:
        resp.result(timeout_s=settings.call_timeout_s)
    total = time.perf_counter() - start
    frames += BATCH * len(pending)
    return {"frames": frames, "seconds": round(total, 3), "frames_per_s": round(frames / total, 1)}


# --- (c) end to end -----------------------------------------------------------------------


class PredictionReader:
    """Reads the run's ``predictions`` topic from the start on a thread; keeps, per frame, the
    record's value, its Kafka timestamp and when this process received it."""

    def __init__(self, topic: str, prefix: str) -> None:
        self.topic = topic
        self.prefix = prefix
        self.records: dict[str, tuple[bytes, int, float]] = {}
        self.duplicates = 0
        self.counts: dict[str, int] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="predictions", daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise BenchError(f"could not assign the partitions of {self.topic} in {timeout_s} s")
        if self.error is not None:
            raise BenchError(f"reading {self.topic} failed: {self.error}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            consumer = KafkaConsumer(
                enable_auto_commit=False, group_id=None, **KafkaSettings().client_kwargs()
            )
        except (KafkaError, OSError) as exc:
            self.error = exc
            self._ready.set()
            return
        try:
            deadline = time.monotonic() + 30
            parts = consumer.partitions_for_topic(self.topic)
            while not parts and time.monotonic() < deadline:
                time.sleep(0.2)
                parts = consumer.partitions_for_topic(self.topic)
            if not parts:
                return
            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            self._ready.set()
            while not self._stop.is_set():
                polled = consumer.poll(timeout_ms=100)
                now = time.time()
                for batch in polled.values():
                    for rec in batch:
                        if rec.value is None:
                            continue
                        frame_id = str(json.loads(rec.value).get("frame_id", ""))
                        if frame_id in self.records:
                            self.duplicates += 1
                            continue
                        self.records[frame_id] = (rec.value, int(rec.timestamp), now)
                        phase = frame_id[len(self.prefix) :].split("-")[0]
                        self.counts[phase] = self.counts.get(phase, 0) + 1
        except (KafkaError, OSError, ValueError) as exc:
            self.error = exc
        finally:
            self._ready.set()
            consumer.close()

    def of(self, phase: str) -> list[tuple[Prediction, int, float]]:
        head = f"{self.prefix}{phase}-"
        return [
            (decode(v, Prediction), ts, recv)
            for fid, (v, ts, recv) in list(self.records.items())
            if fid.startswith(head)
        ]


@dataclass
class EndToEnd:
    prefix: str
    kafka: KafkaSettings
    fx: Fixture
    reader: PredictionReader
    services: list[Service]

    def frame_id(self, phase: str, i: int) -> str:
        return f"{self.prefix}{phase}-{i:06d}"

    def check(self, doing: str) -> None:
        for s in self.services:
            s.check(doing)
        if self.reader.error is not None:
            raise BenchError(f"reading the predictions failed {doing}: {self.reader.error}")

    def publish(self, pub: FramePublisher, phase: str, i: int) -> None:
        k = i % POOL
        pub.publish(
            self.fx.png[k],
            camera_id=f"cam-{i % CAMERAS + 1}",
            frame_id=self.frame_id(phase, i),
            condition=self.fx.conditions[k],
        )

    def burst(self, pub: FramePublisher, phase: str, n: int) -> float:
        """Publish ``n`` frames as fast as possible; seconds until Kafka acknowledged them."""
        start = time.perf_counter()
        for i in range(n):
            self.publish(pub, phase, i)
        pub.flush(60)
        return time.perf_counter() - start

    def paced(self, pub: FramePublisher, phase: str, rate: float, n: int) -> dict[str, float]:
        """Publish ``n`` frames at ``rate`` per second (each stamped when published)."""
        behind = 0.0
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                behind = max(behind, -delay)
            self.publish(pub, phase, i)
            if i % 200 == 0:
                self.check("while publishing the paced stream")
        pub.flush(60)
        elapsed = time.perf_counter() - start
        return {"seconds": round(elapsed, 2), "max_behind_ms": round(behind * 1e3, 1)}

    def wait(self, phase: str, n: int, timeout_s: float) -> float:
        """Seconds until every frame of ``phase`` has its prediction."""
        start = time.monotonic()
        while self.reader.counts.get(phase, 0) < n:
            self.check(f"while waiting for the {phase} predictions")
            if time.monotonic() - start > timeout_s:
                got = self.reader.counts.get(phase, 0)
                raise BenchError(
                    f"only {got}/{n} predictions of the {phase} frames after {timeout_s:.0f} s "
                    f"({self.topic_ends()}); serving's last lines:\n"
                    + self.services[-1].last_lines(12)
                )
            time.sleep(0.1)
        return time.monotonic() - start

    def topic_ends(self) -> str:
        """Records on each topic of the path so far, for error messages."""
        try:
            with KafkaAdmin(KafkaSettings()) as admin:
                return ", ".join(
                    f"{t} {sum(admin.end_offsets(self.prefix + t).values())}"
                    for t in (
                        Topics.FRAMES_RAW,
                        Topics.FRAMES_VALID,
                        Topics.FRAMES_DLQ,
                        Topics.PREDICTIONS,
                    )
                )
        except (KafkaError, OSError) as exc:
            return f"topic ends unknown: {exc}"


def announce(kafka: KafkaSettings, trained: ModelTrained) -> None:
    """What the registry would publish: the version, then the champion alias on it."""
    with EventProducer(kafka, client_id="bench-serving") as producer:
        for ev in (
            ModelLifecycle(
                model_name=trained.model_name,
                action="registered",
                model_version=trained.model_version,
                details=trained.model_dump(mode="json"),
            ),
            ModelLifecycle(
                model_name=trained.model_name,
                action="alias_set",
                model_version=trained.model_version,
                alias="champion",
            ),
        ):
            producer.publish(Topics.MODELS_LIFECYCLE, ev, key=lifecycle_key(ev))
        producer.flush(30)


def saturation(preds: list[tuple[Prediction, int, float]]) -> dict[str, Any]:
    """Rate from the first to the last model call's ``served_at``, not counting the frames of
    the first call (they were served at the start of the interval)."""
    served = sorted(p.served_at.timestamp() for p, _, _ in preds)
    first, last = served[0], served[-1]
    after_first = sum(1 for s in served if s > first)
    calls = len(set(served))
    ingested = [p.served_at.timestamp() - p.latency_from_ingest_ms / 1e3 for p, _, _ in preds]
    stamps = sorted(ts for _, ts, _ in preds)
    span = last - first
    ingest_span = max(ingested) - min(ingested)
    return {
        "predictions": len(preds),
        "model_calls": calls,
        "mean_batch": round(len(preds) / calls, 1),
        "served_span_s": round(span, 3),
        "frames_per_s": round(after_first / span, 1) if span > 0 else None,
        "record_span_s": round((stamps[-1] - stamps[0]) / 1e3, 3),
        "record_frames_per_s": (
            round((len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e3), 1)
            if stamps[-1] > stamps[0]
            else None
        ),
        "ingest_frames_per_s": round(len(preds) / ingest_span, 1) if ingest_span > 0 else None,
    }


def latencies(preds: list[tuple[Prediction, int, float]]) -> dict[str, Any]:
    stages: dict[str, list[float]] = {"ingested": [], "served": [], "record": [], "received": []}
    for p, ts, recv in preds:
        captured = p.captured_at.timestamp()
        stages["ingested"].append(p.latency_from_capture_ms - p.latency_from_ingest_ms)
        stages["served"].append(p.latency_from_capture_ms)
        stages["record"].append(ts - captured * 1e3)
        stages["received"].append((recv - captured) * 1e3)
    served = [p.served_at for p, _, _ in preds]
    return {
        "frames": len(preds),
        "mean_batch": round(len(preds) / max(1, len(set(served))), 1),
        **{
            name: {
                "p50_ms": round(pct(v, 50), 1),
                "p95_ms": round(pct(v, 95), 1),
                "p99_ms": round(pct(v, 99), 1),
                "max_ms": round(max(v), 1),
            }
            for name, v in stages.items()
        },
    }


def bench_end_to_end(
    console: Console,
    fx: Fixture,
    root: Path,
    work: Path,
    sampler: MemorySampler,
    out: dict[str, Any],
    *,
    frames: int,
    paced_s: float,
    sample_ratio: float,
    levels: tuple[float, ...] = LOAD_LEVELS,
    bursts: int = 1,
) -> None:
    """Fills ``out`` as it goes, so what was measured before a failure is kept. ``levels``:
    the paced streams, as shares of the saturation rate (none: saturation only); ``bursts``:
    saturation bursts one after the other, the fastest is the saturation rate."""
    prefix = f"bench{uuid.uuid4().hex[:10]}."
    kafka = KafkaSettings(topic_prefix=prefix)
    out["prefix"] = prefix
    console.print(
        f"(c) end to end on topics {prefix}*: ingest and serving (Ray, runtime {fx.runtime}) "
        f"as subprocesses"
    )
    created = [prefix + n for n in TOPIC_NAMES]
    services: list[Service] = []
    reader: PredictionReader | None = None
    spawned: dict[int, ProcInfo] = {}
    try:
        provision(kafka, [TOPICS[n] for n in TOPIC_NAMES], name_prefix=prefix, timeout_s=30)
        announce(kafka, fx.trained)
        common = {
            "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
            "STREAMLOOP_ARTIFACTS_ROOT": str(root),
            "STREAMLOOP_TELEMETRY_TRACES_DIR": str(work / "traces"),
            "STREAMLOOP_TELEMETRY_SAMPLE_RATIO": str(sample_ratio),
        }
        sampler.phase = "c"
        start = time.perf_counter()
        ingest = Service(
            "ingest",
            "services.ingest",
            {
                **common,
                "STREAMLOOP_INGEST_PROVISION_TOPICS": "false",
                "STREAMLOOP_INGEST_GROUP_ID": f"{prefix}ingest",
            },
            ('"consumer started"',),
        )
        services.append(ingest)
        serving = Service(
            "serving",
            "services.serving",
            {
                **common,
                "STREAMLOOP_SERVING_PROVISION_TOPICS": "false",
                "STREAMLOOP_SERVING_MODEL_NAME": fx.ref.model_name,
                "STREAMLOOP_SERVING_GROUP_ID": f"{prefix}serving",
                "STREAMLOOP_SERVING_BACKEND": "ray",
                "STREAMLOOP_SERVING_HTTP_PORT": str(free_port()),
                "STREAMLOOP_SERVING_MIN_REPLICAS": "1",
                "STREAMLOOP_SERVING_MAX_REPLICAS": "1",
                "STREAMLOOP_SERVING_REPLICA_CPUS": str(REPLICA_CPUS),
                "STREAMLOOP_SERVING_TORCH_THREADS": str(TORCH_THREADS),
                "STREAMLOOP_SERVING_RUNTIME": fx.runtime,
            },
            ('"consumer started"', '"champion adopted"', RUNTIME_LOADED, RUNTIME_FELL_BACK),
        )
        services.append(serving)
        sampler.watch = {"ingest": ingest.p.pid, "serving": serving.p.pid}
        sampler.driver = serving.p.pid
        ingest.wait_for('"consumer started"', 90, "consumer start")
        serving.wait_for('"consumer started"', 240, "consumer start (Ray and the deployment)")
        serving.wait_for('"champion adopted"', 60, "adopted champion")
        out["services_ready_s"] = round(time.perf_counter() - start, 1)
        out["serving_runtime"] = serving_runtime(serving)
        console.print(
            f"  services ready in {out['services_ready_s']:.1f} s; serving loaded the champion "
            f"with {out['serving_runtime']}"
        )
        if out["serving_runtime"] == "unknown":
            console.print("  [yellow]note:[/] serving did not log which runtime it loaded")
        elif out["serving_runtime"] != fx.runtime:
            raise BenchError(
                f"serving runs the champion with {out['serving_runtime']}, not {fx.runtime}; "
                f"its last lines:\n" + serving.last_lines(12)
            )

        reader = PredictionReader(prefix + Topics.PREDICTIONS, prefix)
        reader.start()
        e2e = EndToEnd(prefix, kafka, fx, reader, services)
        with FramePublisher(kafka, source="bench", content_type="image/png") as pub:
            warm = 2 * BATCH
            e2e.burst(pub, "warm", warm)
            waited = e2e.wait("warm", warm, 180)
            console.print(f"  warm-up: {warm} frames predicted after {waited:.1f} s")

            n = frames
            cpu: dict[str, Any] = {}
            runs: list[dict[str, Any]] = []
            for k in range(bursts):
                phase = "sat" if k == 0 else f"sat{k + 1}"
                before = cpu_snapshot(serving.p.pid, ingest.p.pid)
                publish_s = e2e.burst(pub, phase, n)
                console.print(
                    f"  saturation: {n:,} frames published in {publish_s:.1f} s "
                    f"({n / publish_s:,.0f}/s); waiting for their predictions"
                )
                e2e.wait(phase, n, max(90.0, n / 20))
                after = cpu_snapshot(serving.p.pid, ingest.p.pid)
                sat = saturation(reader.of(phase))
                sat["published_in_s"] = round(publish_s, 2)
                console.print(
                    f"  saturation: {sat['frames_per_s']:,.0f} predictions/s over "
                    f"{sat['served_span_s']:.1f} s, {sat['model_calls']} model calls "
                    f"(mean batch {sat['mean_batch']:.0f}); ingest kept "
                    f"{sat['ingest_frames_per_s']:,.0f} frames/s"
                )
                runs.append(sat)
                if sat is max(runs, key=lambda r: float(r["frames_per_s"] or 0)):
                    cpu["saturation"] = cpu_between(before, after, n)
            # Other work only ever slows a burst down: the fastest is the measure.
            sat = max(runs, key=lambda r: float(r["frames_per_s"] or 0))
            out["saturation"] = sat
            if bursts > 1:
                out["saturation_bursts"] = [r["frames_per_s"] for r in runs]
            out["cpu"] = cpu
            full = float(sat["frames_per_s"] or 0)
            if full <= 0:
                raise BenchError("no saturation rate: cannot pace the latency runs")
            out["paced"] = []
            for level in levels:
                phase = f"pace{round(level * 100)}"
                rate = full * level
                paced_n = max(10, int(rate * paced_s))
                console.print(
                    f"  paced at {level:.0%} of saturation: {paced_n:,} frames at {rate:,.0f}/s "
                    f"for {paced_s:g} s"
                )
                before = cpu_snapshot(serving.p.pid, ingest.p.pid)
                pacing = e2e.paced(pub, phase, rate, paced_n)
                e2e.wait(phase, paced_n, 60)
                cpu[phase] = cpu_between(before, cpu_snapshot(serving.p.pid, ingest.p.pid), paced_n)
                lat = latencies(reader.of(phase))
                lat.update(load=level, phase=phase, rate_per_s=round(rate, 1), **pacing)
                out["paced"].append(lat)
                console.print(
                    f"    publish to prediction record p50 {lat['record']['p50_ms']:.0f} ms, "
                    f"p95 {lat['record']['p95_ms']:.0f} ms, p99 {lat['record']['p99_ms']:.0f} ms "
                    f"(mean batch {lat['mean_batch']:.1f}; publisher at most "
                    f"{lat['max_behind_ms']:.0f} ms behind)"
                )
        out["duplicates"] = reader.duplicates
        sampler.sample()
    finally:
        if reader is not None:
            reader.stop()
        procs = scan_procs()
        for s in services:
            for pid in descendants(procs, s.p.pid):
                spawned[pid] = procs[pid]
        for s in reversed(services):
            how = s.stop(60 if s.name == "serving" else 20)
            console.print(f"  {s.name}: {how}")
        sampler.watch, sampler.driver, sampler.phase = {}, None, "end"
        left = end_processes(list(spawned.values()), console)
        if left:
            out["leftover_processes_ended"] = left
        cleanup_end_to_end(console, prefix, created)


def serving_runtime(serving: Service) -> str:
    """The runtime serving's own core (its model check) reports for the champion: the runtime
    asked for, ``eager`` when it fell back, ``unknown`` when neither line was seen."""
    if RUNTIME_FELL_BACK in serving.first:
        return "eager"
    line = serving.first.get(RUNTIME_LOADED)
    if line is None:
        return "unknown"
    try:
        record = json.loads(line)
    except ValueError:
        match = re.search(r"\bruntime=(\w+)", line)
        return match.group(1) if match else "unknown"
    return str(record.get("runtime", "unknown")) if isinstance(record, dict) else "unknown"


def cleanup_end_to_end(console: Console, prefix: str, topics: list[str]) -> None:
    try:
        with KafkaAdmin(KafkaSettings()) as admin:
            existing = set(admin.list_topics())
            mine = [t for t in topics if t in existing]
            if mine:
                admin.delete_topics(mine)
        console.print(f"  deleted {len(mine)} topics {prefix}*")
    except (KafkaError, OSError) as exc:  # cleanup must not hide the result
        console.print(f"warning: could not delete the topics {prefix}*: {exc}")
    try:
        client = connect(RedisSettings())
        keys = list(client.scan_iter(match=f"{INGEST_CLAIMS}:{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the result
        console.print(f"warning: could not delete ingest's claims of this run: {exc}")


# --- report -------------------------------------------------------------------------------


def fmt_rate(value: Any) -> str:
    return f"{value:,.0f}" if isinstance(value, int | float) else "n/a"


def fmt_ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "n/a"


def peak_row(label: str, peak: Peak | None) -> str:
    if peak is None:
        return f"| {label} | n/a | n/a | 0 |"
    pss = f"{mib(peak.pss):,.0f}" if peak.pss else "-"
    return f"| {label} | {mib(peak.rss):,.0f} | {pss} | {peak.processes} |"


def inprocess_detail(part: dict[str, Any]) -> str:
    runs = [r for r in (part.get("before"), part.get("after")) if r]
    if not runs:
        return ""
    best = max(runs, key=lambda r: r["frames_per_s"])
    return (
        "best of "
        + ", ".join(f"{r['frames_per_s']:,.0f}" for r in runs)
        + f"; batch median {best.get('batch_ms_median', 'n/a')} ms, "
        f"1 frame alone {best.get('single_frame_ms_median', 'n/a')} ms"
    )


def throughput_rows(results: dict[str, Any]) -> list[str]:
    runtime = results["settings"]["runtime"]
    a = results.get("inprocess") or {}
    a_eager = results.get("inprocess_eager") or {}
    b = results.get("ray") or {}
    c = results.get("end_to_end") or {}
    ratios = results["ratios"]
    seq = b.get("sequential") or {}
    two = b.get("two_in_flight") or {}
    sat = c.get("saturation") or {}
    rows = [
        f"| (a) in process, {runtime}: ServingCore.probabilities "
        f"| {fmt_rate(a.get('frames_per_s'))} | {'1.00' if a else 'n/a'} "
        f"| {inprocess_detail(a)} |",
    ]
    if runtime != "eager":
        rows.append(
            f"| (a') in process, eager | {fmt_rate(a_eager.get('frames_per_s'))} "
            f"| {fmt_ratio(ratios.get('a_eager_over_a'))} | {inprocess_detail(a_eager)} |"
        )
    rows += [
        f"| (b) Ray Serve handle, 1 replica ({REPLICA_CPUS:g} CPU), one call at a time "
        f"| {fmt_rate(seq.get('frames_per_s'))} | {fmt_ratio(ratios.get('b_over_a'))} "
        f"| batch median {seq.get('batch_ms_median', 'n/a')} ms, "
        f"1 frame alone {seq.get('single_frame_ms_median', 'n/a')} ms |",
        f"| (b') Ray Serve handle, two calls in flight | {fmt_rate(two.get('frames_per_s'))} "
        f"| {fmt_ratio(ratios.get('b2_over_a'))} | |",
        f"| (c) end to end: frames.raw to predictions "
        f"| {fmt_rate(sat.get('frames_per_s'))} | {fmt_ratio(ratios.get('c_over_a'))} "
        f"| {sat.get('predictions', 'n/a')} PNG frames, {sat.get('model_calls', 'n/a')} model "
        f"calls (mean batch {sat.get('mean_batch', 'n/a')}); ingest's pace "
        f"{fmt_rate(sat.get('ingest_frames_per_s'))}/s |",
    ]
    return rows


def latency_rows(paced: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| load | offered frames/s | frames | mean batch | to served_at p50 ms | p95 ms | p99 ms "
        "| to prediction record p50 ms | p95 ms | p99 ms |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in paced:
        served, record = p["served"], p["record"]
        rows.append(
            f"| {p['load']:.0%} of (c) | {p['rate_per_s']:,.0f} | {p['frames']:,} "
            f"| {p['mean_batch']:.1f} | {served['p50_ms']:,.1f} | {served['p95_ms']:,.1f} "
            f"| {served['p99_ms']:,.1f} | {record['p50_ms']:,.1f} | {record['p95_ms']:,.1f} "
            f"| {record['p99_ms']:,.1f} |"
        )
    return rows


def cpu_rows(cpu: dict[str, Any]) -> list[str]:
    parts = list(cpu.items())
    header = "| process |"
    for name, part in parts:
        header += f" {name}: cores ({part.get('wall_s', 0):.1f} s) | {name}: CPU ms per frame |"
    rows = [header, "|:---|" + "---:|---:|" * len(parts)]
    labels = {
        **CPU_GROUPS,
        "other": "rest of the machine (kernel, other work)",
        "machine": "**whole machine**",
    }
    for group, label in labels.items():
        cells = []
        for _, part in parts:
            g = part.get(group) or {}
            cores, per = g.get("cores"), g.get("ms_per_frame")
            cells += [
                f"{cores:.2f}" if cores is not None else "n/a",
                f"{per:.2f}" if per is not None else "n/a",
            ]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def markdown(results: dict[str, Any], sampler: MemorySampler) -> str:
    c = results.get("end_to_end") or {}
    runtime = results["settings"]["runtime"]
    lines = [
        f"### Serving throughput ({runtime} runtime, batches of {BATCH} 64x64 frames, "
        f"{TORCH_THREADS} threads)",
        "",
        "| path | frames/s | ratio to (a) | detail |",
        "|:---|---:|---:|:---|",
        *throughput_rows(results),
    ]
    for key, label in (("ray", "(b)"), ("end_to_end", "(c)")):
        if results.get(f"{key}_error"):
            lines.append(f"\n{label} failed: {results[f'{key}_error']}")
    paced = c.get("paced") or []
    lines += [
        "",
        "### Latency from publish (captured_at) to prediction, paced at shares of (c)'s rate",
        "",
    ]
    if paced:
        lines += [
            *latency_rows(paced),
            "",
            "Each level ran "
            + ", ".join(f"{p['seconds']:.1f} s" for p in paced)
            + "; the publisher was at most "
            + ", ".join(f"{p['max_behind_ms']:.0f} ms" for p in paced)
            + " behind its schedule.",
        ]
    else:
        lines.append("not measured")
    if c.get("cpu"):
        lines += ["", "### CPU during (c) (2 cores = 2.00)", "", *cpu_rows(c["cpu"])]
    lines += [
        "",
        f"### Peak resident memory (sampled every {SAMPLE_EVERY_S:g} s, {sampler.samples} samples)",
        "",
        "| processes | peak RSS MiB (sum) | PSS MiB at that peak | processes |",
        "|:---|---:|---:|---:|",
        peak_row("(b) Ray: ray::*, raylet, gcs_server", sampler.peak("b:ray")),
        peak_row("(b) Ray: every process Ray started", sampler.peak("b:ray_all")),
        peak_row("(c) Ray: ray::*, raylet, gcs_server", sampler.peak("c:ray")),
        peak_row("(c) Ray: every process below serving", sampler.peak("c:ray_all")),
        peak_row("(c) serving process (Kafka ingress, Ray driver)", sampler.peak("c:serving")),
        peak_row("(c) ingest process", sampler.peak("c:ingest")),
        f"| this benchmark process (ru_maxrss) | {results['bench_peak_rss_mib']:,.0f} | - | 1 |",
    ]
    return "\n".join(lines)


def at_target_load(results: dict[str, Any]) -> dict[str, Any] | None:
    paced = (results.get("end_to_end") or {}).get("paced") or []
    return next((p for p in paced if p["load"] == TARGET_LOAD), None)


def target_lines(results: dict[str, Any]) -> list[str]:
    runtime = results["settings"]["runtime"]
    ratio = results["ratios"].get("c_over_a")
    p = at_target_load(results)
    p99 = p["record"]["p99_ms"] if p else None
    met = results["targets"]
    return [
        f"target: end to end >= {TARGET_RATIO} of in process, {runtime} (c/a): "
        + ("not measured" if ratio is None else f"{'yes' if met['ratio'] else 'no'} ({ratio:.2f})"),
        f"target: p99 publish to prediction record <= {TARGET_P99_MS:.0f} ms at "
        f"{TARGET_LOAD:.0%} of saturation: "
        + ("not measured" if p99 is None else f"{'yes' if met['p99'] else 'no'} ({p99:.0f} ms)"),
    ]


# --- main ---------------------------------------------------------------------------------


def preflight(console: Console) -> None:
    kafka = KafkaSettings()
    try:
        wait_for_kafka(kafka, timeout_s=15)
    except TimeoutError as exc:
        raise BenchError(f"{exc} (start it with `make up`)") from exc
    try:
        connect(RedisSettings()).ping()
    except Exception as exc:
        raise BenchError(f"Redis does not answer: {exc} (start it with `make up`)") from exc
    foreign = [p for p in scan_procs().values() if is_ray(p.cmdline)]
    if foreign:
        console.print(
            f"note: {len(foreign)} Ray process(es) of another run are on this machine; "
            f"they share the CPUs and are not counted"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Serving throughput in process, through Ray Serve and end to end; latency.",
    )
    default_runtime = ServingSettings().runtime
    ap.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=default_runtime,
        help=f"inference runtime measured (default: serving's, {default_runtime})",
    )
    ap.add_argument("--frames", type=int, default=3000, help="saturation burst (default 3000)")
    ap.add_argument("--paced-s", type=float, default=20.0, help="seconds of each paced stream (20)")
    ap.add_argument("--seconds", type=float, default=5.0, help="per throughput part (5)")
    ap.add_argument("--train-examples", type=int, default=400, help="model's examples (400)")
    ap.add_argument(
        "--sample-ratio", type=float, default=1.0, help="services' trace sampling (1.0, default)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="1000 frames, 5 s per paced stream, 3 s parts"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.paced_s, args.seconds = 1000, 5.0, 3.0
    if args.frames < 2 * BATCH or args.paced_s <= 0 or args.seconds <= 0:
        ap.error(f"--frames must be at least {2 * BATCH}; --paced-s and --seconds positive")
    if not 0.0 <= args.sample_ratio <= 1.0:
        ap.error("--sample-ratio is between 0 and 1")
    return args


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    console = Console(soft_wrap=True)
    started = datetime.now(UTC)
    wall_start = time.perf_counter()
    load_start = load_average()
    console.print(
        f"bench_serving: runtime {args.runtime}; {args.frames:,} frames at saturation, "
        f"{args.paced_s:g} s paced at each of "
        + ", ".join(f"{level:.0%}" for level in LOAD_LEVELS)
        + "; "
        f"{os.cpu_count()} CPUs, load average {load_start} (timings move with other work)"
    )
    preflight(console)
    sampler = MemorySampler()
    sampler.start()
    results: dict[str, Any] = {}
    failed = False
    try:
        with workdir() as work:
            root = work / "artifacts"
            fx = make_fixture(
                console,
                root,
                args.train_examples,
                f"bench-serving-{uuid.uuid4().hex[:6]}",
                args.runtime,
            )
            torch.set_num_threads(TORCH_THREADS)
            measured: tuple[RuntimeName, ...] = (
                (fx.runtime,) if fx.runtime == "eager" else (fx.runtime, "eager")
            )
            first = batches_of(fx.pixels)[0]
            references: dict[str, npt.NDArray[np.float32]] = {
                name: ServingCore(
                    ArtifactStore(root), runtime=name, threads=TORCH_THREADS
                ).probabilities(fx.ref, first)
                for name in measured
            }
            keys = {
                name: "inprocess" if name == fx.runtime else "inprocess_eager" for name in measured
            }
            sampler.paused = True  # its /proc scans would take from the CPU ceiling
            for name in measured:
                results[keys[name]] = {
                    "runtime": name,
                    "before": bench_inprocess(console, fx, root, args.seconds, "before (b)", name),
                }
            sampler.paused = False
            try:
                results["ray"] = bench_ray(console, fx, root, args.seconds, sampler, references)
            except Exception as exc:  # noqa: BLE001 - report it and go on with (c)
                failed = True
                results["ray_error"] = f"{type(exc).__name__}: {exc}"
                console.print(f"[red](b) failed:[/] {results['ray_error']}")
            results["end_to_end"] = {}
            try:
                bench_end_to_end(
                    console,
                    fx,
                    root,
                    work,
                    sampler,
                    results["end_to_end"],
                    frames=args.frames,
                    paced_s=args.paced_s,
                    sample_ratio=args.sample_ratio,
                )
            except Exception as exc:  # noqa: BLE001 - report it, write what was measured
                failed = True
                results["end_to_end_error"] = f"{type(exc).__name__}: {exc}"
                console.print(f"[red](c) failed:[/] {results['end_to_end_error']}")
            sampler.paused = True
            for name in measured:
                part = results[keys[name]]
                part["after"] = bench_inprocess(
                    console, fx, root, args.seconds, "again, after (c)", name
                )
                part["frames_per_s"] = max(
                    part["before"]["frames_per_s"], part["after"]["frames_per_s"]
                )
            results["model"] = {
                "version": fx.ref.version,
                "train_examples": args.train_examples,
                "train_s": round(fx.train_s, 2),
                "fresh_frames": fx.holdout,
                "export": fx.export,
            }
    finally:
        sampler.stop()

    a = (results.get("inprocess") or {}).get("frames_per_s")
    a_eager = (results.get("inprocess_eager") or {}).get("frames_per_s")
    b = ((results.get("ray") or {}).get("sequential") or {}).get("frames_per_s")
    b2 = ((results.get("ray") or {}).get("two_in_flight") or {}).get("frames_per_s")
    c_part = results.get("end_to_end") or {}
    c = (c_part.get("saturation") or {}).get("frames_per_s")
    results["ratios"] = {
        "a_eager_over_a": round(a_eager / a, 3) if a and a_eager else None,
        "b_over_a": round(b / a, 3) if a and b else None,
        "b2_over_a": round(b2 / a, 3) if a and b2 else None,
        "c_over_a": round(c / a, 3) if a and c else None,
    }
    results["settings"] = {
        "runtime": args.runtime,
        "frames": args.frames,
        "paced_s": args.paced_s,
        "load_levels": list(LOAD_LEVELS),
        "seconds": args.seconds,
        "batch": BATCH,
        "torch_threads": TORCH_THREADS,
        "replica_cpus": REPLICA_CPUS,
        "replicas": 1,
        "sample_ratio": args.sample_ratio,
    }
    paced = at_target_load(results)
    results["targets"] = {
        "ratio": None
        if results["ratios"]["c_over_a"] is None
        else results["ratios"]["c_over_a"] >= TARGET_RATIO,
        "p99": None if not paced else paced["record"]["p99_ms"] <= TARGET_P99_MS,
        "c_over_a_min": TARGET_RATIO,
        "p99_ms_max": TARGET_P99_MS,
        "p99_load": TARGET_LOAD,
        "p99_measure": "Kafka timestamp of the prediction record - FrameRaw.captured_at",
    }
    results["bench_peak_rss_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    results["memory"] = {
        key: {
            "peak_rss_mib": round(mib(p.rss), 1),
            "pss_mib": round(mib(p.pss), 1) if p.pss else None,
            "processes": p.processes,
            "names": p.names,
        }
        for key, p in sorted(sampler.peaks.items())
    }
    results["memory"]["foreign_ray_processes_max"] = sampler.foreign_ray

    wall_s = time.perf_counter() - wall_start
    console.print("")
    console.out(markdown(results, sampler), highlight=False)
    console.print("")
    for line in target_lines(results):
        console.out(line, highlight=False)
    load_end = load_average()
    console.print(
        f"whole run: {wall_s:.0f} s; load average at start {load_start}, at end {load_end}"
    )

    out = default_var_dir() / "bench" / "serving.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "wall_s": round(wall_s, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average": {"start": load_start, "end": load_end},
        **results,
    }
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    console.print(f"figures written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
