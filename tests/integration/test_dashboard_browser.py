"""The monitoring dashboard end to end, in a real browser: events published to the real
Kafka, read by ``DashboardFeed``, served by ``serve_dashboard`` and drawn by headless
Chromium (Debian's ``chromium``), whose DOM after the page's scripts ran is checked."""

from __future__ import annotations

import html
import os
import re
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest

from services.monitoring.board import DashboardState
from services.monitoring.dashboard import serve_dashboard
from services.monitoring.feed import FEED_TOPICS, DashboardFeed
from shared.events import (
    Alert,
    DatasetSnapshot,
    Event,
    ModelLifecycle,
    RetrainRequest,
    WindowMetrics,
    encode,
    utcnow,
)
from shared.registry import MemoryRegistry, RegistryView, VersionView, lifecycle_key
from shared.settings import KafkaSettings
from shared.topics import Topics
from tests.conftest import new_prefix, provision_prefixed
from tests.integration.browser import CHROMIUM, headless
from tests.integration.helpers import bare_producer, wait_for

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="the chromium binary is not installed (make setup installs Debian's chromium)",
)

MODEL = "vehicle-classifier"
LIVE = [0.91, 0.88, 0.84, 0.79]
SHADOW = [0.90, 0.92, 0.93]


def windows() -> list[WindowMetrics]:
    end = utcnow() - timedelta(minutes=10)
    out = []
    for version, shadow, accuracies in (("v1", False, LIVE), ("v2", True, SHADOW)):
        for i, accuracy in enumerate(accuracies):
            out.append(
                WindowMetrics(
                    model_name=MODEL,
                    model_version=version,
                    window_id=f"{version}/{i}",
                    window_kind="count",
                    window_start=end + timedelta(minutes=2 * i),
                    window_end=end + timedelta(minutes=2 * i + 2),
                    shadow=shadow,
                    sample_count=400,
                    labelled_count=200,
                    label_coverage=0.5,
                    accuracy=accuracy,
                )
            )
    return out


def registry_with_v1() -> MemoryRegistry:
    registry = MemoryRegistry()
    v1 = VersionView(
        model_name=MODEL,
        version="v1",
        number=1,
        registered_at=utcnow() - timedelta(hours=1),
        status="blessed",
        aliases=["champion"],
        was_champion=True,
        rolled_back=False,
        artifact_uri="file:///artifacts/v1",
        sha256="ab" * 32,
        dataset=DatasetSnapshot(
            snapshot_id="s1",
            frame_ids_sha256="cd" * 32,
            size=900,
            per_class={"car": 900},
            per_condition={"day": 900},
            topic_offsets={"examples:0": 900},
            holdout_size=90,
        ),
        hyperparameters={},
        training_metrics={},
        parent_version=None,
        code_version="c0",
        seed=1,
        duration_s=10.0,
        idempotency_key="bootstrap",
        tags={},
    )
    registry.replace(
        RegistryView(model_name=MODEL, versions=[v1], aliases={"champion": "v1"}, history=[])
    )
    return registry


def publish(kafka: KafkaSettings, records: list[tuple[str, Event | bytes]]) -> None:
    """Publish and wait for every acknowledgement (a refused record fails the test here)."""
    producer = bare_producer(kafka)
    try:
        futures = []
        for topic, payload in records:
            name = kafka.topic_prefix + topic
            if isinstance(payload, ModelLifecycle):
                key = lifecycle_key(payload).encode()  # models.lifecycle is compacted
                futures.append(producer.send(name, encode(payload), key=key))
            elif isinstance(payload, Event):
                futures.append(producer.send(name, encode(payload), key=b"dashboard-test"))
            else:
                futures.append(producer.send(name, payload, headers=[("dlq.error", b"not_json")]))
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close()


def dump_dom(url: str, workdir: Path) -> str:
    """The page's DOM after its scripts ran for 8 s of virtual time (four polls)."""
    assert CHROMIUM is not None
    env = {
        **os.environ,
        "HOME": str(workdir),
        "XDG_CONFIG_HOME": str(workdir / "config"),
        "XDG_CACHE_HOME": str(workdir / "cache"),
    }
    proc = subprocess.run(
        [
            CHROMIUM,
            *headless(workdir),
            "--window-size=1280,1600",
            "--virtual-time-budget=8000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "<body" in proc.stdout, proc.stderr[-3000:]
    return proc.stdout


def between(dom: str, start: str, end: str) -> str:
    i = dom.index(start)
    return dom[i : dom.index(end, i)]


def test_the_dashboard_draws_what_was_published(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    prefix = new_prefix()
    kafka = kafka_settings.model_copy(update={"topic_prefix": prefix})
    # Every topic but alerts exists from the start; alerts appears while the feed runs.
    provision_prefixed(kafka_settings, prefix, [t for t in FEED_TOPICS if t != Topics.ALERTS])
    request = RetrainRequest(
        model_name=MODEL,
        idempotency_key="drop-v1-3",
        reason="live accuracy 0.79 below 0.85",
        trigger="monitor",
    )
    promoted = ModelLifecycle(
        model_name=MODEL,
        action="alias_set",
        alias="champion",
        model_version="v1",
        reason="first champion",
    )
    publish(
        kafka,
        [(Topics.METRICS, w) for w in windows()]
        + [
            (Topics.METRICS, b"not an event"),  # skipped, not fatal
            (Topics.RETRAIN_REQUESTS, request),
            (Topics.MODELS_LIFECYCLE, promoted),
            (Topics.FRAMES_DLQ, b"\x89PNG refused frame"),
        ],
    )

    state = DashboardState(model_name=MODEL)
    feed = DashboardFeed(kafka, state, history=100, refresh_s=0.5)
    server = serve_dashboard(state, registry_with_v1(), MODEL, 0.85, "127.0.0.1", 0)
    feed.start()
    try:
        wait_for(
            lambda: (
                len(state.windows()) == 7
                and len(state.markers()) == 2
                and state.snapshot(0.85, None)["dlq"][Topics.FRAMES_DLQ] == 1
            ),
            timeout_s=60,
            what="the feed to fold the history",
        )
        provision_prefixed(kafka_settings, prefix, [Topics.ALERTS])
        publish(
            kafka,
            [
                (
                    Topics.ALERTS,
                    Alert(
                        severity="critical",
                        kind="accuracy_drop",
                        message="v1 live accuracy 0.79 < 0.85",
                        model_version="v1",
                    ),
                )
            ],
        )
        wait_for(
            lambda: state.snapshot(0.85, None)["alerts"],
            timeout_s=60,
            what="the feed to pick up the topic created after it started",
        )

        started = time.monotonic()
        dom = dump_dom(server.url, tmp_path)
        took = time.monotonic() - started
    finally:
        feed.stop()
        server.close()

    body = re.search(r"<body[^>]*>", dom)
    assert body is not None
    points = re.search(r'data-points="(\d+)"', body.group(0))
    assert points is not None and int(points.group(1)) == len(LIVE) + len(SHADOW), body.group(0)
    assert 'data-state="ok"' in body.group(0)

    chart = between(dom, 'id="accuracy-chart"', 'id="legend"')
    assert 'class="scatterlayer' in chart
    assert chart.count('class="trace scatter') == 2  # v1 live, v2 shadow
    assert re.search(r'<path class="js-line" d="M[\d.]+,[\d.]+L', chart)
    assert 'data-unformatted="R"' in chart  # the retrain request's marker
    assert 'data-unformatted="P"' in chart  # the promotion's marker
    assert "retrain below 0.85" in chart  # the threshold line's label

    models = between(dom, 'id="models"', "</tbody>")
    assert 'data-version="v1"' in models
    assert "champion" in models
    alerts = html.unescape(between(dom, 'id="alerts"', "</ul>"))
    assert "v1 live accuracy 0.79 < 0.85" in alerts
    assert "critical" in alerts
    assert re.search(r'<dd data-topic="frames.dlq"[^>]*>1</dd>', dom)
    assert 'model-name">' + MODEL in dom
    print(f"chromium rendered the dashboard in {took:.1f} s")
