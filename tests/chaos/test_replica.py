"""Serving on Ray Serve: the model replica is SIGKILLed while batches are in flight. The batch
whose call died is retried (the model tier was away, the frames are fine), Serve starts a new
replica, and every acknowledged frame is predicted."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.chaos.conftest import Infra, Pipeline, Tally, record
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.timeout(600)

REPLICA = "ServeReplica:streamloop:classifier"


def _replica_pids(serving_pid: int) -> list[int]:
    """Pids of the classifier replica started under this serving process's Ray."""
    out = subprocess.run(["pgrep", "-f", REPLICA], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    # The replica descends from the raylet that serving's ray.init started; keep only those.
    mine = []
    for pid in pids:
        parent = pid
        for _ in range(6):
            try:
                with open(f"/proc/{parent}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                break
            if parent == serving_pid:
                mine.append(pid)
                break
    return mine


def test_a_model_replica_killed_mid_batch_loses_no_frame(infra: Infra, pipeline: Pipeline) -> None:
    serving = pipeline.serve_on_ray()
    replicas = wait_for(lambda: _replica_pids(serving.p.pid) or None, 120, what="the replica")
    tally = Tally()
    camera = pipeline.stream(tally, rate=20.0, seconds=60)

    # Mid-stream, with calls in flight every 50 ms.
    def flowing() -> bool | None:
        pipeline.read_predictions(tally)
        return len(tally.predicted) >= 200 or None

    wait_for(flowing, 90, what="the stream flowing")
    for pid in replicas:
        os.kill(pid, signal.SIGKILL)
    killed_at, sent_at_kill = time.monotonic(), len(tally.sent)
    recovery = pipeline.recovery_s(tally, killed_at, sent_at_kill)
    camera.join(120)
    pipeline.count_predictions(tally, timeout_s=180)
    successors = _replica_pids(serving.p.pid)

    row = {
        "fault": "model replica killed",
        "injected": f"SIGKILL of the Ray Serve replica (pid {replicas[0]}) with batches in flight",
        "frames_in": len(tally.sent),
        "acknowledged": len(tally.acked),
        "lost": len(tally.lost),
        "duplicated": tally.duplicated,
        "recovery_s": round(recovery, 1),
    }
    record("replica_killed", row)
    assert successors and set(successors).isdisjoint(replicas), "Serve started a new replica"
    assert tally.acked and tally.lost == set(), row
    assert serving.alive() and pipeline.starts_of("serving") == 1
    # The lost call was retried as a dependency failure, not dead-lettered.
    assert not any('"handler failed; giving up"' in line for line in serving.lines)
