"""What a camera's ``FramePublisher`` costs, itself and the broker, at a paced rate
(``tests.bench.bench_publisher``)."""

from __future__ import annotations

import os
import statistics
import time
import uuid
from typing import Any

from shared.bus import EventProducer
from shared.sdk import FramePublisher
from shared.settings import KafkaSettings
from shared.topics import TOPICS, provision
from tests.bench.lib.control import delete_topics
from tests.bench.lib.fixtures import render_pool
from tests.bench.lib.procs import cpu_s_of

CAMERAS = 8


def mirrored(settings: list[int], repeats: int) -> list[int]:
    """``settings`` then the same reversed, ``repeats`` times over: each setting runs as often
    early as late."""
    order: list[int] = []
    for i in range(repeats):
        order.extend(settings if i % 2 == 0 else reversed(settings))
    return order


def frame_png(seed: int = 0) -> bytes:
    """One rendered 64x64 frame as PNG, as the simulator's (``render_pool``)."""
    return render_pool(1, seed).png[0]


def one_run(
    kafka: KafkaSettings, broker: int, png: bytes, linger_ms: int, rate: float, seconds: float
) -> dict[str, Any]:
    """Publish at ``rate`` for ``seconds`` with ``linger_ms``; CPU of both sides a frame."""
    settings = kafka.model_copy(update={"topic_prefix": f"pub{uuid.uuid4().hex[:6]}."})
    provision(settings)
    producer = EventProducer(settings, client_id="streamloop-frame-publisher", linger_ms=linger_ms)
    try:
        with FramePublisher(settings, producer=producer, source="bench") as pub:
            for i in range(50):  # connections, metadata, first calls
                pub.publish(png, camera_id=f"cam-{i % CAMERAS}")
            pub.flush()
            n = int(rate * seconds)
            broker0, own0, t0 = cpu_s_of(broker), cpu_s_of(os.getpid()), time.monotonic()
            for i in range(n):
                wait = t0 + i / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                pub.publish(png, camera_id=f"cam-{i % CAMERAS}")
            pub.flush()
            elapsed = time.monotonic() - t0
            broker1, own1 = cpu_s_of(broker), cpu_s_of(os.getpid())
    finally:
        producer.close()
        delete_topics((settings.topic_prefix + t for t in TOPICS), print, only_existing=True)
    if broker0 is None or broker1 is None or own0 is None or own1 is None:
        raise RuntimeError(f"CPU could not be read from /proc (broker pid {broker})")
    return {
        "linger_ms": linger_ms,
        "frames": n,
        "frames_per_s": n / elapsed,
        "broker_cores": (broker1 - broker0) / elapsed,
        "broker_ms_per_frame": 1000 * (broker1 - broker0) / n,
        "publisher_cores": (own1 - own0) / elapsed,
        "publisher_ms_per_frame": 1000 * (own1 - own0) / n,
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per linger, in the order the settings first ran: the median of each figure over its runs."""
    rows = []
    for linger in dict.fromkeys(r["linger_ms"] for r in runs):
        mine = [r for r in runs if r["linger_ms"] == linger]
        row: dict[str, Any] = {"linger_ms": linger, "runs": len(mine)}
        for key in (
            "frames_per_s",
            "broker_cores",
            "broker_ms_per_frame",
            "publisher_cores",
            "publisher_ms_per_frame",
        ):
            row[key] = statistics.median(r[key] for r in mine)
        row["both_ms_per_frame"] = row["broker_ms_per_frame"] + row["publisher_ms_per_frame"]
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| linger ms | runs | frames/s | broker cores | broker CPU ms a frame "
        "| publisher cores | publisher CPU ms a frame | both, CPU ms a frame |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['linger_ms']} | {r['runs']} | {r['frames_per_s']:.0f} | {r['broker_cores']:.3f}"
            f" | {r['broker_ms_per_frame']:.2f} | {r['publisher_cores']:.3f}"
            f" | {r['publisher_ms_per_frame']:.2f} | {r['both_ms_per_frame']:.2f} |"
        )
    return "\n".join(lines)
