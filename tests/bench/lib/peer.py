"""Part (d) of ``bench_serving``: the peer. The frame path a user would write by hand in one
process with Quix Streams (``infra/peer/quix_peer.py``, in its own environment
``var/envs/quix``, ``make peer-env``), fed the same PNG frames on the same broker and running
the same ONNX export as (c), one frame per call. Both sides are rated the same way: by the
time each frame was served (their own clocks, not the records' timestamps: the peer's output
records carry its input's), over the middle 80 % of a burst (``measure.middle_rate``)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console

from shared.artifacts import ArtifactStore
from shared.runtimes import load_runtime
from shared.sdk import FramePublisher
from shared.settings import KafkaSettings
from shared.topics import TOPICS, Topics, provision
from tests.bench.lib.control import REPO, BenchError, Service, delete_topics
from tests.bench.lib.e2e import EndToEnd, PredictionReader
from tests.bench.lib.fixtures import Fixture
from tests.bench.lib.measure import MIDDLE, middle_rate
from tests.bench.lib.procs import cpu_between, cpu_snapshot
from tests.bench.lib.serving import BATCH

ENV = REPO / "var" / "envs" / "quix"
SCRIPT = REPO / "infra" / "peer" / "quix_peer.py"
READY = "peer ready"


def peer_python() -> Path | None:
    """The peer environment's interpreter; None until ``make peer-env`` made it."""
    python = ENV / "bin" / "python"
    return python if python.exists() else None


def phase_records(reader: PredictionReader, phase: str) -> list[tuple[int, dict[str, Any]]]:
    """The peer's predictions of ``phase``: (the frame's number in the phase, the JSON)."""
    head = f"{reader.prefix}{phase}-"
    return [
        (int(fid[len(head) :]), json.loads(value))
        for fid, (value, _, _) in list(reader.records.items())
        if fid.startswith(head)
    ]


def served_times(reader: PredictionReader, phase: str) -> list[float]:
    """When the peer served each frame of ``phase`` (its ``served_at``, epoch seconds)."""
    return [float(p["served_at"]) for _, p in phase_records(reader, phase)]


def agreement(reader: PredictionReader, phase: str, expected: list[str]) -> float:
    """The share of ``phase``'s frames the peer gave the class ``expected`` holds for their
    frame of the pool (frame ``i`` is the pool's frame ``i % len(expected)``)."""
    got = phase_records(reader, phase)
    same = sum(p["predicted_class"] == expected[i % len(expected)] for i, p in got)
    return same / len(got) if got else 0.0


def bench_peer(
    console: Console, fx: Fixture, root: Path, work: Path, out: dict[str, Any], *, frames: int
) -> None:
    """Warm the peer up, then one burst of ``frames``; fills ``out`` (its rate over the middle
    of the burst, the CPU of its process and of the broker). Raises BenchError when the peer
    environment is missing or the fixture has no ONNX export."""
    python = peer_python()
    if python is None:
        raise BenchError(f"no peer environment at {ENV}: run 'make peer-env'")
    if fx.export.get("format") != "onnx":
        raise BenchError(f"the peer runs the ONNX export; this run measures {fx.runtime}")
    onnx = ArtifactStore(root).read_verified(fx.export["uri"], fx.export["sha256"])
    model = work / "peer.onnx"
    model.write_bytes(onnx)
    # The classes serving's runtime gives the pool's frames: the peer must give the same.
    probs = load_runtime("onnx", onnx, threads=1).predict_proba(fx.pixels)
    expected = [fx.spec.classes[k] for k in probs.argmax(axis=1)]
    prefix = f"peer{uuid.uuid4().hex[:10]}."
    kafka = KafkaSettings(topic_prefix=prefix)
    names = (Topics.FRAMES_RAW, Topics.PREDICTIONS)
    provision(kafka, [TOPICS[n] for n in names], name_prefix=prefix, timeout_s=30)
    console.print(f"(d) the Quix Streams peer on topics {prefix}*: one process, one frame a call")
    peer: Service | None = None
    reader: PredictionReader | None = None
    try:
        command = [
            str(python),
            str(SCRIPT),
            "--broker",
            KafkaSettings().bootstrap_servers,
            "--frames",
            prefix + Topics.FRAMES_RAW,
            "--predictions",
            prefix + Topics.PREDICTIONS,
            "--model",
            str(model),
            "--classes",
            ",".join(fx.spec.classes),
            "--group",
            f"{prefix}peer",
        ]
        peer = Service("peer", "", {}, (READY,), command=command)
        peer.wait_for(READY, 60, "the peer started")
        reader = PredictionReader(prefix + Topics.PREDICTIONS, prefix)
        reader.start()
        e2e = EndToEnd(prefix, kafka, fx, reader, [peer])
        with FramePublisher(kafka, source="bench", content_type="image/png") as pub:
            warm = 2 * BATCH
            e2e.burst(pub, "warm", warm)
            waited = e2e.wait("warm", warm, 180)
            console.print(f"  warm-up: {warm} frames predicted after {waited:.1f} s")
            before = cpu_snapshot(peer.p.pid, -1)
            published_s = e2e.burst(pub, "sat", frames)
            e2e.wait("sat", frames, max(90.0, frames / 20))
            after = cpu_snapshot(peer.p.pid, -1)
        rate = middle_rate(served_times(reader, "sat"))
        cpu = cpu_between(before, after, frames)
        same = agreement(reader, "sat", expected)
        if same < 0.99:
            raise BenchError(f"the peer agrees with serving's runtime on {same:.1%} of frames")
        out.update(
            same_class=round(same, 4),
            frames=frames,
            published_in_s=round(published_s, 2),
            middle_frames_per_s=None if rate is None else round(rate, 1),
            middle_share=MIDDLE,
            cpu={"peer": cpu["serving"], "kafka": cpu["kafka"], "machine": cpu["machine"]},
        )
        console.print(
            f"  peer: {rate or 0:,.0f} frames/s over the middle {MIDDLE:.0%} of {frames:,} "
            f"frames; {cpu['serving']['ms_per_frame']} CPU ms a frame in its process; the "
            f"same class as serving's runtime on {same:.1%} of them"
        )
    finally:
        if reader is not None:
            reader.stop()
        if peer is not None:
            console.print(f"  peer: {peer.stop(20)}")
        deleted = delete_topics([prefix + n for n in names], console.print, only_existing=True)
        if deleted is not None:
            console.print(f"  deleted {deleted} topics {prefix}*")


def peer_ratio(results: dict[str, Any]) -> float | None:
    """StreamLoop's end-to-end rate over the peer's, both over the middle of their burst."""
    ours = results.get("end_to_end", {}).get("saturation", {}).get("middle_frames_per_s")
    theirs = results.get("peer", {}).get("middle_frames_per_s")
    return round(ours / theirs, 3) if ours and theirs else None
