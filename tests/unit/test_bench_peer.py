"""The peer part of ``bench_serving`` and the stack-at-rest benchmark: how their figures are
read (no broker, no peer process)."""

from __future__ import annotations

import json

import pytest

from tests.bench.lib.e2e import PredictionReader
from tests.bench.lib.idle import groups_of
from tests.bench.lib.peer import agreement, peer_ratio, served_times
from tests.bench.lib.procs import ProcInfo


def reader_with(records: dict[str, dict[str, object]]) -> PredictionReader:
    reader = PredictionReader("run.predictions", "run.")
    reader.records = {fid: (json.dumps(v).encode(), 0, 0.0) for fid, v in records.items()}
    return reader


def test_the_peer_is_read_by_its_own_served_time_and_checked_against_the_pool() -> None:
    reader = reader_with(
        {
            "run.sat-000000": {"served_at": 10.0, "predicted_class": "car"},
            "run.sat-000001": {"served_at": 10.5, "predicted_class": "bus"},
            "run.sat-000003": {"served_at": 11.0, "predicted_class": "car"},
            "run.warm-000000": {"served_at": 1.0, "predicted_class": "bus"},
        }
    )
    assert sorted(served_times(reader, "sat")) == [10.0, 10.5, 11.0]
    # frame i is the pool's frame i % 2: car, truck, car, truck
    assert agreement(reader, "sat", ["car", "truck"]) == pytest.approx(1 / 3)
    assert agreement(reader, "sat", ["car", "bus"]) == pytest.approx(2 / 3)
    assert agreement(reader, "none", ["car"]) == 0.0


def test_the_ratio_is_ours_over_the_peers_and_absent_without_both() -> None:
    both = {
        "end_to_end": {"saturation": {"middle_frames_per_s": 900.0}},
        "peer": {"middle_frames_per_s": 1800.0},
    }
    assert peer_ratio(both) == 0.5
    assert peer_ratio({"peer": {"middle_frames_per_s": 1800.0}}) is None
    assert peer_ratio({**both, "peer": {}}) is None


def proc(pid: int, ppid: int, cmdline: str) -> ProcInfo:
    return ProcInfo(pid, ppid, 0, 1.0, 0, cmdline)


def test_each_process_at_rest_counts_in_its_service_its_children_or_the_infrastructure() -> None:
    procs = {
        p.pid: p
        for p in (
            proc(10, 1, "python -m services.serving"),
            proc(11, 10, "ray::ServeReplica:serving"),
            proc(12, 11, "/site-packages/ray/core/src/ray/raylet/raylet --node_ip=x"),
            proc(20, 1, "python -m services.ingest"),
            proc(30, 1, "java ... kafka.Kafka server.properties"),
            proc(31, 1, "redis-server 127.0.0.1:6379"),
            proc(40, 1, "bash"),
        )
    }
    groups = groups_of(procs, {"serving": 10, "ingest": 20})
    assert groups == {
        10: "serving",
        11: "serving: ray::ServeReplica",
        12: "serving: raylet",
        20: "ingest",
        30: "kafka",
        31: "redis",
    }


def test_a_window_counts_each_process_by_pid_and_start_a_new_one_whole(monkeypatch) -> None:
    import tests.bench.lib.idle as idle

    def snap(cpu: dict[tuple[int, int], float]) -> dict[int, ProcInfo]:
        cmd = {10: "python -m services.ingest", 30: "java kafka.Kafka", 11: "worker"}
        return {
            pid: ProcInfo(pid, 10 if pid == 11 else 1, start, s, 0, cmd[pid])
            for (pid, start), s in cpu.items()
        }

    # ingest spends 1 s; its child is replaced by a new process on the same pid (2 s so far,
    # all of it in the window); Kafka spends 0.5 s
    scans = iter(
        [
            snap({(10, 1): 5.0, (11, 1): 9.0, (30, 1): 1.0}),
            snap({(10, 1): 6.0, (11, 2): 2.0, (30, 1): 1.5}),
        ]
    )
    clock = iter([0.0, 10.0])
    monkeypatch.setattr(idle, "scan_procs", lambda: next(scans))
    monkeypatch.setattr(idle.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(idle.time, "sleep", lambda _s: None)
    assert idle.window({"ingest": 10}, 10.0) == {
        "ingest": 0.1,
        "ingest: worker": 0.2,
        "kafka": 0.05,
        "total": 0.35,
    }
