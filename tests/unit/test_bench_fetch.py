"""The fetch-size benchmark's bookkeeping: the settings of each size, the figures it takes
from a run of the frame path, each size's median and the table (the runs themselves need
the whole stack)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from shared.settings import FetchSettings
from tests.bench.lib.fetch import (
    KIB,
    env_of,
    figures,
    median_of,
    paced_rates,
    parse_sizes,
    round_order,
    table,
)


def run_of(sat_ms: float, paced: list[tuple[float, float, float]]) -> dict[str, Any]:
    """What ``bench_end_to_end`` leaves: ``paced`` as (rate, the stack's ms a frame, p99)."""
    cpu: dict[str, Any] = {
        "saturation": {"stack": {"ms_per_frame": sat_ms}, "machine": {"ms_per_frame": 2 * sat_ms}}
    }
    streams = []
    for rate, stack_ms, p99 in paced:
        phase = f"pace{round(rate)}"
        cpu[phase] = {"stack": {"ms_per_frame": stack_ms}, "machine": {"ms_per_frame": 9.0}}
        streams.append(
            {
                "phase": phase,
                "rate_per_s": rate,
                "mean_batch": 12.0,
                "record": {"p50_ms": p99 / 2, "p99_ms": p99},
            }
        )
    return {"saturation": {"frames_per_s": 1300.0}, "cpu": cpu, "paced": streams}


def test_each_size_sets_both_frame_path_services_in_bytes() -> None:
    assert env_of(256) == {
        "STREAMLOOP_INGEST_FETCH__MIN_BYTES": "262144",
        "STREAMLOOP_SERVING_FETCH__MIN_BYTES": "262144",
    }
    # What the services read back from that variable is the size asked for.
    assert FetchSettings(min_bytes=int(env_of(512)["STREAMLOOP_SERVING_FETCH__MIN_BYTES"])) == (
        FetchSettings(min_bytes=512 * KIB)
    )


def test_each_round_starts_one_size_later() -> None:
    sizes = [128, 256, 512]
    rounds = [round_order(sizes, k) for k in range(4)]
    assert rounds == [[128, 256, 512], [256, 512, 128], [512, 128, 256], [128, 256, 512]]
    assert [r[0] for r in rounds[:3]] == sizes


def test_a_run_gives_the_stacks_cpu_and_the_latency_at_each_rate() -> None:
    out = run_of(1.5, [(330.0, 3.0, 120.0), (660.0, 2.1, 150.0)])
    got = figures(out)
    assert got["sat_stack_ms"] == 1.5 and got["sat_machine_ms"] == 3.0
    assert [p["stack_ms"] for p in got["paced"]] == [3.0, 2.1]
    assert [p["p99_ms"] for p in got["paced"]] == [120.0, 150.0]
    # The lowest rate's CPU a frame over saturation's: the stack's, not the machine's.
    assert got["low_over_sat"] == 2.0
    assert paced_rates(out) == (330.0, 660.0)


def test_a_run_that_failed_early_gives_nothing_rather_than_a_figure() -> None:
    got = figures({"error": "no saturation rate"})
    assert got["frames_per_s"] is None and got["paced"] == [] and got["low_over_sat"] is None
    assert paced_rates({"error": "x"}) == ()


def test_a_size_is_the_median_of_its_runs_and_a_failed_run_adds_nothing() -> None:
    runs = [
        figures(run_of(1.4, [(330.0, 2.8, 100.0)])),
        figures(run_of(1.6, [(330.0, 3.4, 300.0)])),
        figures(run_of(1.5, [(330.0, 3.0, 130.0)])),
        figures({"error": "x"}),
    ]
    row = median_of(runs)
    assert row["runs"] == 3
    assert row["sat_stack_ms"] == 1.5
    assert row["paced"][0]["stack_ms"] == 3.0 and row["paced"][0]["p99_ms"] == 130.0
    assert row["low_over_sat"] == 2.0


def test_the_table_has_a_row_per_size_the_default_in_bold_with_every_rate() -> None:
    summary = {
        128: median_of([figures(run_of(1.5, [(330.0, 3.2, 90.0), (660.0, 2.4, 200.0)]))]),
        256: median_of([figures(run_of(1.5, [(330.0, 2.7, 120.0), (660.0, 2.1, 150.0)]))]),
    }
    lines = table(summary, default_kib=256)
    assert len(lines) == 4
    assert "CPU ms a frame at 330/s" in lines[0] and "p50 / p99 at 660/s" in lines[0]
    assert lines[2].startswith("| 128 KiB |") and lines[3].startswith("| **256 KiB** |")
    assert "| 2.70 | 2.10 | 1.50 | 1.80 x | 60 / 120 ms | 75 / 150 ms | 1,300 |" in lines[3]


def test_a_size_whose_runs_stopped_before_a_rate_keeps_the_columns() -> None:
    summary = {
        128: median_of([figures(run_of(1.5, [(330.0, 3.2, 90.0)]))]),
        256: median_of([figures(run_of(1.5, [(330.0, 2.7, 120.0), (660.0, 2.1, 150.0)]))]),
    }
    head, _, short, full = table(summary, default_kib=256)
    assert "p50 / p99 at 660/s" in head
    assert len(re.findall(r" \| ", short)) == len(re.findall(r" \| ", full))
    assert "| 3.20 | — | 1.50 | 2.13 x | 45 / 90 ms | — | 1,300 |" in short


def test_the_sizes_are_whole_different_kib() -> None:
    assert parse_sizes("128, 256,512") == [128, 256, 512]
    for bad, says in (("128,x", "whole KiB"), ("0,256", "at least 1"), ("256,256", "different")):
        with pytest.raises(ValueError, match=says):
            parse_sizes(bad)


def test_bad_sizes_are_refused_before_anything_starts() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tests.bench.bench_fetch", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert "--sizes" in run("--help").stdout
    refused = run("--sizes", "256,256")
    assert refused.returncode == 2 and "--sizes needs" in refused.stderr


def test_a_run_that_fails_keeps_what_it_measured_and_says_why(monkeypatch: Any) -> None:
    from tests.bench.lib import e2e

    def failing(*args: Any, **settings: Any) -> None:
        out = args[5]
        out["saturation"] = {"frames_per_s": 900.0}
        assert settings["env"] == env_of(128)
        raise RuntimeError("serving did not start")

    monkeypatch.setattr(e2e, "bench_end_to_end", failing)
    text = io.StringIO()
    args = (object(), Path("r"), Path("w"), object())
    out = e2e.measured_run(Console(file=text), "round 1: 128 KiB", *args, env=env_of(128))  # type: ignore[arg-type]
    assert out["saturation"] == {"frames_per_s": 900.0}
    assert out["error"] == "RuntimeError: serving did not start"
    assert "round 1: 128 KiB" in text.getvalue() and "serving did not start" in text.getvalue()
