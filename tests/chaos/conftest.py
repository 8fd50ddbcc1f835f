"""Fault tests: a Kafka broker and a Redis of the test's own (started with the project's
infra scripts on ports of their own, so stopping them disturbs nobody), the real services as
processes, a stream of frames with known ids, and a count at the end: per frame, predicted,
lost or duplicated."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer
from kafka.producer.future import FutureRecordMetadata

from services.training.settings import Hyperparameters
from services.training.trainer import fit
from shared.artifacts import ArtifactStore
from shared.bus import EventProducer
from shared.events import Label, ModelLifecycle, Prediction, decode
from shared.images import encode_image
from shared.model import ModelSpec, example_pixels
from shared.registry import lifecycle_key
from shared.settings import KafkaSettings
from shared.topics import Topics, provision
from tests.integration.helpers import Proc, free_port, wait_for
from tests.synthetic import CLASSES, render_examples, store_export, trained_event

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = ROOT / "infra" / "kafka" / "kafka.sh"
REDIS_SH = ROOT / "infra" / "redis" / "redis.sh"
RESULTS = ROOT / "var" / "chaos"


def _free_run(length: int) -> int:
    """The first of ``length`` consecutive free ports (a 3-node cluster needs six)."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(20000, 32000 - length)
        socks = []
        try:
            for port in range(base, base + length):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError(f"no {length} consecutive free ports")


class Infra:
    """Kafka (one node, or with ``mode="cluster"`` three nodes with replication 3 and
    ``min.insync.replicas`` 2) and a Redis under ``root``, driven by the project's scripts."""

    def __init__(self, root: Path, mode: str = "single") -> None:
        self.root, self.mode = root, mode
        self.redis_port = free_port()
        base = _free_run(2 if mode == "single" else 6)  # each broker's controller: port + 1
        self.kafka_ports = [base] if mode == "single" else [base, base + 2, base + 4]
        self.env = {
            **os.environ,
            "STREAMLOOP_VAR": str(root),
            "STREAMLOOP_KAFKA_PORT": str(base),
            "STREAMLOOP_KAFKA_CLUSTER_PORT": str(base),
            "STREAMLOOP_KAFKA_HEAP": "384m",
            "STREAMLOOP_REDIS_PORT": str(self.redis_port),
        }
        self.bootstrap = ",".join(f"127.0.0.1:{p}" for p in self.kafka_ports)
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.replication = 1 if mode == "single" else 3

    def kafka(self, command: str, *nodes: int) -> None:
        args = [str(KAFKA_SH), command, self.mode, *map(str, nodes)]
        subprocess.run(args, env=self.env, check=True)

    def redis(self, command: str) -> None:
        subprocess.run([str(REDIS_SH), command], env=self.env, check=True)

    def pids(self) -> dict[str, int]:
        """The running brokers' and Redis's pids, by name (``kafka-1``, ``redis``)."""
        from tests.chaos.memory import pid_from_file

        base = self.root / ("kafka" if self.mode == "single" else "kafka-cluster")
        files = {f"kafka-{n}": base / f"node-{n}" / "kafka.pid" for n in (1, 2, 3)}
        files["redis"] = self.root / "redis" / "redis.pid"
        return {name: pid for name, f in files.items() if (pid := pid_from_file(f)) is not None}

    def settings(self, prefix: str) -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=self.bootstrap,
            topic_prefix=prefix,
            replication_factor=self.replication,
            min_insync_replicas=min(2, self.replication),
        )

    def service_env(self, prefix: str) -> dict[str, str]:
        return {
            "STREAMLOOP_VAR": str(self.root),
            "STREAMLOOP_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
            "STREAMLOOP_KAFKA_REPLICATION_FACTOR": str(self.replication),
            "STREAMLOOP_KAFKA_MIN_INSYNC_REPLICAS": str(min(2, self.replication)),
            "STREAMLOOP_REDIS_URL": self.redis_url,
        }


def _own_infra(factory: pytest.TempPathFactory, mode: str) -> Iterator[Infra]:
    if shutil.which("java") is None or shutil.which("redis-server") is None:
        pytest.skip("java and redis-server are needed (make setup installs them)")
    own = Infra(factory.mktemp(f"chaos-{mode}"), mode=mode)
    try:
        own.kafka("start")
        own.redis("start")
        yield own
    finally:
        subprocess.run([str(KAFKA_SH), "stop", mode], env=own.env, check=False)
        subprocess.run([str(REDIS_SH), "stop"], env=own.env, check=False)
        # The brokers' data (gigabytes after the overload test) goes; their logs stay.
        for data in own.root.glob("kafka*/node-*/data"):
            shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """One broker and a Redis of the test module's own."""
    yield from _own_infra(tmp_path_factory, "single")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """Three brokers (replication 3, min ISR 2) and a Redis of the test module's own."""
    yield from _own_infra(tmp_path_factory, "cluster")


@dataclass
class Tally:
    """What happened to each frame of a run. ``acked`` and ``failed`` are filled by the
    camera producer's network thread (``ack``, ``fail``) while the test reads them."""

    sent: list[str] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    predicted: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def ack(self, frame_id: str) -> None:
        with self._lock:
            self.acked.add(frame_id)

    def fail(self, frame_id: str) -> None:
        with self._lock:
            self.failed.add(frame_id)

    @property
    def lost(self) -> set[str]:
        # A copy first: iterating the set while the network thread adds to it raises.
        with self._lock:
            acked = set(self.acked)
        return {f for f in acked if f not in self.predicted}

    @property
    def duplicated(self) -> int:
        return sum(n - 1 for n in self.predicted.values() if n > 1)


class Pipeline:
    """Ingest and serving (in-process model) on the test's own infrastructure."""

    def __init__(self, infra: Infra, root: Path) -> None:
        self.infra = infra
        self.prefix = f"c{uuid.uuid4().hex[:8]}."
        self.kafka = infra.settings(self.prefix)
        self.model = f"chaos-{uuid.uuid4().hex[:6]}"
        self._streams = 0
        self.root = root
        self.procs: dict[str, Proc] = {}
        provision(self.kafka)
        self.producer = EventProducer(self.kafka, client_id="chaos-camera")
        self._predictions: KafkaConsumer | None = None
        self._predicted: Counter[str] = Counter()
        self.served_at: dict[str, float] = {}
        """Each predicted frame's first ``served_at`` (epoch seconds)."""
        self.settings: dict[str, str] = {}
        """Settings every service of the run starts with (before a service's own extras)."""

    def env(self, service: str, **extra: str) -> dict[str, str]:
        return {
            **self.infra.service_env(self.prefix),
            f"STREAMLOOP_{service.upper()}_GROUP_ID": f"{self.prefix}{service}",
            f"STREAMLOOP_{service.upper()}_MODEL_NAME": self.model,
            "STREAMLOOP_ARTIFACTS_ROOT": str(self.root / "artifacts"),
            "STREAMLOOP_TELEMETRY_TRACES_DIR": str(self.root / "traces"),
            "STREAMLOOP_TELEMETRY_SAMPLE_RATIO": "0.01",
            **self.settings,
            **extra,
        }

    def champion(self) -> str:
        """Train a small model, store it and crown it the way the registry would."""
        spec = ModelSpec(classes=CLASSES, image_height=64, image_width=64)
        examples = render_examples(160, seed=3)
        pixels = np.stack([example_pixels(e.pixels_b64, 64, 64, 3) for e in examples])
        labels = np.asarray([CLASSES.index(e.label) for e in examples])
        result = fit(
            spec, pixels, labels, Hyperparameters(epochs=1), seed=3, time_budget_s=60, threads=2
        )
        store = ArtifactStore(self.root / "artifacts")
        ref = store.put_weights(result.state_dict, spec.to_metadata({"seed": "3"}))
        version = ref.sha256[:12]
        # Exported as training does, so serving runs the default runtime (ONNX).
        onnx, _ = store_export(store, ref.uri, ref.sha256, "onnx")
        trained = trained_event(self.model, version, ref.uri, ref.sha256, size=160).model_copy(
            update={"exports": {"onnx": onnx}}
        )
        for ev in (
            ModelLifecycle(
                model_name=self.model,
                action="registered",
                model_version=version,
                details=trained.model_dump(mode="json"),
            ),
            ModelLifecycle(
                model_name=self.model, action="alias_set", model_version=version, alias="champion"
            ),
        ):
            self.producer.publish(Topics.MODELS_LIFECYCLE, ev, key=lifecycle_key(ev))
        self.producer.flush()
        return version

    def start(self, service: str, ready: str = '"consumer started"', **extra: str) -> Proc:
        proc = Proc(["-m", f"services.{service}"], self.env(service, **extra))
        self.procs[service] = proc
        wait_for(
            lambda: proc.alive() and any(ready in line for line in proc.lines),
            120,
            what=f"{service} to be ready",
        )
        return proc

    def serve_on_ray(self) -> Proc:
        """A champion, ingest, and serving on Ray Serve with one replica, as deployed where
        nobody posts images: without Serve's HTTP proxy (the frame path never uses it)."""
        self.champion()
        self.start("ingest")
        port = free_port()
        proc = self.start(
            "serving",
            ready='"champion adopted"',
            STREAMLOOP_SERVING_BACKEND="ray",
            STREAMLOOP_SERVING_MIN_REPLICAS="1",
            STREAMLOOP_SERVING_MAX_REPLICAS="1",
            STREAMLOOP_SERVING_HTTP_PORT=str(port),
            STREAMLOOP_SERVING_HTTP_PROXY="false",
        )
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, "no proxy, nothing listens"
        return proc

    def serve_frames(self) -> None:
        """A champion, and ingest and serving (model in process) following it."""
        self.champion()
        self.start("ingest")
        self.start("serving", ready='"champion adopted"', STREAMLOOP_SERVING_BACKEND="local")

    def recovery_s(self, tally: Tally, since: float, sent_before: int) -> float:
        """Seconds from ``since`` until a frame sent after it (index ``sent_before`` on) is
        predicted."""

        def predicted() -> float | None:
            self.read_predictions(tally)
            # Sliced on every check: the camera is still sending, and when this starts the
            # frames sent after ``since`` may not exist yet.
            later = tally.sent[sent_before:]
            return time.monotonic() - since if any(f in tally.predicted for f in later) else None

        return float(wait_for(predicted, 180, what="a frame sent after the fault predicted"))

    def starts_of(self, service: str) -> int:
        """How many times the service's process logged its start (1: it never restarted)."""
        return sum('"msg": "starting"' in line for line in self.procs[service].lines)

    def stream(
        self,
        tally: Tally,
        *,
        rate: float = 0.0,
        seconds: float = 0.0,
        schedule: list[tuple[float, float]] | None = None,
        stop: threading.Event | None = None,
        limit: int | None = None,
        label_every: int = 0,
    ) -> threading.Thread:
        """Publish rendered PNG frames on a thread of its own, at ``rate`` for ``seconds`` or
        along ``schedule`` (``(seconds, rate)`` segments one after the other; the last one runs
        on until ``stop`` is set), at most ``limit`` frames; each frame's acknowledgement lands
        in ``tally``. With ``label_every`` k, every k-th frame's true class follows on
        ``labels``."""
        segments = schedule if schedule is not None else [(seconds, rate)]
        examples = render_examples(64, seed=11)
        images = [
            encode_image(example_pixels(e.pixels_b64, 64, 64, 3), "image/png") for e in examples
        ]
        import base64

        # The camera must offer twice what the pipeline serves (the overload test), from one
        # thread that shares the machine with it: each frame's JSON is the image's encoded
        # tail behind a few formatted fields, published without a span of its own.
        tails = [
            b'","content_type":"image/png","image_b64":"' + base64.b64encode(i) + b'"}'
            for i in images
        ]

        def ack(frame_id: str, future: FutureRecordMetadata) -> None:
            future.add_callback(lambda _m: tally.ack(frame_id))
            future.add_errback(lambda _e: tally.fail(frame_id))

        def due(elapsed: float) -> float | None:
            """Frames due by ``elapsed`` seconds in; None once the schedule is over."""
            total = 0.0
            for i, (length, r) in enumerate(segments):
                last = i == len(segments) - 1 and stop is not None
                if elapsed < length or last:
                    if last and stop is not None and stop.is_set():
                        return None
                    return total + elapsed * r
                total += length * r
                elapsed -= length
            return None

        # Frame ids are unique across the streams of a run: a second stream reusing the
        # first one's ids (with the same images) would be dropped by ingest as duplicates.
        self._streams += 1
        stem = f"{self.prefix}s{self._streams}f"

        def run() -> None:
            start = time.monotonic()
            n = 0
            while (quota := due(time.monotonic() - start)) is not None and n != limit:
                if n >= quota:
                    time.sleep(0.002)
                    continue
                frame_id = f"{stem}{n:07d}"
                camera_id = f"cam-{n % 4}"
                head = (
                    f'{{"event_type":"frame.raw","event_id":"{uuid.uuid4().hex}",'
                    f'"source":"chaos-camera","frame_id":"{frame_id}",'
                    f'"camera_id":"{camera_id}","captured_at":"{datetime.now(UTC).isoformat()}'
                )
                tally.sent.append(frame_id)
                sent = self.producer.publish_raw(
                    Topics.FRAMES_RAW,
                    head.encode() + tails[n % len(tails)],
                    key=camera_id.encode(),
                    headers=[],
                )
                ack(frame_id, sent)
                if label_every and n % label_every == 0:
                    truth = Label(
                        frame_id=frame_id,
                        label=examples[n % len(examples)].label,
                        camera_id=camera_id,
                        annotator="chaos",
                    )
                    self.producer.publish(Topics.LABELS, truth, key=frame_id)
                n += 1
            self.producer.flush()

        thread = threading.Thread(target=run, name="camera", daemon=True)
        thread.start()
        return thread

    def saturation(self) -> tuple[float, float]:
        """Frames/s the pipeline serves with a backlog: a burst of 3,000 frames published as
        fast as the camera can, rated over the middle 80 % of their ``served_at`` times (the
        first calls warm the model up). Also the camera's own rate during the burst."""
        burst, count = Tally(), 3000
        started = time.monotonic()
        camera = self.stream(burst, schedule=[(3600.0, 1e6)], limit=count)
        camera.join(120)
        published_s = time.monotonic() - started
        self.count_predictions(burst, timeout_s=300)
        assert not burst.lost, f"{len(burst.lost)} burst frames never predicted"
        served = np.sort([self.served_at[f] for f in burst.sent])
        lo, hi = int(0.1 * len(served)), int(0.9 * len(served))
        return (hi - lo) / float(served[hi] - served[lo]), count / published_s

    def read_predictions(self, tally: Tally, timeout_ms: int = 200) -> None:
        """Count the ``predictions`` published since the last call into ``tally.predicted``.

        One consumer (no group) follows the topic from its start for the whole test, so each
        record is read once, duplicates included, and a check costs one poll rather than a
        re-read of the topic."""
        if self._predictions is None:
            self._predictions = KafkaConsumer(
                self.prefix + Topics.PREDICTIONS,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                isolation_level="read_committed",
                max_poll_records=5000,
                **self.kafka.client_kwargs(),
            )
        for batch in self._predictions.poll(timeout_ms=timeout_ms).values():
            for r in batch:
                if r.value is None:
                    continue
                p = decode(r.value, Prediction)
                self._predicted[p.frame_id] += 1
                self.served_at.setdefault(p.frame_id, p.served_at.timestamp())
        # The same counter, not a copy: a copy per poll costs more than the poll once a run
        # has predicted a hundred thousand frames.
        tally.predicted = self._predicted

    def count_predictions(self, tally: Tally, *, timeout_s: float) -> None:
        """Read ``predictions`` until every acknowledged frame has one (or the deadline; the
        caller asserts on the tally, with the numbers)."""
        deadline = time.monotonic() + timeout_s
        self.read_predictions(tally)
        while tally.lost and time.monotonic() < deadline:
            self.read_predictions(tally)

    def stop(self) -> None:
        # SIGTERM first: serving then shuts its local Ray down (a SIGKILL would leave Ray's
        # helper processes behind); SIGKILL for whatever does not stop in time.
        for proc in self.procs.values():
            if proc.p.poll() is None:
                proc.p.terminate()
        for proc in self.procs.values():
            try:
                proc.p.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._predictions is not None:
            self._predictions.close()
        self.producer.close()


@pytest.fixture
def pipeline(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pipeline]:
    """A pipeline on the module's ``cluster`` if the test asks for one, else on ``infra``."""
    own = request.getfixturevalue("cluster" if "cluster" in request.fixturenames else "infra")
    p = Pipeline(own, tmp_path)
    try:
        yield p
    finally:
        p.stop()
        for name, proc in p.procs.items():
            (tmp_path / f"{name}.log").write_text("\n".join(proc.lines))
            print(f"--- {name} (whole log: {tmp_path / name}.log) ---", *proc.lines[-30:], sep="\n")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "soak: long runs under steady load (make soak; skipped unless asked for)"
    )


COLUMNS = ("fault", "injected", "frames_in", "lost", "duplicated", "recovery_s")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figures of every fault test that ran, as the README's table."""
    rows = (
        [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
        if RESULTS.exists()
        else []
    )
    if not rows:
        return
    out = terminalreporter
    out.section("faults injected (var/chaos/*.json)")
    out.line("| " + " | ".join(COLUMNS) + " |")
    out.line("|" + "---|" * len(COLUMNS))
    for row in rows:
        out.line("| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |")


def record(name: str, row: dict[str, Any]) -> None:
    """Keep a fault test's figures for the README's table (``var/chaos/<name>.json``)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(row, indent=2, default=str))
    print(json.dumps(row, default=str))
