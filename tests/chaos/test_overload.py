"""Overload: frames offered at twice the rate the pipeline can serve for two minutes, then at a
quarter of it. Nothing crashes or runs out of memory: the backlog waits in Kafka, not in a
service's memory, it drains afterwards, and every acknowledged frame is predicted.

The pipeline is the deployed one: ingest, and serving on Ray Serve (one replica). Its
saturation rate is measured first, in the same run, from a burst published faster than it can
be served."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from shared.kafka_admin import KafkaAdmin
from shared.topics import Topics
from tests.chaos.conftest import Infra, Pipeline, Tally, record
from tests.chaos.memory import tree_rss_mib

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

WARM_S = 20.0
OVERLOAD_S = 120.0
NORMAL = 0.25
"""The rate after the overload, as a fraction of saturation."""
DRAIN_DEADLINE_S = 900.0
SAMPLE_S = 2.0


def test_twice_saturation_for_two_minutes_drains_afterwards_and_loses_nothing(
    infra: Infra, pipeline: Pipeline
) -> None:
    pipeline.serve_on_ray()
    saturation, camera_max = pipeline.saturation()
    assert camera_max > 2 * saturation, (
        f"the camera publishes {camera_max:.0f} frames/s at most, not twice the pipeline's "
        f"{saturation:.0f}: it cannot overload it"
    )
    already = len(pipeline.served_at)

    tally, stop = Tally(), threading.Event()
    normal = NORMAL * saturation
    schedule = [(WARM_S, normal), (OVERLOAD_S, 2 * saturation), (0.0, normal)]
    pids = {name: proc.p.pid for name, proc in pipeline.procs.items()} | infra.pids()
    groups = {
        "ingest": (pipeline.prefix + "ingest", pipeline.prefix + Topics.FRAMES_RAW),
        "serving": (pipeline.prefix + "serving", pipeline.prefix + Topics.FRAMES_VALID),
    }
    samples: list[dict[str, Any]] = []

    def sample(t: float, admin: KafkaAdmin) -> dict[str, Any]:
        pipeline.read_predictions(tally)
        row: dict[str, Any] = {
            "t": round(t, 1),
            "sent": len(tally.sent),
            "backlog": len(tally.acked) - (len(pipeline.served_at) - already),
        }
        for name, (group, topic) in groups.items():
            row[f"lag_{name}"] = admin.lag(group, topic)
        row |= {f"rss_mib_{name}": round(tree_rss_mib(pid)) for name, pid in pids.items()}
        samples.append(row)
        return row

    start = time.monotonic()
    camera = pipeline.stream(tally, schedule=schedule, stop=stop)
    overload_end = WARM_S + OVERLOAD_S
    drain_s: float | None = None
    sent_in_overload = 0
    try:
        with KafkaAdmin(pipeline.kafka) as admin:
            next_at = 0.0
            while (t := time.monotonic() - start) < overload_end + DRAIN_DEADLINE_S:
                # Predictions are read all the time (a check reads up to 5,000 of them), so the
                # backlog measured is the pipeline's, not this reader's.
                pipeline.read_predictions(tally, timeout_ms=100)
                if t < next_at:
                    continue
                next_at += SAMPLE_S
                row = sample(t, admin)
                print("overload:", {k: v for k, v in row.items() if not k.startswith("rss")})
                if t < overload_end:
                    sent_in_overload = len(tally.sent)
                    continue
                warm = max(s["backlog"] for s in samples if s["t"] < WARM_S)
                # Drained: the backlog is back to what the same rate left in flight before
                # the overload (or one second of frames at that rate, whichever is more).
                if row["backlog"] <= max(2 * warm, int(normal)):
                    drain_s = t - overload_end
                    break
    finally:
        stop.set()
        camera.join(60)
        record("overload", {"samples": samples, "saturation_fps": saturation})
    assert drain_s is not None, f"the backlog did not drain in {DRAIN_DEADLINE_S:.0f} s"
    pipeline.count_predictions(tally, timeout_s=180)

    overload = [s for s in samples if WARM_S <= s["t"] <= overload_end + drain_s]
    before = samples[0]
    offered = (sent_in_overload - before["sent"]) / OVERLOAD_S
    peak_rss = {n: max(s[f"rss_mib_{n}"] for s in samples) for n in pids}
    row = {
        "fault": "overload",
        "injected": f"{offered:.0f} frames/s ({offered / saturation:.1f}x saturation) for "
        f"{OVERLOAD_S:.0f} s, then {normal:.0f} frames/s",
        "frames_in": len(tally.sent),
        "acknowledged": len(tally.acked),
        "lost": len(tally.lost),
        "duplicated": tally.duplicated,
        "recovery_s": round(drain_s, 1),
        "saturation_fps": round(saturation),
        "peak_backlog_frames": max(s["backlog"] for s in overload),
        "peak_lag_ingest": max(s["lag_ingest"] for s in overload),
        "peak_lag_serving": max(s["lag_serving"] for s in overload),
        "rss_mib_before": {n: before[f"rss_mib_{n}"] for n in pids},
        "rss_mib_peak": peak_rss,
        "samples": samples,
    }
    record("overload", row)
    assert offered >= 1.6 * saturation, f"offered only {offered:.0f} frames/s: {row}"
    assert tally.acked and tally.lost == set(), {k: v for k, v in row.items() if k != "samples"}
    for name in ("ingest", "serving"):
        assert pipeline.procs[name].alive() and pipeline.starts_of(name) == 1, name
        # The backlog waits in Kafka: a service holds a bounded batch, not the backlog.
        assert peak_rss[name] < before[f"rss_mib_{name}"] * 1.5 + 256, (name, peak_rss)
