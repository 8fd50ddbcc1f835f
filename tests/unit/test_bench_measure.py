from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from shared.events import Prediction
from tests.bench.lib.measure import (
    Phase,
    latencies,
    median_phase,
    middle_rate,
    percentile,
    saturation,
)
from tests.bench.lib.procs import (
    CpuSnapshot,
    cpu_between,
    cpu_s_of,
    descendants,
    scan_procs,
    status_kib,
    thread_cores,
    thread_cpu_s,
    threads_by_name,
    threads_us_per_frame,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def prediction(i: int, served_s: float, capture_ms: float = 50.0) -> Prediction:
    served = T0 + timedelta(seconds=served_s)
    return Prediction(
        frame_id=f"f-{i}",
        camera_id="cam-1",
        captured_at=served - timedelta(milliseconds=capture_ms),
        served_at=served,
        model_name="m",
        model_version="v1",
        predicted_class="car",
        confidence=0.9,
        probabilities={"car": 0.9, "truck": 0.1},
        latency_from_capture_ms=capture_ms,
        latency_from_ingest_ms=capture_ms / 2,
    )


def test_percentiles_of_nothing_are_zero_and_of_values_interpolate() -> None:
    assert percentile([], 99) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)


def test_the_middle_rate_leaves_out_the_warm_up_and_the_drain() -> None:
    # 10 slow stamps at each end, 80 one per 10 ms in the middle.
    stamps = [i * 1.0 for i in range(10)]
    stamps += [10.0 + i * 0.01 for i in range(80)]
    stamps += [20.0 + i for i in range(10)]
    assert middle_rate(stamps) == pytest.approx(80 / (20.0 - 10.0))
    assert middle_rate([1.0]) is None
    assert middle_rate([2.0] * 10) is None


def test_saturation_does_not_count_the_first_call_and_latencies_are_per_stage() -> None:
    # Three model calls of two frames each, 0.5 s apart; records stamped 10 ms after serving.
    preds = [prediction(i, (i // 2) * 0.5) for i in range(6)]
    seen = [(p, int(p.served_at.timestamp() * 1e3) + 10, p.served_at.timestamp()) for p in preds]
    sat = saturation(seen)
    assert sat["model_calls"] == 3
    assert sat["mean_batch"] == 2.0
    assert sat["frames_per_s"] == pytest.approx(4 / 1.0)
    lat = latencies(seen)
    assert lat["served"]["p99_ms"] == pytest.approx(50.0)
    assert lat["record"]["p50_ms"] == pytest.approx(60.0, abs=1.0)
    assert lat["ingested"]["max_ms"] == pytest.approx(25.0)


def test_phases_add_back_to_back_and_the_median_is_by_duration() -> None:
    produce, consume = Phase(2.0, 100, 4000), Phase(3.0, 100, 4000)
    both = produce.then(consume)
    assert (both.seconds, both.messages, both.msgs_per_s) == (5.0, 100, 20.0)
    assert median_phase([Phase(s, 1, 1) for s in (5.0, 1.0, 3.0)]).seconds == 3.0


def test_cpu_between_snapshots_is_in_seconds_per_group_and_the_rest_is_other() -> None:
    before = CpuSnapshot(at=0.0, groups={"ingest": {(1, 7): 1.0}}, busy_s=10.0)
    after = CpuSnapshot(at=2.0, groups={"ingest": {(1, 7): 2.0, (2, 9): 0.5}}, busy_s=13.0)
    out = cpu_between(before, after, frames=1000)
    assert out["ingest"] == {"cpu_s": 1.5, "cores": 0.75, "ms_per_frame": 1.5}
    assert out["other"]["cpu_s"] == 1.5
    assert out["machine"]["cores"] == 1.5


def test_the_stack_is_what_a_deployment_runs_not_the_benchmark_nor_the_rest() -> None:
    before = CpuSnapshot(at=0.0, groups={}, busy_s=0.0)
    after = CpuSnapshot(
        at=1.0,
        groups={
            "ingest": {(1, 1): 0.3},
            "serving": {(2, 1): 0.2},
            "replica": {(3, 1): 0.1},
            "kafka": {(4, 1): 0.25},
            "bench": {(5, 1): 0.4},
        },
        busy_s=1.5,
    )
    out = cpu_between(before, after, frames=100)
    assert out["stack"]["cpu_s"] == 0.85
    assert out["stack"]["ms_per_frame"] == 8.5
    assert out["other"]["cpu_s"] == 0.25
    assert out["machine"]["cpu_s"] == 1.5


def test_thread_cpu_is_given_per_frame_with_unnamed_threads_summed_as_native() -> None:
    out = threads_us_per_frame(
        {1: 1.0, 2: 0.0}, {1: 1.5, 2: 0.2, 3: 0.1}, {1: "MainThread"}, frames=1000
    )
    assert out == {"MainThread": 500.0, "native threads": 300.0}


def test_a_process_is_read_by_thread_name_or_id_and_the_rest_summed() -> None:
    with open("/proc/self/comm", encoding="utf-8") as f:
        main = f.read().strip()
    before, mine = threads_by_name(os.getpid()), thread_cpu_s()
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # this thread, the main one, busy for 0.2 s
        pass
    after, mine_after = threads_by_name(os.getpid()), thread_cpu_s()
    assert after[main] - before.get(main, 0.0) >= 0.15
    me = threading.get_native_id()
    assert mine_after[me] - mine[me] >= 0.15  # the same reader, this process by thread id
    assert threads_by_name(2**22 + 1) == {}  # no such process

    cores = thread_cores({"a": 1.0, "b": 1.0}, {"a": 4.0, "b": 1.5, "c": 0.5, "d": 0.2}, 10.0, 2)
    assert cores == {"a": 0.3, "b": 0.05, "other threads": 0.07}


def test_this_process_is_read_from_proc_in_seconds_and_bytes() -> None:
    procs = scan_procs()
    me = procs[os.getpid()]
    assert me.rss_bytes > 1 << 20
    assert me.cpu_s > 0.0
    assert cpu_s_of(os.getpid()) == pytest.approx(me.cpu_s, abs=1.0)
    assert os.getpid() in descendants(procs, me.ppid)
    rss_kib = status_kib(os.getpid(), "VmRSS")
    assert rss_kib is not None and rss_kib * 1024 == pytest.approx(me.rss_bytes, rel=0.5)
    assert status_kib(os.getpid(), "NoSuchField") is None
