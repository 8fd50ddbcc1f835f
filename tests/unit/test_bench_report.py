from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.bench.lib.architectures import HALF, headline
from tests.bench.lib.report import (
    FiguresError,
    architecture_table,
    ratios_to,
    summary,
    summary_rows,
)

SERVING = {
    "started_at": "2026-01-01T00:00:00+00:00",
    "cpu_count": 2,
    "settings": {"runtime": "onnx", "sample_ratio": 1.0},
    "inprocess": {"frames_per_s": 10_000.0},
    "inprocess_eager": {"frames_per_s": 2_500.0},
    "ray": {"sequential": {"frames_per_s": 5_000.0}, "two_in_flight": {"frames_per_s": 6_000.0}},
    "end_to_end": {
        "saturation": {"frames_per_s": 1_000.0},
        "paced": [{"load": 0.5, "rate_per_s": 500.0, "frames": 9_000, "record": {"p99_ms": 120.0}}],
        "cpu": {"saturation": {"ingest": {"ms_per_frame": 0.4, "cores": 0.4}}},
    },
    "memory": {"c:serving": {"peak_rss_mib": 800.0}},
    "ratios": {"c_over_a": 0.1},
    "targets": {"ratio": False, "p99": False, "c_over_a_min": 0.75, "p99_ms_max": 100.0},
}
PROFILE = {
    "frames": 1000,
    "total_us_per_frame": 1000.0,
    "table": [{"stage": "MODEL: onnx", "side": "serving", "cpu_us_per_frame": 150.0}],
}
ARCHITECTURES = {
    "started_at": "2026-01-01T00:10:00+00:00",
    "settings": {"input": "64x64", "runtime": "onnx"},
    "baseline": "streamloop-cnn-v1",
    "architectures": [
        {
            "architecture": "resnet18",
            "figures": {
                "inprocess_frames_per_s": 1_000.0,
                "e2e_frames_per_s": None,
                "train_s_per_1000": 60.0,
                "export_bytes": 45 * 2**20,
            },
            "end_to_end_error": "BenchError: serving did not start",
        },
        {
            "architecture": "streamloop-cnn-v1",
            "figures": {
                "inprocess_frames_per_s": 4_000.0,
                "e2e_frames_per_s": 400.0,
                "train_s_per_1000": 5.0,
                "export_bytes": 175 * 1024,
            },
        },
    ],
}


def test_the_table_gives_every_rate_as_a_share_of_the_ceiling_and_each_stage_of_the_path() -> None:
    rows = {(r[0], r[1]): r[2:] for r in summary_rows(SERVING, PROFILE)}
    assert rows[("throughput", "(c) full path, frames.raw to predictions")] == (
        "1,000 frames/s",
        "0.10 of (a)",
    )
    assert rows[("throughput", "(b) Ray Serve deployment alone")][1] == "0.50 of (a)"
    assert rows[("CPU per frame: serving", "MODEL: onnx")] == ("150.0 µs", "15.0% of the path")
    latency = rows[("latency, publish to prediction record", "50% of (c), 500 frames/s offered")]
    assert "p99 120.0 ms" in latency[0]
    assert rows[("target", "p99 at 50% of (c) at most 100 ms")] == ("120.0 ms", "missed")
    assert rows[("peak memory", "serving ingress")] == ("800 MiB RSS", "")


def test_the_floor_from_the_profile_is_a_row_of_its_own_when_measured() -> None:
    floor = "the floor: the model, the image decode and the broker (stages above)"
    rows = {
        (r[0], r[1]): r[2:] for r in summary_rows(SERVING, {**PROFILE, "floor_us_per_frame": 400})
    }
    assert rows[("CPU per frame", floor)] == ("400.0 µs", "")
    assert ("CPU per frame", floor) not in {(r[0], r[1]) for r in summary_rows(SERVING, PROFILE)}


def test_each_architecture_is_a_row_with_its_ratios_to_the_baseline_of_the_run() -> None:
    lines = architecture_table(ARCHITECTURES)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {
        cells[0]: dict(zip(header, cells, strict=True))
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
    }
    resnet = rows["resnet18 (a part failed)"]
    assert resnet["in process frames/s"] == "1,000 (0.25)"
    assert resnet["training s per 1,000 examples per epoch"] == "60.00 (12.00)"
    assert resnet["export for the runtime"] == "45.0 MiB (263.31)"
    assert resnet["end to end frames/s"] == "n/a"
    cnn = rows["streamloop-cnn-v1"]
    assert cnn["in process frames/s"] == "4,000 (1.00)"
    assert cnn["replica peak RSS MiB"] == "n/a"


def test_a_ratio_needs_both_figures_and_a_baseline_that_is_not_zero() -> None:
    assert ratios_to({"a": 2.0, "b": 0.0, "c": None}, {"a": 1.0, "b": 3.0, "c": 1.0, "d": 1.0}) == {
        "a": 0.5,
        "b": None,
        "c": None,
        "d": None,
    }


def test_the_headline_is_taken_per_1000_examples_and_at_half_of_the_saturation_rate() -> None:
    entry = {
        "model_cost": {"parameters": 11_000_000, "flops_per_image": 150_000_000},
        "model": {"epoch_s": 6.0, "train_examples": 400, "export": {"bytes": 1000}},
        "inprocess": {"frames_per_s": 900.0},
        "end_to_end": {
            "saturation": {"frames_per_s": 300.0},
            "paced": [
                {"load": 0.9, "record": {"p99_ms": 900.0}},
                {"load": HALF, "record": {"p99_ms": 120.0}},
            ],
        },
        "replica": {"peak_rss_mib": 800.0, "pss_mib": 500.0},
    }
    figures = headline(entry)
    assert figures["train_s_per_1000"] == pytest.approx(15.0)
    assert figures["p99_ms_at_half"] == 120.0
    assert figures["parameters_m"] == pytest.approx(11.0)
    assert figures["export_bytes"] == 1000
    assert headline({"error": "failed"})["inprocess_frames_per_s"] is None


def test_figures_older_than_the_run_are_refused(tmp_path: Path) -> None:
    (tmp_path / "serving.json").write_text(json.dumps(SERVING))
    (tmp_path / "profile.json").write_text(json.dumps(PROFILE))
    (tmp_path / "architectures.json").write_text(json.dumps(ARCHITECTURES))
    out = tmp_path / "report.md"
    text = summary(tmp_path, None, out)
    assert "| throughput | (a) in process, onnx: the ceiling | 10,000 frames/s |" in text
    assert "| streamloop-cnn-v1 | n/a | n/a | 4,000 (1.00) |" in text
    assert out.read_text() == text
    old = time.time() - 3600
    os.utime(tmp_path / "profile.json", (old, old))
    with pytest.raises(FiguresError, match="older than this run"):
        summary(tmp_path, time.time() - 60, out)


def test_a_missing_figure_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "serving.json").write_text(json.dumps(SERVING))
    with pytest.raises(FiguresError, match=r"profile\.json is missing"):
        summary(tmp_path, None, tmp_path / "report.md")
    (tmp_path / "profile.json").write_text(json.dumps(PROFILE))
    with pytest.raises(FiguresError, match=r"architectures\.json is missing"):
        summary(tmp_path, None, tmp_path / "report.md")
