"""Whole commands as a user runs them, against the real Kafka and Redis."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamloop.cli import SERVICES

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "streamloop"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )


@pytest.mark.timeout(180)
def test_demo_round_trip_prints_a_producer_to_consumer_span_tree() -> None:
    out = run("demo", "--round-trip", "--events", "3")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3/3 events made the round trip" in out.stdout
    tree = out.stdout[out.stdout.index("trace") :]
    assert re.search(r"demo-publisher alerts publish .*\n.*demo-consumer alerts process", tree)
    event_id = re.search(r"streamloop trace ([0-9a-f]{32})", out.stdout)
    assert event_id
    again = run("trace", event_id.group(1))
    assert again.returncode == 0
    assert "demo-consumer alerts process" in again.stdout


def test_trace_of_an_unknown_id_fails_clearly() -> None:
    out = run("trace", "0" * 32)
    assert out.returncode == 1
    assert "no trace found" in out.stdout
    assert "STREAMLOOP_TELEMETRY_FRAMES_SAMPLE_RATIO, 0.01 here" in out.stdout  # why, maybe


def test_topics_create_is_idempotent_from_the_command_line() -> None:
    run("topics", "create")
    out = run("topics", "create")
    assert out.returncode == 0, out.stderr
    assert "0 created" in out.stdout and "created frames" not in out.stdout


def test_every_service_the_cli_names_can_be_served() -> None:
    import importlib

    from streamloop.cli import SERVICES

    for name in SERVICES:
        module = importlib.import_module(f"services.{name}.__main__")
        assert callable(module.main), name


def test_status_shows_the_broker_and_redis() -> None:
    out = run("status")
    assert re.search(r"kafka single\s+node 1\s+running", out.stdout), out.stdout
    assert "redis" in out.stdout and "running" in out.stdout


def test_docker_compose_file_is_valid() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed (make setup installs it with apt-get)")
    out = subprocess.run([exe, "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    services = subprocess.run(
        [exe, "config", "--services"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    for name in ("kafka", "redis", "jaeger", "topics", *SERVICES):
        assert name in services


def test_tail_predictions_prints_the_events_as_json_lines_or_a_table(prefix: str) -> None:
    import json
    from datetime import timedelta

    from shared.bus import EventProducer
    from shared.events import Prediction, utcnow
    from shared.settings import KafkaSettings
    from shared.topics import Topics
    from tests.conftest import provision_prefixed

    kafka = KafkaSettings(topic_prefix=prefix)
    provision_prefixed(kafka, prefix, [Topics.PREDICTIONS, Topics.PREDICTIONS_SHADOW])

    def prediction(frame: str, camera: str, shadow: bool = False) -> Prediction:
        now = utcnow()
        return Prediction(
            frame_id=frame,
            camera_id=camera,
            captured_at=now - timedelta(milliseconds=25),
            model_name="vehicles",
            model_version="v9" if shadow else "v2",
            predicted_class="bus",
            probabilities={"bus": 0.75, "car": 0.25},
            confidence=0.75,
            served_at=now,
            latency_from_capture_ms=25.0,
            latency_from_ingest_ms=8.0,
            shadow=shadow,
        )

    live = [prediction("p1", "cam-1"), prediction("p2", "cam-2"), prediction("p3", "cam-1")]
    with EventProducer(kafka) as producer:
        # Ahead of cam-1's predictions in its partition: read before the third is shown.
        producer.publish_raw(Topics.PREDICTIONS, b"garbage", key=b"cam-1", headers=[])
        for p in live:
            producer.publish(Topics.PREDICTIONS, p, key=p.camera_id)
        shadow = prediction("s1", "cam-1", shadow=True)
        producer.publish(Topics.PREDICTIONS_SHADOW, shadow, key="cam-1")
        producer.flush()

    def tail(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "tail", "predictions", *args, "--idle-exit", "10"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={
                "COLUMNS": "200",
                "PATH": "/usr/bin:/bin",
                "HOME": str(Path.home()),
                "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
            },
        )

    out = tail("--json", "--max", "3")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(lines, key=lambda e: e["frame_id"]) == [
        json.loads(p.model_dump_json()) for p in live
    ]

    out = tail("--json", "--max", "2", "--camera", "cam-1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert [json.loads(line)["frame_id"] for line in out.stdout.splitlines()] == ["p1", "p3"]

    out = tail("--json", "--max", "1", "--shadow")
    assert out.returncode == 0, out.stdout + out.stderr
    (event,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert event["frame_id"] == "s1" and event["shadow"] is True and event["model_version"] == "v9"

    out = tail("--max", "3")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "predictions" in out.stdout and "1 undecodable records skipped" in out.stdout
    for p in live:
        assert re.search(rf"{p.camera_id}\s.*{p.frame_id}\s.*bus\s.*75\.0%\s.*v2\s.*25", out.stdout)
