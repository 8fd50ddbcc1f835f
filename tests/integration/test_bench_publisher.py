"""``python -m tests.bench.bench_publisher`` on the real broker, cut short."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


def test_the_publisher_benchmark_measures_both_sides_of_each_linger(tmp_path: Path) -> None:
    args = ["--quick", "--rate", "100", "--lingers", "0,20"]
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_publisher", *args],
        cwd=ROOT,
        env={**os.environ, "STREAMLOOP_VAR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| 20 | 2 | " in done.stdout
    doc = json.loads((tmp_path / "bench" / "publisher.json").read_text())
    assert doc["order"] == [0, 20, 20, 0]
    assert [r["linger_ms"] for r in doc["rows"]] == [0, 20]
    for run in doc["runs"]:
        assert run["frames"] == 200
        assert 80 < run["frames_per_s"] <= 101
        assert run["broker_cores"] > 0 and run["publisher_cores"] > 0
