"""The performance regression guard: the end-to-end saturation rate's share of the model's
in-process ceiling, measured in this run, must not fall by more than 20 % from the share
committed in ``tests/perf/baseline.json``. Both rates come from one run on one machine, so
the share holds across machines where absolute rates do not.

The measurement is ``tests.bench.bench_serving``'s, cut short: the model exported for
serving's runtime; its ceiling in process (``ServingCore.probabilities``, batches of 128, 2
threads) before and after, the better of the two; then ingest and serving on Ray Serve (one
replica) as subprocesses on topics of their own, a warm-up, and ``BURSTS`` bursts of
``FRAMES`` PNG frames each published as fast as possible, rated from the first to the last
``served_at``; the fastest burst counts.
``make bench-baseline`` re-measures the baseline: the median of three such runs."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from services.serving.settings import ServingSettings
from tests.bench.lib.e2e import bench_end_to_end
from tests.bench.lib.fixtures import make_fixture
from tests.bench.lib.procs import MemorySampler
from tests.bench.lib.serving import bench_inprocess

pytestmark = [pytest.mark.perf, pytest.mark.timeout(900)]

BASELINE = Path(__file__).resolve().parent / "baseline.json"
ALLOWED_DROP = 0.20
FRAMES = 4000
BURSTS = 2
"""Bursts of ``FRAMES``, one after the other; the fastest counts (other work only slows one)."""
SECONDS = 3.0


def measure(work: Path) -> dict[str, Any]:
    """The ceiling, the end-to-end saturation rate and their ratio, from one run."""
    console = Console(file=sys.stdout, soft_wrap=True)
    runtime = ServingSettings().runtime
    root = work / "artifacts"
    fx = make_fixture(console, root, 400, f"guard-{uuid.uuid4().hex[:6]}", runtime)
    before = bench_inprocess(console, fx, root, SECONDS, "before", runtime)
    e2e: dict[str, Any] = {}
    bench_end_to_end(
        console,
        fx,
        root,
        work,
        MemorySampler(),
        e2e,
        frames=FRAMES,
        paced_s=0.0,
        sample_ratio=1.0,
        levels=(),
        bursts=BURSTS,
    )
    after = bench_inprocess(console, fx, root, SECONDS, "after", runtime)
    ceiling = max(before["frames_per_s"], after["frames_per_s"])
    rate = float(e2e["saturation"]["frames_per_s"])
    return {
        "runtime": runtime,
        "frames": FRAMES,
        "bursts": e2e.get("saturation_bursts"),
        "ceiling_frames_per_s": ceiling,
        "end_to_end_frames_per_s": rate,
        "c_over_a": round(rate / ceiling, 4),
    }


def test_end_to_end_keeps_its_share_of_the_ceiling(tmp_path: Path) -> None:
    baseline = json.loads(BASELINE.read_text())
    got = measure(tmp_path)
    floor = baseline["c_over_a"] * (1 - ALLOWED_DROP)
    print(
        f"end to end {got['end_to_end_frames_per_s']:,.0f}/s over ceiling "
        f"{got['ceiling_frames_per_s']:,.0f}/s = {got['c_over_a']:.3f}; baseline "
        f"{baseline['c_over_a']:.3f}, floor {floor:.3f}"
    )
    assert got["runtime"] == baseline["runtime"], "the baseline is for another runtime"
    assert got["c_over_a"] >= floor, (
        f"end-to-end share of the ceiling {got['c_over_a']:.3f} fell more than "
        f"{ALLOWED_DROP:.0%} below the baseline {baseline['c_over_a']:.3f}: {got}"
    )


if __name__ == "__main__":
    # Re-measure the baseline (the median of three runs) and write it.
    import statistics
    import tempfile
    from datetime import UTC, datetime

    runs = []
    for _ in range(3):
        with tempfile.TemporaryDirectory(prefix="guard-") as d:
            runs.append(measure(Path(d)))
    ratio = statistics.median(r["c_over_a"] for r in runs)
    doc = {
        "c_over_a": ratio,
        "runtime": runs[0]["runtime"],
        "frames": FRAMES,
        "runs": runs,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m tests.perf.test_ratio_guard",
    }
    BASELINE.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
