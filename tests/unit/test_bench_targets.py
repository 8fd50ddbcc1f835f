"""The CPU targets of ``bench_serving``: the stack's CPU a frame at saturation and at a
quarter of it, as printed and as the ``make bench`` summary shows them (no broker)."""

from __future__ import annotations

from typing import Any

from tests.bench.lib.report import summary_rows
from tests.bench.lib.serving import cpu_target_lines, stack_cpu_ms, targets


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
