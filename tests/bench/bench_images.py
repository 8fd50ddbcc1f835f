"""Benchmark: what fitting a camera frame to the model's input costs, against decoding it.

    python -m tests.bench.bench_images [--repeat N] [--quick]

One 1920x1080 JPEG (a smooth scene with texture, quality 90: it compresses like a
photograph). For each input size (64x64, the built-in CNN's; 128x128; 224x224, the
torchvision models'), per frame, median of ``--repeat`` calls on one core:

- decode: the whole JPEG decoded at full size (libjpeg-turbo, as ingest decodes), nothing else;
- fit: the letterbox of the fully decoded pixels to the input size (``shared.fitting``);
- ingest's path: ``read_image`` with the letterbox policy, as ingest calls it: the JPEG is
  decoded at a reduced DCT scale where the input is much smaller, then fitted.

The ratios are to the full decode of the same run. A measurement, not a test: it always
exits 0. Figures go to ``var/bench/images.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import simplejpeg
from rich.console import Console
from rich.table import Table

from shared.fitting import fit_image
from shared.images import encode_image, read_image
from tests.bench.lib.report import write_figures
from tests.synthetic import camera_scene

SOURCE = (1920, 1080)
SIZES = ((64, 64), (128, 128), (224, 224))


def per_call_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of one call, in milliseconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(repeat: int) -> dict[str, Any]:
    data = encode_image(camera_scene(*SOURCE), "image/jpeg")
    full = simplejpeg.decode_jpeg(data, colorspace="RGB")
    decode_ms = per_call_ms(lambda: simplejpeg.decode_jpeg(data, colorspace="RGB"), repeat)
    rows = []
    for w, h in SIZES:
        fit_ms = per_call_ms(lambda w=w, h=h: fit_image(full, (w, h), "letterbox"), repeat)
        path_ms = per_call_ms(
            lambda w=w, h=h: read_image(data, size=(w, h), fit="letterbox"), repeat
        )
        rows.append(
            {
                "input": f"{w}x{h}",
                "fit_ms": fit_ms,
                "ingest_path_ms": path_ms,
                "fit_over_decode": fit_ms / decode_ms,
                "ingest_path_over_decode": path_ms / decode_ms,
            }
        )
    return {
        "source": f"{SOURCE[0]}x{SOURCE[1]} JPEG",
        "jpeg_bytes": len(data),
        "repeat": repeat,
        "decode_ms": decode_ms,
        "sizes": rows,
    }


def print_table(console: Console, doc: dict[str, Any]) -> None:
    table = Table(
        title=f"A {doc['source']} ({doc['jpeg_bytes'] / 1024:,.0f} KiB) fitted by letterbox, "
        f"per frame; full decode {doc['decode_ms']:.2f} ms",
    )
    for col in ("input", "fit of the decoded frame", "/ decode", "ingest's path", "/ decode"):
        table.add_column(col, justify="right")
    for r in doc["sizes"]:
        table.add_row(
            r["input"],
            f"{r['fit_ms']:.2f} ms",
            f"{r['fit_over_decode']:.2f}",
            f"{r['ingest_path_ms']:.2f} ms",
            f"{r['ingest_path_over_decode']:.2f}",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_images", description=__doc__)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="5 calls per figure")
    args = ap.parse_args(argv)
    console = Console()
    doc = measure(5 if args.quick else args.repeat)
    print_table(console, doc)
    console.print(f"figures: {write_figures('images', doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
