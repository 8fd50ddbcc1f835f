"""Ray as infrastructure: serving joins a Ray head started beside Kafka and Redis (by
``infra/ray/ray.sh``, as ``make up`` starts it), so the model replicas are the cluster's and not
the ingress's. The serving ingress is SIGKILLed mid-stream and started again: it finds the
application running with its own fingerprint and reuses it, so the replica is the same process
before and after. Then the replica is SIGKILLed: Serve starts another. Transactions on, every
acknowledged frame is predicted exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.conftest import ROOT, Infra, Pipeline, Tally, record
from tests.integration.helpers import free_port, wait_for

pytestmark = pytest.mark.timeout(600)

RAY_SH = ROOT / "infra" / "ray" / "ray.sh"
REPLICA = "ServeReplica:streamloop:classifier"


class Head:
    """A Ray head of the test module's own, on ports of its own."""

    def __init__(self, infra: Infra) -> None:
        self.port = free_port()
        self.env = {**infra.env, "STREAMLOOP_RAY_PORT": str(self.port), "STREAMLOOP_RAY_CPUS": "2"}
        self.address = f"127.0.0.1:{self.port}"
        self.sid_file = Path(infra.env["STREAMLOOP_VAR"]) / "ray" / f"head-{self.port}.sid"

    def script(self, command: str) -> None:
        subprocess.run([str(RAY_SH), command], env=self.env, check=True, timeout=180)

    def replicas(self) -> list[int]:
        """Pids of the classifier replicas running on this head (its session's processes)."""
        session = int(self.sid_file.read_text())
        found = subprocess.run(["pgrep", "-f", REPLICA], capture_output=True, text=True).stdout
        return [int(p) for p in found.split() if os.getsid(int(p)) == session]


@pytest.fixture(scope="module")
def head(infra: Infra) -> Iterator[Head]:
    own = Head(infra)
    own.script("start")
    try:
        yield own
    finally:
        subprocess.run([str(RAY_SH), "stop"], env=own.env, check=False, timeout=60)


def test_the_ingress_restarts_onto_the_running_replicas_and_a_killed_replica_is_replaced(
    infra: Infra, head: Head, pipeline: Pipeline
) -> None:
    pipeline.settings.update(
        STREAMLOOP_INGEST_TRANSACTIONS__ENABLED="true",
        STREAMLOOP_SERVING_TRANSACTIONS__ENABLED="true",
    )
    # A token in the home folder, as any local ray.init() leaves one: left to Ray, the ingress
    # would turn token authentication on and refuse the replies of the head's replicas.
    home = pipeline.root / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("a-token-the-head-does-not-know")
    serving_env = {
        "HOME": str(home),
        "RAY_ADDRESS": head.address,
        "STREAMLOOP_SERVING_BACKEND": "ray",
        "STREAMLOOP_SERVING_RAY_FALLBACK_LOCAL": "false",
        "STREAMLOOP_SERVING_MIN_REPLICAS": "1",
        "STREAMLOOP_SERVING_MAX_REPLICAS": "1",
        "STREAMLOOP_SERVING_HTTP_PORT": str(free_port()),
    }
    pipeline.champion()
    pipeline.start("ingest")
    first = pipeline.start("serving", ready='"champion adopted"', **serving_env)
    assert any('"ray serve application deployed"' in line for line in first.lines)
    replicas = wait_for(lambda: head.replicas() or None, 120, what="the replica")
    tally = Tally()
    camera = pipeline.stream(tally, rate=20.0, seconds=90)

    def flowing(enough: int) -> None:
        def check() -> bool | None:
            pipeline.read_predictions(tally)
            return len(tally.predicted) >= enough or None

        wait_for(check, 120, what="the stream flowing")

    flowing(200)
    os.kill(first.p.pid, signal.SIGKILL)
    first.p.wait(10)
    killed_at, sent_at_kill = time.monotonic(), len(tally.sent)
    second = pipeline.start("serving", ready='"champion adopted"', **serving_env)
    ingress_recovery = pipeline.recovery_s(tally, killed_at, sent_at_kill)
    # The application the first ingress deployed was found and kept, replica and all.
    assert any('"ray serve application reused"' in line for line in second.lines), second.lines
    assert not any('"ray serve application deployed"' in line for line in second.lines)
    assert head.replicas() == replicas, "the restart left the replica alone"

    flowing(len(tally.predicted) + 200)
    for pid in replicas:
        os.kill(pid, signal.SIGKILL)
    killed_at, sent_at_kill = time.monotonic(), len(tally.sent)
    replica_recovery = pipeline.recovery_s(tally, killed_at, sent_at_kill)
    camera.join(120)
    pipeline.count_predictions(tally, timeout_s=180)
    successors = head.replicas()

    for name, fault, injected, recovery in (
        (
            "serving_ingress_killed_ray_head",
            "serving ingress killed (Ray head)",
            f"SIGKILL of the serving ingress (pid {first.p.pid}) at 20 frames/s; "
            "restarted at once, joined the running Ray head",
            ingress_recovery,
        ),
        (
            "replica_killed_ray_head",
            "model replica killed (Ray head)",
            f"SIGKILL of the Ray Serve replica (pid {replicas[0]}) on the Ray head",
            replica_recovery,
        ),
    ):
        record(
            name,
            {
                "fault": fault,
                "injected": injected,
                "frames_in": len(tally.sent),
                "acknowledged": len(tally.acked),
                "lost": len(tally.lost),
                "duplicated": tally.duplicated,
                "recovery_s": round(recovery, 1),
            },
        )
    assert successors and set(successors).isdisjoint(replicas), "Serve started a new replica"
    assert tally.acked and tally.lost == set(), f"{len(tally.lost)} lost"
    assert tally.duplicated == 0, f"{tally.duplicated} duplicated"
    assert second.alive()


def test_starting_the_running_head_is_a_no_op(head: Head) -> None:
    session = head.sid_file.read_text()
    again = subprocess.run(
        [str(RAY_SH), "start"], env=head.env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    assert head.sid_file.read_text() == session
    running = subprocess.run([str(RAY_SH), "running"], env=head.env, check=False)
    assert running.returncode == 0


def test_a_stopped_head_is_no_longer_named_in_rays_address_file(head: Head) -> None:
    # Anything that looks for "the" Ray on this machine reads this file (Ray Train's
    # placement-group cleaner does, through Ray's state API), as `ray stop` would leave it.
    tmp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    address_file = Path(tmp) / "ray" / "ray_current_cluster"
    assert address_file.read_text().strip().endswith(f":{head.port}")
    head.script("stop")
    assert not head.sid_file.exists()
    assert not address_file.exists() or not address_file.read_text().strip().endswith(
        f":{head.port}"
    )
