"""The frame path's processes SIGKILLed mid-stream and started again: ingest, then the
serving ingress, with transactions on. Each batch is one transaction with its offsets, so a
frame in flight at the kill is either wholly done or read again: every acknowledged frame is
predicted exactly once (``read_committed``), and the restarted instance, with the same
transactional id, aborts its predecessor's open transaction at once."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.chaos.conftest import Infra, Pipeline, Tally, record
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.timeout(600)


def test_ingest_and_serving_killed_mid_stream_lose_and_repeat_no_frame(
    infra: Infra, pipeline: Pipeline
) -> None:
    pipeline.settings.update(
        STREAMLOOP_INGEST_TRANSACTIONS__ENABLED="true",
        STREAMLOOP_SERVING_TRANSACTIONS__ENABLED="true",
    )
    pipeline.serve_frames()
    tally = Tally()
    camera = pipeline.stream(tally, rate=40.0, seconds=75)
    rows = []
    for n, (service, ready) in enumerate(
        (("ingest", '"consumer started"'), ("serving", '"champion adopted"'))
    ):

        def flowing(enough: int = 300 * (n + 1)) -> bool | None:
            pipeline.read_predictions(tally)
            return len(tally.predicted) >= enough or None

        wait_for(flowing, 120, what="the stream flowing")
        victim = pipeline.procs[service]
        os.kill(victim.p.pid, signal.SIGKILL)
        victim.p.wait(10)
        killed_at, sent_at_kill = time.monotonic(), len(tally.sent)
        extra = {"STREAMLOOP_SERVING_BACKEND": "local"} if service == "serving" else {}
        pipeline.start(service, ready=ready, **extra)
        recovery = pipeline.recovery_s(tally, killed_at, sent_at_kill)
        rows.append((service, recovery, victim.p.pid))
    camera.join(120)
    pipeline.count_predictions(tally, timeout_s=180)
    for service, recovery, pid in rows:
        row = {
            "fault": f"{service} killed",
            "injected": f"SIGKILL of {service} (pid {pid}) at 40 frames/s, restarted at once",
            "frames_in": len(tally.sent),
            "acknowledged": len(tally.acked),
            "lost": len(tally.lost),
            "duplicated": tally.duplicated,
            "recovery_s": round(recovery, 1),
        }
        record(f"{service}_killed", row)
    assert tally.acked and tally.lost == set(), f"{len(tally.lost)} lost"
    assert tally.duplicated == 0, f"{tally.duplicated} duplicated"
    # The successors aborted what the killed ones left open, and went on.
    assert all(pipeline.procs[s].alive() for s in ("ingest", "serving"))
