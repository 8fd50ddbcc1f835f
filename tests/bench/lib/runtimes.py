"""``bench_runtimes``'s parts: each inference runtime exported, loaded and checked against
eager, its throughput on batches of each size, and its table."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.artifacts import ArtifactStore
from shared.model import ModelSpec
from shared.runtimes import (
    EXPORT_KIND,
    EXPORT_SUFFIX,
    TOLERANCE,
    ExportFormat,
    InferenceRuntime,
    compare,
    export_model,
    load_runtime,
)
from tests.bench.lib.measure import frames_per_s
from tests.bench.lib.report import fmt_rate, fmt_size

THREADS = 2
BATCHES = (1, 32, 128)
SEED = 23
WARMUP_CALLS = 5


@dataclass
class Row:
    runtime: str
    export_s: float | None = None
    load_s: float | None = None
    size_bytes: int | None = None
    images: int = 0
    same_class: bool | None = None
    max_abs_diff: float | None = None
    frames_per_s: dict[int, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def agrees(self) -> bool:
        return (
            bool(self.same_class)
            and self.max_abs_diff is not None
            and self.max_abs_diff <= TOLERANCE
        )


def export_and_load(
    row: Row,
    network: Any,
    spec: ModelSpec,
    fmt: ExportFormat,
    store: ArtifactStore,
    reference: npt.NDArray[np.float32],
    pixels: npt.NDArray[np.uint8],
) -> InferenceRuntime:
    """Export (timed), store, load from verified bytes (timed) and compare with eager's
    ``reference`` on ``pixels``, into ``row``; the loaded runtime. Raises what export or
    load raise."""
    t = time.perf_counter()
    data = export_model(network, spec, fmt)
    row.export_s = time.perf_counter() - t
    ref = store.put_bytes(data, EXPORT_KIND, EXPORT_SUFFIX[fmt])
    row.size_bytes = ref.size
    t = time.perf_counter()
    runtime = load_runtime(fmt, store.read_verified(ref.uri, ref.sha256), THREADS)
    row.load_s = time.perf_counter() - t
    agreement = compare(reference, runtime.predict_proba(pixels))
    row.images = agreement.images
    row.same_class = agreement.same_class
    row.max_abs_diff = agreement.max_abs_diff
    return runtime


def best_rates(
    runtimes: dict[str, InferenceRuntime],
    pixels: npt.NDArray[np.uint8],
    batch: int,
    rounds: int,
    seconds: float,
) -> dict[str, float]:
    """Each runtime's best frames/s of ``rounds`` rounds on ``batch``-frame slices, runtimes
    interleaved (other work only ever lowers a rate)."""
    warm = np.ascontiguousarray(pixels[:batch])
    for runtime in runtimes.values():
        for _ in range(WARMUP_CALLS):
            runtime.predict_proba(warm)
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, runtime in runtimes.items():
            fps = frames_per_s(runtime.predict_proba, pixels, batch, seconds)
            best[name] = max(best.get(name, 0.0), fps)
    return best


def table(rows: list[Row]) -> str:
    eager = rows[0].frames_per_s
    head = (
        "| runtime | agrees | max \\|Δp\\| | "
        + " | ".join(f"frames/s @{b}" for b in BATCHES)
        + " | ratio to eager @"
        + "/".join(str(b) for b in BATCHES)
        + " | export s | load s | artifact |"
    )
    lines = [head, "|:---|:---|---:|" + "---:|" * len(BATCHES) + "---:|---:|---:|---:|"]
    for r in rows:
        ratios = "/".join(
            f"{r.frames_per_s[b] / eager[b]:.2f}" if b in r.frames_per_s and b in eager else "-"
            for b in BATCHES
        )
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}"
        agrees = "reference" if r.runtime == "eager" else ("yes" if r.agrees else "**no**")
        lines.append(
            f"| {r.runtime} | {agrees} | {diff} | "
            + " | ".join(fmt_rate(r.frames_per_s.get(b), missing="failed") for b in BATCHES)
            + f" | {ratios} | "
            + ("-" if r.export_s is None else f"{r.export_s:.1f}")
            + " | "
            + ("-" if r.load_s is None else f"{r.load_s:.2f}")
            + f" | {fmt_size(r.size_bytes)} |"
        )
    return "\n".join(lines)


def runtimes_doc(rows: list[Row]) -> dict[str, Any]:
    """The figures of each runtime, with its ratio to eager (the first row)."""
    eager = rows[0].frames_per_s
    return {
        r.runtime: {
            "agrees": r.agrees,
            "images": r.images,
            "same_class": r.same_class,
            "max_abs_diff": r.max_abs_diff,
            "frames_per_s": {str(b): round(v, 1) for b, v in r.frames_per_s.items()},
            "ratio_to_eager": {
                str(b): round(v / eager[b], 3) for b, v in r.frames_per_s.items() if eager.get(b)
            },
            "export_s": None if r.export_s is None else round(r.export_s, 2),
            "load_s": None if r.load_s is None else round(r.load_s, 3),
            "artifact_bytes": r.size_bytes,
            "error": r.error,
        }
        for r in rows
    }
