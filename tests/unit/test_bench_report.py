from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.bench.lib.report import FiguresError, summary, summary_rows

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


def test_figures_older_than_the_run_are_refused(tmp_path: Path) -> None:
    (tmp_path / "serving.json").write_text(json.dumps(SERVING))
    (tmp_path / "profile.json").write_text(json.dumps(PROFILE))
    out = tmp_path / "report.md"
    text = summary(tmp_path, None, out)
    assert "| throughput | (a) in process, onnx: the ceiling | 10,000 frames/s |" in text
    assert out.read_text() == text
    old = time.time() - 3600
    os.utime(tmp_path / "profile.json", (old, old))
    with pytest.raises(FiguresError, match="older than this run"):
        summary(tmp_path, time.time() - 60, out)


def test_a_missing_figure_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "serving.json").write_text(json.dumps(SERVING))
    with pytest.raises(FiguresError, match=r"profile\.json is missing"):
        summary(tmp_path, None, tmp_path / "report.md")
