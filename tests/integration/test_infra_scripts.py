"""The infrastructure scripts: starting what already runs is a no-op (exit 0, one line), so
``make up`` and ``streamloop up`` can be run again at any time."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import ROOT

pytestmark = pytest.mark.timeout(120)

KAFKA = ROOT / "infra" / "kafka" / "kafka.sh"
REDIS = ROOT / "infra" / "redis" / "redis.sh"


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ, **(env or {})},
    )


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_starting_the_running_single_broker_is_a_no_op() -> None:
    assert run(KAFKA, "running", "single").returncode == 0, "the broker must be up for this test"
    done = run(KAFKA, "start", "single")
    assert done.returncode == 0, done.stderr
    [note] = lines(done.stderr)
    assert "already running" in note
    assert done.stdout == ""
    assert run(KAFKA, "running", "single").returncode == 0


def test_a_broker_started_from_another_checkout_counts_as_running(tmp_path: Path) -> None:
    # Another STREAMLOOP_VAR: no pid file here, but the port is held by a StreamLoop broker.
    assert run(KAFKA, "running", "single").returncode == 0, "the broker must be up for this test"
    done = run(KAFKA, "start", "single", env={"STREAMLOOP_VAR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    [note] = lines(done.stderr)
    assert "already running" in note
    assert not (tmp_path / "kafka" / "node-1" / "kafka.pid").exists()


@pytest.fixture
def fake_cluster(tmp_path: Path) -> Iterator[tuple[dict[str, str], int]]:
    """A var directory whose three cluster nodes are 'running': their pid files name a live
    process of this test (so nothing is really started, whatever the script does)."""
    sleeper = subprocess.Popen(["sleep", "300"])
    for n in (1, 2, 3):
        node = tmp_path / "kafka-cluster" / f"node-{n}"
        node.mkdir(parents=True)
        (node / "kafka.pid").write_text(f"{sleeper.pid}\n")
    env = {
        "STREAMLOOP_VAR": str(tmp_path),
        "STREAMLOOP_KAFKA_CLUSTER_PORT": "9392",
        "STREAMLOOP_KAFKA_START_TIMEOUT": "5",
    }
    try:
        yield env, sleeper.pid
    finally:
        # Stops whatever the pid files name by then (a broker, had one been started).
        for n in (1, 2, 3):
            pid = (tmp_path / "kafka-cluster" / f"node-{n}" / "kafka.pid").read_text().strip()
            if pid != str(sleeper.pid):
                run(KAFKA, "kill", "cluster", str(n), env=env)
        sleeper.kill()
        sleeper.wait()


def test_starting_the_running_cluster_is_a_no_op(
    fake_cluster: tuple[dict[str, str], int], tmp_path: Path
) -> None:
    env, pid = fake_cluster
    done = run(KAFKA, "start", "cluster", env=env)
    assert done.returncode == 0, done.stderr
    [note] = lines(done.stderr)
    assert "already running" in note and "cluster" in note
    for n in (1, 2, 3):
        pidfile = tmp_path / "kafka-cluster" / f"node-{n}" / "kafka.pid"
        assert pidfile.read_text().strip() == str(pid)


def test_starting_the_running_redis_is_a_no_op() -> None:
    assert run(REDIS, "running").returncode == 0, "Redis must be up for this test"
    done = run(REDIS, "start")
    assert done.returncode == 0, done.stderr
    [note] = lines(done.stderr)
    assert "running" in note or "using it" in note
    assert run(REDIS, "running").returncode == 0


def _free_port_pair() -> int:
    """A port free with the next one (the single node's controller listens on port + 1)."""
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free ports in a row")


@pytest.mark.timeout(240)
def test_a_broker_whose_log_rolls_over_while_it_starts_is_seen_started(tmp_path: Path) -> None:
    env = {
        "STREAMLOOP_VAR": str(tmp_path),
        "STREAMLOOP_KAFKA_PORT": str(_free_port_pair()),
        "STREAMLOOP_KAFKA_START_TIMEOUT": "60",
    }
    logs = tmp_path / "kafka" / "node-1" / "logs"
    try:
        # A broker that ran here before (its storage formatted, its starts in the log) ...
        first = run(KAFKA, "start", "single", env=env)
        assert first.returncode == 0, first.stderr
        assert run(KAFKA, "stop", "single", env=env).returncode == 0
        # ... and a log just under the 20 MB at which it rolls, holding older starts: it
        # rolls over while the broker starts, so the new start is alone in the new file.
        old = "[2020-01-01 00:00:00,000] INFO [KafkaRaftServer nodeId=1] Kafka Server started\n"
        filler = "[2020-01-01 00:00:00,000] INFO filler " + "x" * 200 + "\n"
        with (logs / "server.log").open("w") as f:
            f.write(old * 5)
            f.write(filler * ((20 * 1024 * 1024 - 4096) // len(filler)))
        done = run(KAFKA, "start", "single", env=env)
        assert done.returncode == 0, done.stderr
        assert "answers on" in done.stderr
        assert (logs / "server.log.1").exists(), "the log did not roll over during the start"
    finally:
        run(KAFKA, "kill", "single", "1", env=env)
