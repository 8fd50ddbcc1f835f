"""``bench_serving``'s CPU targets (the stack's CPU a frame at saturation and at a quarter of
it, as printed and as the ``make bench`` summary shows them), its CPU table, its broker
warm-up (no broker: the warm-up's slicing and figures, over a recording stand-in for the run)
and its options (the warm-up's, serving's backend)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rich.console import Console

from tests.bench.lib import e2e
from tests.bench.lib.e2e import WARM_RATE, warm_broker, warm_seconds
from tests.bench.lib.procs import CpuSnapshot
from tests.bench.lib.report import summary_rows
from tests.bench.lib.serving import cpu_rows, cpu_target_lines, stack_cpu_ms, targets

ROOT = Path(__file__).resolve().parents[2]


def results(sat_ms: float | None, low_ms: float | None) -> dict[str, Any]:
    cpu: dict[str, Any] = {}
    if sat_ms is not None:
        cpu["saturation"] = {"stack": {"ms_per_frame": sat_ms}, "machine": {"ms_per_frame": 9.0}}
    if low_ms is not None:
        cpu["pace25"] = {"stack": {"ms_per_frame": low_ms}, "machine": {"ms_per_frame": 99.0}}
    return {
        "ratios": {"c_over_a": 0.2},
        "end_to_end": {"cpu": cpu, "paced": [{"load": 0.5, "record": {"p99_ms": 80.0}}]},
    }


def test_the_low_load_ratio_is_the_stacks_not_the_machines() -> None:
    assert stack_cpu_ms(results(2.0, 2.9)) == {
        "saturation": 2.0,
        "low_load": 2.9,
        "low_over_saturation": 1.45,
    }
    met = targets(results(2.0, 2.9))
    assert (met["low_load_cpu"], met["cpu_ms"], met["p99"]) == (True, False, True)
    assert targets(results(2.0, 3.1))["low_load_cpu"] is False
    assert targets(results(0.5, 0.7))["cpu_ms"] is True


def test_a_part_not_measured_is_said_so_and_met_by_nothing() -> None:
    met = targets(results(None, 2.9))
    assert met["stack_cpu_ms"]["low_over_saturation"] is None
    assert (met["cpu_ms"], met["low_load_cpu"]) == (None, None)
    lines = cpu_target_lines(met)
    assert lines[0].endswith("not measured") and lines[1].endswith("not measured")
    assert stack_cpu_ms({"end_to_end": {}})["saturation"] is None


def test_the_lines_and_the_summary_carry_both_figures_and_the_verdict() -> None:
    met = targets(results(2.0, 3.2))
    lines = cpu_target_lines(met)
    assert lines[0] == "target: the stack's CPU a frame at saturation <= 0.6 ms: no (2.00 ms)"
    assert lines[1] == (
        "target: the stack's CPU a frame at 25% of saturation <= 1.5 x at saturation: "
        "no (3.20 ms against 2.00: 1.60 x)"
    )
    serving = {
        "cpu_count": 2,
        "settings": {"runtime": "onnx"},
        "inprocess": {"frames_per_s": 10_000.0},
        "end_to_end": {"saturation": {"frames_per_s": 1_000.0}},
        "targets": met,
    }
    rows = [row for row in summary_rows(serving, {}) if row[0] == "target"]
    assert rows[-2][2:] == ("2.00 ms", "missed")
    assert rows[-1][2:] == ("1.60 x", "missed")


class FakeEndToEnd:
    """Records what ``warm_broker`` publishes and waits for."""

    def __init__(self) -> None:
        self.published: list[tuple[str, float, int]] = []
        self.waited: list[tuple[str, int]] = []

    def paced(self, pub: object, phase: str, rate: float, n: int) -> dict[str, float]:
        self.published.append((phase, rate, n))
        return {}

    def wait(self, phase: str, n: int, timeout_s: float) -> float:
        self.waited.append((phase, n))
        return 0.1


def test_the_warm_up_runs_in_slices_each_predicted_before_the_next_with_the_brokers_cpu() -> None:
    ticks = iter(range(100))

    def snapshot() -> CpuSnapshot:
        t = float(next(ticks))
        # the broker spends 0.3 s a second of wall time, the machine 1 s
        return CpuSnapshot(at=15 * t, groups={"kafka": {(9, 1): 4.5 * t}}, busy_s=15 * t)

    e2e = FakeEndToEnd()
    slices = warm_broker(Console(file=io.StringIO()), e2e, object(), snapshot, 20.0)  # type: ignore[arg-type]
    assert e2e.published == [("warmup0", WARM_RATE, 3000), ("warmup1", WARM_RATE, 1000)]
    assert e2e.waited == [("warmup0", 3000), ("warmup1", 1000)]
    assert [s["frames"] for s in slices] == [3000, 1000]
    assert {s["broker_cores"] for s in slices} == {0.3}
    assert {s["machine_cores"] for s in slices} == {1.0}
    assert warm_broker(Console(file=io.StringIO()), e2e, object(), snapshot, 0.0) == []  # type: ignore[arg-type]


def test_only_the_first_run_on_a_broker_warms_it_for_the_whole_warm_up() -> None:
    # bench_fetch and bench_transactions start the services again on the same broker.
    assert warm_seconds(0, 90.0) == 90.0
    assert warm_seconds(1, 90.0) == warm_seconds(5, 90.0) == 30.0
    assert warm_seconds(0, 0.0) == warm_seconds(3, 0.0) == 0.0


def test_the_warm_up_is_on_by_default_shorter_when_quick_and_never_negative() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tests.bench.bench_serving", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    usage = run("--help")
    assert usage.returncode == 0, usage.stderr
    text = " ".join(usage.stdout.split())
    assert "--warm-s WARM_S" in text and "broker warms up (90)" in text
    assert "5 s warm-up" in text
    refused = run("--warm-s", "-1")
    assert refused.returncode == 2
    assert "--warm-s at least 0" in refused.stderr
    assert "--backend {ray,local}" in text
    assert run("--backend", "remote").returncode == 2


def test_serving_starts_with_the_backend_the_run_asks_for(monkeypatch: Any) -> None:
    started: list[tuple[str, dict[str, str]]] = []

    def record(name: str, module: str, env: dict[str, str], *_: object) -> tuple[str, str]:
        started.append((name, env))
        return (name, module)

    monkeypatch.setattr(e2e, "Service", record)
    monkeypatch.setattr(e2e, "start_ingest", lambda prefix, common: ("ingest", prefix))
    fx = SimpleNamespace(ref=SimpleNamespace(model_name="m"), runtime="onnx")
    services: list[Any] = []
    for backend in ("ray", "local"):
        e2e.start_services(fx, "p.", {"A": "1"}, services, backend)  # type: ignore[arg-type]
    assert [env["STREAMLOOP_SERVING_BACKEND"] for _, env in started] == ["ray", "local"]
    assert all(env["A"] == "1" for _, env in started)
    assert len(services) == 4  # ingest and serving, each time


def test_the_cpu_table_leaves_out_rays_rows_only_when_nothing_of_ray_ran() -> None:
    def part(replica_s: float) -> dict[str, Any]:
        row = {"cpu_s": 1.0, "cores": 0.5, "ms_per_frame": 0.4}
        return {
            "wall_s": 2.0,
            **{g: row for g in ("serving", "ingest", "kafka", "stack", "machine")},
            "replica": {"cpu_s": replica_s, "cores": replica_s / 2, "ms_per_frame": 0.1},
            "ray": {"cpu_s": 0, "cores": 0.0, "ms_per_frame": 0.0},
        }

    local = "\n".join(cpu_rows({"saturation": part(0.0), "pace25": part(0.0)}))
    assert "Ray Serve replica" not in local and "Ray's other processes" not in local
    assert "serving process" in local and "**the stack**" in local
    on_ray = "\n".join(cpu_rows({"saturation": part(0.8), "pace25": part(0.0)}))
    assert "Ray Serve replica" in on_ray and "Ray's other processes" not in on_ray
