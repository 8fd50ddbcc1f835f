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


def test_topics_create_is_idempotent_from_the_command_line() -> None:
    run("topics", "create")
    out = run("topics", "create")
    assert out.returncode == 0, out.stderr
    assert "0 created" in out.stdout and "created frames" not in out.stdout


def test_serve_names_a_service_that_is_not_in_this_release() -> None:
    out = run("serve", "monitoring")
    assert out.returncode == 2
    assert "not part of this release" in out.stdout


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
