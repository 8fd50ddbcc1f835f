"""The monitoring service (faust) against the real broker: windows from late labels, one
retrain request per drop even across a restart, drift alerts with label requests, the live
comparison, and poison records parked in the DLQ."""

from __future__ import annotations

import json
import random
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from services.monitoring.outbox import OUTBOX, Outbox
from shared.bus import DlqHeaders, EventProducer
from shared.events import Alert, Label, Prediction, WindowMetrics
from shared.kafka_admin import KafkaAdmin
from shared.settings import KafkaSettings
from shared.topics import Topics
from tests.conftest import provision_prefixed
from tests.integration.helpers import Proc, bare_producer, free_port, metric, read_all, wait_for

pytestmark = pytest.mark.timeout(300)

CLASSES = ("car", "truck", "bus", "motorcycle")
TOPICS = [
    Topics.PREDICTIONS,
    Topics.PREDICTIONS_SHADOW,
    Topics.LABELS,
    Topics.METRICS,
    Topics.RETRAIN_REQUESTS,
    Topics.ALERTS,
    Topics.LABELS_REQUESTS,
    Topics.EVENTS_DLQ,
]


class Fleet:
    """Predictions of a model that is right by day and mostly wrong (calling everything a
    truck, unsure) by night, with labels for every second frame."""

    def __init__(self, producer: EventProducer, run: str) -> None:
        self.producer = producer
        self.run = run
        self.rng = random.Random(5)
        self.i = 0

    def send(
        self, n: int, condition: str, version: str = "v1", shadow_version: str | None = None
    ) -> None:
        for _ in range(n):
            self.i += 1
            fid = f"{self.run}-{self.i}"
            truth = self.rng.choice(CLASSES)
            cam = f"cam-{self.i % 4 + 1}"
            if condition == "day":
                predicted, conf = truth, 0.95
            else:
                predicted = truth if self.rng.random() < 0.3 else "truck"
                conf = 0.45
            now = datetime.now(UTC)
            self.producer.publish(
                Topics.PREDICTIONS,
                prediction(fid, cam, version, predicted, conf, condition, now, shadow=False),
                key=cam,
            )
            if shadow_version is not None:
                self.producer.publish(
                    Topics.PREDICTIONS_SHADOW,
                    prediction(fid, cam, shadow_version, truth, 0.9, condition, now, shadow=True),
                    key=cam,
                )
            if self.i % 2 == 0:
                self.producer.publish(
                    Topics.LABELS, Label(frame_id=fid, label=truth, camera_id=cam), key=fid
                )
        self.producer.flush()


def prediction(
    fid: str,
    cam: str,
    version: str,
    predicted: str,
    conf: float,
    condition: str,
    now: datetime,
    *,
    shadow: bool,
) -> Prediction:
    return Prediction(
        frame_id=fid,
        camera_id=cam,
        captured_at=now,
        model_name="vehicle-classifier",
        model_version=version,
        predicted_class=predicted,
        probabilities={predicted: conf},
        confidence=conf,
        served_at=now,
        latency_from_capture_ms=1.0,
        latency_from_ingest_ms=1.0,
        shadow=shadow,
        condition=condition,
    )


@pytest.fixture
def env(kafka_settings: KafkaSettings, prefix: str, tmp_path) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    provision_prefixed(kafka_settings, prefix, TOPICS)
    yield {
        "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
        "STREAMLOOP_MONITORING_PROVISION_TOPICS": "false",
        "STREAMLOOP_MONITORING_WINDOW__LABELLED_PER_WINDOW": "20",
        # The first window is the drift reference; drops are the windows' rule's alone (the
        # labels' CUSUM and the growing reference: tests/unit).
        "STREAMLOOP_MONITORING_WINDOW__REFERENCE_SAMPLES": "1",
        "STREAMLOOP_MONITORING_TRIGGER__WATCH_LABELS": "false",
        "STREAMLOOP_MONITORING_TRIGGER__MIN_LABELS": "10",
        "STREAMLOOP_MONITORING_TRIGGER__CONSECUTIVE": "2",
        "STREAMLOOP_MONITORING_DRIFT__MIN_SAMPLES": "20",
        "STREAMLOOP_MONITORING_DRIFT__LABEL_REQUESTS_PER_WINDOW": "4",
        "STREAMLOOP_MONITORING_COMPARE_EVERY": "10",
        # Every 10 only (not also on each discordant frame of a young pair): the comparisons
        # below are counted exactly.
        "STREAMLOOP_MONITORING_COMPARE_EARLY": "0",
        "STREAMLOOP_MONITORING_DASHBOARD_PORT": "0",
        "STREAMLOOP_MONITORING_METRICS_PORT": str(free_port()),
        "STREAMLOOP_TELEMETRY_TRACES_DIR": str(tmp_path),
    }


def start(env: dict[str, str]) -> Proc:
    proc = Proc(["-m", "services.monitoring"], env=env)
    wait_for(
        lambda: proc.alive() and any("Worker ready" in ln for ln in proc.lines),
        120,
        what="monitoring ready",
    )
    return proc


def records(settings: KafkaSettings, topic: str, least: int, timeout_s: float = 60) -> list:  # type: ignore[type-arg]
    return read_all(settings, topic, least, timeout_s=timeout_s)


def windows(settings: KafkaSettings, prefix: str, least: int) -> list[dict]:  # type: ignore[type-arg]
    def got() -> list[dict] | None:  # type: ignore[type-arg]
        out = [
            json.loads(r.value)
            for r in read_all(settings, prefix + Topics.METRICS, 10_000, timeout_s=1.5)
        ]
        w = [m for m in out if m["event_type"] == "metrics.window"]
        return w if len(w) >= least else None

    return wait_for(got, 90, interval_s=0.5, what=f"{least} windows")


def test_a_drop_fires_one_request_across_a_restart_and_drift_asks_for_labels(
    env: dict[str, str], kafka_settings: KafkaSettings, prefix: str
) -> None:
    producer = EventProducer(KafkaSettings(topic_prefix=prefix))
    fleet = Fleet(producer, uuid.uuid4().hex[:6])
    first = start(env)
    try:
        fleet.send(80, "day")  # 40 labels: two good windows
        windows(kafka_settings, prefix, 2)
        fleet.send(40, "night")  # 20 labels: the first bad window
        ws = windows(kafka_settings, prefix, 3)
        assert [w["window_id"] for w in ws[:3]] == ["v1:live:1", "v1:live:2", "v1:live:3"]
        assert ws[0]["accuracy"] == 1.0 and ws[1]["accuracy"] == 1.0
        assert ws[2]["accuracy"] < 0.75 and ws[2]["labelled_count"] == 20
        # Every second frame is labelled; records of different partitions interleave, so
        # a window's edges blur a little.
        assert 0.35 <= ws[2]["label_coverage"] <= 0.65
    finally:
        # A deploy mid-drop: the monitor stops after the first bad window.
        first.p.send_signal(signal.SIGTERM)
        first.p.wait(60)
    second = start(env)
    try:
        fleet.send(120, "night")  # three more bad windows
        ws = windows(kafka_settings, prefix, 6)
        # The restarted monitor continues the numbering from its table.
        assert [w["window_id"] for w in ws[:6]] == [f"v1:live:{n}" for n in range(1, 7)]
        requests = [
            json.loads(r.value)
            for r in read_all(kafka_settings, prefix + Topics.RETRAIN_REQUESTS, 5, timeout_s=5)
        ]
        assert len(requests) == 1, requests
        req = requests[0]
        assert req["idempotency_key"] == "drop:vehicle-classifier:v1:live:3"
        assert req["window_ids"] == ["v1:live:3", "v1:live:4"] and req["trigger"] == "monitor"

        alerts = [
            json.loads(r.value)
            for r in read_all(kafka_settings, prefix + Topics.ALERTS, 10, timeout_s=5)
        ]
        kinds = [a["kind"] for a in alerts]
        assert kinds.count("drift_detected") == 1 and kinds.count("accuracy_drop") == 1, kinds
        asked = [
            json.loads(r.value)
            for r in read_all(kafka_settings, prefix + Topics.LABELS_REQUESTS, 8, timeout_s=10)
        ]
        # The least confident frames are asked for: the unsure night ones (0.45), not the
        # confident day ones (0.95), except where a window at the edge held only day frames.
        unsure = [q for q in asked if q["confidence"] == 0.45]
        assert len(asked) >= 4 and len(unsure) >= 0.75 * len(asked), asked
        assert all(q["frame_id"].startswith(fleet.run) for q in asked)
    finally:
        second.kill()
    producer.close()


def test_shadow_predictions_give_a_live_comparison_on_the_same_frames(
    env: dict[str, str], kafka_settings: KafkaSettings, prefix: str
) -> None:
    producer = EventProducer(KafkaSettings(topic_prefix=prefix))
    fleet = Fleet(producer, uuid.uuid4().hex[:6])
    proc = start(env)
    try:
        fleet.send(60, "night", version="v1", shadow_version="v2")  # 30 labelled pairs
        poison = bare_producer(KafkaSettings())
        poison.send(prefix + Topics.LABELS, key=b"x", value=b"not json at all")
        poison.flush()
        poison.close()

        def comparisons() -> list[dict] | None:  # type: ignore[type-arg]
            out = [
                json.loads(r.value)
                for r in read_all(kafka_settings, prefix + Topics.METRICS, 10_000, timeout_s=1.5)
            ]
            c = [m for m in out if m["event_type"] == "metrics.comparison"]
            return c if len(c) >= 3 else None

        cs = wait_for(comparisons, 90, interval_s=0.5, what="three comparisons")
        assert [c["labelled"] for c in cs] == [10, 20, 30]
        last = cs[-1]
        assert (last["champion_version"], last["challenger_version"]) == ("v1", "v2")
        assert last["challenger_correct"] == 30 and last["challenger_accuracy"] == 1.0
        assert last["champion_correct"] < 20
        # The challenger was right on every frame: each frame the champion missed is one
        # the challenger alone got right.
        assert last["champion_only"] == 0
        assert last["challenger_only"] == 30 - last["champion_correct"]
        shadow = [
            w
            for w in windows(kafka_settings, prefix, 2)
            if w["shadow"] and w["model_version"] == "v2"
        ]
        assert shadow and shadow[0]["window_id"] == "v2:shadow:1" and shadow[0]["accuracy"] == 1.0

        dlq = read_all(kafka_settings, prefix + Topics.EVENTS_DLQ, 1, timeout_s=30)
        headers = {k: v.decode() for k, v in dlq[0].headers}
        assert headers[DlqHeaders.ERROR] == "not_json" and dlq[0].value == b"not json at all"
        assert proc.alive()
    finally:
        proc.kill()
    producer.close()


def test_join_entries_expire_also_after_a_restart_recovered_them(
    env: dict[str, str], kafka_settings: KafkaSettings, prefix: str
) -> None:
    env = {
        **env,
        "STREAMLOOP_MONITORING_JOIN_TTL_S": "12",
        "STREAMLOOP_MONITORING_SWEEP_INTERVAL_S": "1",
    }
    port = int(env["STREAMLOOP_MONITORING_METRICS_PORT"])
    producer = EventProducer(KafkaSettings(topic_prefix=prefix))
    run = uuid.uuid4().hex[:6]
    frames = [f"{run}-{i}" for i in range(40)]
    now = datetime.now(UTC)
    for i, fid in enumerate(frames):
        cam = f"cam-{i % 4 + 1}"
        p = prediction(fid, cam, "v1", "car", 0.95, "day", now, shadow=False)
        producer.publish(Topics.PREDICTIONS, p, key=cam)
    producer.flush()
    first = start(env)
    try:
        wait_for(lambda: metric(port, "streamloop_monitoring_pending") == 40, 30, what="40 held")
    finally:
        first.p.send_signal(signal.SIGTERM)
        first.p.wait(60)
    # The restarted worker gets the 40 entries back from the changelog, never having seen
    # them arrive: labels for half of them still join (one window of 20) ...
    second = start(env)
    try:
        for fid in frames[:20]:
            producer.publish(Topics.LABELS, Label(frame_id=fid, label="car"), key=fid)
        producer.flush()
        assert [w["labelled_count"] for w in windows(kafka_settings, prefix, 1)] == [20]
        # ... and all of them expire, the recovered ones included.
        wait_for(lambda: metric(port, "streamloop_monitoring_pending") == 0, 60, what="expiry")
        for fid in frames[20:]:
            producer.publish(Topics.LABELS, Label(frame_id=fid, label="car"), key=fid)
        producer.flush()
        # Their predictions are gone: the labels wait alone, and no second window closes.
        wait_for(lambda: metric(port, "streamloop_monitoring_pending") == 20, 30, what="labels")
        ws = [
            json.loads(r.value)
            for r in read_all(kafka_settings, prefix + Topics.METRICS, 10_000, timeout_s=3)
        ]
        assert [w["labelled_count"] for w in ws if w["event_type"] == "metrics.window"] == [20]
    finally:
        second.kill()
    producer.close()


def test_labels_published_without_event_type_are_joined(
    env: dict[str, str], kafka_settings: KafkaSettings, prefix: str
) -> None:
    """The documented wire format of ``labels`` names no event_type: such labels count for
    the window like any other and none is dead-lettered."""
    producer = EventProducer(KafkaSettings(topic_prefix=prefix))
    raw = bare_producer(kafka_settings)
    run = uuid.uuid4().hex[:6]
    now = datetime.now(UTC)
    proc = start(env)
    try:
        for i in range(20):
            fid, cam = f"{run}-{i}", f"cam-{i % 4 + 1}"
            p = prediction(fid, cam, "v1", "car", 0.95, "day", now, shadow=False)
            producer.publish(Topics.PREDICTIONS, p, key=cam)
            label = {"frame_id": fid, "label": "car", "camera_id": cam, "annotator": "me"}
            raw.send(prefix + Topics.LABELS, key=fid.encode(), value=json.dumps(label).encode())
        producer.flush()
        raw.flush()
        [window] = windows(kafka_settings, prefix, 1)
        assert (window["labelled_count"], window["accuracy"]) == (20, 1.0)
        assert read_all(kafka_settings, prefix + Topics.EVENTS_DLQ, 1, timeout_s=3) == []
        assert proc.alive()
    finally:
        proc.kill()
        raw.close()
        producer.close()


def test_sigusr1_prints_every_task_and_the_worker_goes_on_counting(
    env: dict[str, str], kafka_settings: KafkaSettings, prefix: str
) -> None:
    """``kill -USR1`` (docs/reliability.md) dumps the worker's threads and asyncio tasks, the
    monitor's agents among them, to its log; the worker is not disturbed by it."""
    producer = EventProducer(KafkaSettings(topic_prefix=prefix))
    run = uuid.uuid4().hex[:6]
    now = datetime.now(UTC)
    proc = start(env)
    try:
        proc.p.send_signal(signal.SIGUSR1)
        wait_for(lambda: any(ln.startswith("TASKS") for ln in proc.lines), 30, what="a dump")
        dump = "\n".join(proc.lines)
        assert "THREAD MainThread" in dump
        assert all(f"services.monitoring.app.{a}" in dump for a in ("route", "join", "watch"))
        for i in range(20):
            fid, cam = f"{run}-{i}", f"cam-{i % 4 + 1}"
            p = prediction(fid, cam, "v1", "car", 0.95, "day", now, shadow=False)
            producer.publish(Topics.PREDICTIONS, p, key=cam)
            producer.publish(
                Topics.LABELS, Label(frame_id=fid, label="car", camera_id=cam), key=fid
            )
        producer.flush()
        [window] = windows(kafka_settings, prefix, 1)
        assert window["labelled_count"] == 20 and proc.alive()
    finally:
        proc.kill()
        producer.close()


def test_a_restarted_monitor_publishes_what_its_outbox_holds_and_its_topics_do_not(
    env: dict[str, str], kafka_settings: KafkaSettings, prefix: str
) -> None:
    now = datetime.now(UTC)

    def window(n: int) -> WindowMetrics:
        return WindowMetrics(
            model_name="vehicle-classifier", model_version="v1", window_id=f"v1:live:{n}",
            window_kind="count", window_start=now, window_end=now, sample_count=40,
            labelled_count=20, label_coverage=0.5, accuracy=0.5,
        )  # fmt: skip

    sent, unsent = window(1), window(2)
    alert = Alert(severity="warning", kind="accuracy_drop", message="v1 dropped")
    prefixed = KafkaSettings(topic_prefix=prefix)
    # What a worker killed in the middle of its publish leaves: the first window on the broker,
    # and all three in the outbox of its state table's changelog.
    with EventProducer(prefixed) as producer:
        producer.publish(Topics.METRICS, sent, key="v1")
    changelog = f"{prefix}streamloop-monitoring-state-changelog"
    with KafkaAdmin(kafka_settings) as admin:
        admin.create_topics(
            [(changelog, 1, {"cleanup.policy": "compact"})],
            kafka_settings.replication_factor,
            timeout_s=30,
        )
    raw = bare_producer(kafka_settings)
    box = Outbox(now, (sent, unsent, alert))
    raw.send(changelog, key=OUTBOX.encode(), value=json.dumps(box.dump()).encode())
    raw.flush()
    raw.close()

    def published() -> tuple[list[str], list[str]]:
        ws = [json.loads(r.value) for r in read_all(kafka_settings, prefix + Topics.METRICS, 99, 2)]
        al = [json.loads(r.value) for r in read_all(kafka_settings, prefix + Topics.ALERTS, 99, 2)]
        return [w["event_id"] for w in ws], [a["event_id"] for a in al]

    proc = start(env)  # its first tick loads the state and finds the outbox
    try:
        wait_for(lambda: len(published()[0]) >= 2, 60, what="the unsent window")
        said = [json.loads(ln[ln.index("{") :]) for ln in proc.lines if "left unsent" in ln]
        assert [s["count"] for s in said] == [2], proc.lines[-40:]
    finally:
        proc.p.send_signal(signal.SIGTERM)
        proc.p.wait(60)
    # Each once, the same events: the window already sent was not sent again.
    assert published() == ([sent.event_id, unsent.event_id], [alert.event_id])
    # And the outbox was emptied on the changelog: the next worker has nothing to read back.
    boxes = [r for r in read_all(kafka_settings, changelog, 10**4, 5) if r.key == OUTBOX.encode()]
    assert len(boxes) >= 2 and Outbox.load(json.loads(boxes[-1].value)) is None
