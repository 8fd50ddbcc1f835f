"""Measurement: timed calls, rates, percentiles, and the saturation rate and latencies of a
run's predictions. Times are in seconds (``*_s``) unless a name says ms or µs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.events import Prediction

PredictionSeen = tuple[Prediction, int, float]
"""A prediction, its record's Kafka timestamp (ms since the epoch) and when this process
received it (seconds since the epoch)."""


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), 0.0 for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else 0.0


MIDDLE = 0.8
"""The share of a burst's frames a rate is taken over (``middle_rate``)."""


def middle_rate(stamps: Sequence[float], share: float = MIDDLE) -> float | None:
    """Events per second over the middle ``share`` of ``stamps`` (seconds): the first and last
    ``(1 - share) / 2`` are left out, where a run warms up and drains. None when that middle
    spans no time."""
    ordered = sorted(stamps)
    if len(ordered) < 2:
        return None
    n = len(ordered)
    # The epsilon keeps 0.1 * n whole where (1 - 0.8) / 2 falls just short of 0.1.
    lo = int(n * (1.0 - share) / 2 + 1e-9)
    hi = min(n - 1, int(n * (1.0 + share) / 2 + 1e-9))
    span = ordered[hi] - ordered[lo]
    return (hi - lo) / span if span > 0 else None


def batches_of(pixels: npt.NDArray[np.uint8], batch: int) -> list[npt.NDArray[np.uint8]]:
    """Consecutive whole ``batch``-frame slices of ``pixels`` (the remainder is dropped)."""
    return [
        np.ascontiguousarray(pixels[i : i + batch])
        for i in range(0, len(pixels) - batch + 1, batch)
    ]


def timed_calls(
    call: Callable[[npt.NDArray[np.uint8]], object],
    batches: list[npt.NDArray[np.uint8]],
    seconds: float,
    warmup: int = 3,
) -> dict[str, Any]:
    """Calls ``call`` one batch after the other for ``seconds`` (at least 10 calls)."""
    for i in range(warmup):
        call(batches[i % len(batches)])
    times: list[float] = []
    frames = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 10:
        b = batches[len(times) % len(batches)]
        t = time.perf_counter()
        call(b)
        times.append(time.perf_counter() - t)
        frames += len(b)
    total = time.perf_counter() - start
    return {
        "calls": len(times),
        "frames": frames,
        "seconds": round(total, 3),
        "frames_per_s": round(frames / total, 1),
        "batch_ms_median": round(statistics.median(times) * 1e3, 2),
        "batch_ms_p95": round(percentile(times, 95) * 1e3, 2),
    }


def frames_per_s(
    predict: Callable[[npt.NDArray[np.uint8]], object],
    pixels: npt.NDArray[np.uint8],
    batch: int,
    seconds: float,
) -> float:
    """Frames per second of ``predict`` on consecutive ``batch``-frame slices for ``seconds``."""
    slices = batches_of(pixels, batch)
    frames, calls = 0, 0
    start = time.perf_counter()
    while True:
        predict(slices[calls % len(slices)])
        frames += batch
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return frames / elapsed


@dataclass(frozen=True)
class Phase:
    """One timed phase: ``messages`` records of ``payload_bytes`` in total in ``seconds``."""

    seconds: float
    messages: int
    payload_bytes: int

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.payload_bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def then(self, other: Phase) -> Phase:
        """The two phases back to back (end-to-end: the same records produced, then consumed)."""
        return Phase(self.seconds + other.seconds, self.messages, self.payload_bytes)

    def as_dict(self) -> dict[str, float]:
        return {
            "seconds": round(self.seconds, 4),
            "messages": self.messages,
            "payload_bytes": self.payload_bytes,
            "msgs_per_s": round(self.msgs_per_s, 1),
            "mb_per_s": round(self.mb_per_s, 3),
        }


def median_phase(phases: list[Phase]) -> Phase:
    """The phase of median duration (the upper one of an even count)."""
    return sorted(phases, key=lambda p: p.seconds)[len(phases) // 2]


# --- predictions --------------------------------------------------------------------------


def saturation(preds: list[PredictionSeen]) -> dict[str, Any]:
    """Rate from the first to the last model call's ``served_at``, not counting the frames of
    the first call (they were served at the start of the interval)."""
    served = sorted(p.served_at.timestamp() for p, _, _ in preds)
    first, last = served[0], served[-1]
    after_first = sum(1 for s in served if s > first)
    calls = len(set(served))
    ingested = [p.served_at.timestamp() - p.latency_from_ingest_ms / 1e3 for p, _, _ in preds]
    stamps = sorted(ts for _, ts, _ in preds)
    span = last - first
    ingest_span = max(ingested) - min(ingested)
    return {
        "predictions": len(preds),
        "model_calls": calls,
        "mean_batch": round(len(preds) / calls, 1),
        "served_span_s": round(span, 3),
        "frames_per_s": round(after_first / span, 1) if span > 0 else None,
        "middle_frames_per_s": _round(middle_rate(served)),
        "record_span_s": round((stamps[-1] - stamps[0]) / 1e3, 3),
        "record_frames_per_s": (
            round((len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e3), 1)
            if stamps[-1] > stamps[0]
            else None
        ),
        "ingest_frames_per_s": round(len(preds) / ingest_span, 1) if ingest_span > 0 else None,
    }


def _round(rate: float | None) -> float | None:
    return None if rate is None else round(rate, 1)


def latencies(preds: list[PredictionSeen]) -> dict[str, Any]:
    """p50, p95, p99 and max in ms from each frame's ``captured_at`` to: its ingest, its
    ``served_at``, its prediction record's Kafka timestamp, its receipt here."""
    stages: dict[str, list[float]] = {"ingested": [], "served": [], "record": [], "received": []}
    for p, ts, recv in preds:
        captured = p.captured_at.timestamp()
        stages["ingested"].append(p.latency_from_capture_ms - p.latency_from_ingest_ms)
        stages["served"].append(p.latency_from_capture_ms)
        stages["record"].append(ts - captured * 1e3)
        stages["received"].append((recv - captured) * 1e3)
    served = [p.served_at for p, _, _ in preds]
    return {
        "frames": len(preds),
        "mean_batch": round(len(preds) / max(1, len(set(served))), 1),
        **{
            name: {
                "p50_ms": round(percentile(v, 50), 1),
                "p95_ms": round(percentile(v, 95), 1),
                "p99_ms": round(percentile(v, 99), 1),
                "max_ms": round(max(v), 1),
            }
            for name, v in stages.items()
        },
    }
