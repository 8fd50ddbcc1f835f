"""The fetch-size benchmark's bookkeeping (``tests.bench.bench_fetch``): the settings of each
size, the figures it takes from one run of the frame path, the median of each size's runs
and their table."""

from __future__ import annotations

import statistics
from typing import Any

from tests.bench.lib.report import fmt_num

KIB = 1024
LEVELS = (0.25, 0.5)
"""The paced rates, as shares of the first run's saturation rate; every size is paced at the
same rates, so that its CPU and latency compare at one load."""


def parse_sizes(text: str) -> list[int]:
    """``--sizes``: different whole KiB of at least 1, comma-separated. Raises ValueError
    saying what is wrong."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(
            "--sizes is a comma-separated list of whole KiB, e.g. 128,256,512"
        ) from None
    if not sizes or min(sizes) < 1 or len(set(sizes)) < len(sizes):
        raise ValueError("--sizes needs one or more different sizes of at least 1 KiB")
    return sizes


def round_order(sizes: list[int], round_k: int) -> list[int]:
    """The sizes of round ``round_k``: each round starts one size later, so that no size
    always runs first on the broker."""
    k = round_k % len(sizes)
    return sizes[k:] + sizes[:k]


def env_of(kib: int) -> dict[str, str]:
    """Both frame-path services fetch at least ``kib`` KiB."""
    value = str(kib * KIB)
    return {
        "STREAMLOOP_INGEST_FETCH__MIN_BYTES": value,
        "STREAMLOOP_SERVING_FETCH__MIN_BYTES": value,
    }


def paced_rates(out: dict[str, Any]) -> tuple[float, ...]:
    """The rates (frames/s) a run paced its streams at, in order."""
    return tuple(float(p["rate_per_s"]) for p in out.get("paced", []))


def figures(out: dict[str, Any]) -> dict[str, Any]:
    """One run's figures: at saturation and at each paced rate, the stack's CPU ms a frame
    (Kafka, Redis, ingest, serving and its Ray) and the whole machine's; p50 and p99 from
    capture to the prediction record at each rate; and the stack's CPU a frame at the lowest
    rate over its CPU a frame at saturation. None where the run did not get that far."""
    cpu = out.get("cpu") or {}

    def ms(phase: str, group: str) -> float | None:
        part = (cpu.get(phase) or {}).get(group) or {}
        return part.get("ms_per_frame")

    sat = out.get("saturation") or {}
    paced = []
    for p in out.get("paced", []):
        record = p.get("record") or {}
        paced.append(
            {
                "rate_per_s": p.get("rate_per_s"),
                "stack_ms": ms(p["phase"], "stack"),
                "machine_ms": ms(p["phase"], "machine"),
                "mean_batch": p.get("mean_batch"),
                "p50_ms": record.get("p50_ms"),
                "p99_ms": record.get("p99_ms"),
            }
        )
    sat_stack = ms("saturation", "stack")
    low = paced[0]["stack_ms"] if paced else None
    return {
        "frames_per_s": sat.get("frames_per_s"),
        "sat_stack_ms": sat_stack,
        "sat_machine_ms": ms("saturation", "machine"),
        "paced": paced,
        "low_over_sat": round(low / sat_stack, 2) if low and sat_stack else None,
    }


def _median(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return round(statistics.median(numbers), 2) if numbers else None


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over one size's runs (a run that failed adds nothing); the
    median rather than the best, since a lower CPU and a lower latency are not the same
    run's and a size's runs are few."""
    keys = ("frames_per_s", "sat_stack_ms", "sat_machine_ms", "low_over_sat")
    row: dict[str, Any] = {k: _median([r.get(k) for r in runs]) for k in keys}
    row["runs"] = sum(1 for r in runs if r.get("frames_per_s") is not None)
    levels = max((len(r.get("paced", [])) for r in runs), default=0)
    row["paced"] = [
        {
            k: _median([r["paced"][i].get(k) for r in runs if len(r.get("paced", [])) > i])
            for k in ("rate_per_s", "stack_ms", "machine_ms", "mean_batch", "p50_ms", "p99_ms")
        }
        for i in range(levels)
    ]
    return row


def _cell(value: float | None, digits: int, unit: str = "") -> str:
    return fmt_num(value, digits) + ("" if value is None else unit)


def table(summary: dict[int, dict[str, Any]], default_kib: int) -> list[str]:
    """A Markdown table, one row per size (the default in bold): the stack's CPU ms a frame
    at each paced rate and at saturation, the lowest rate's over saturation's, p50 and p99
    at each rate, the saturation rate. A size whose runs stopped before a rate has an empty
    cell there."""
    rates: list[dict[str, Any]] = max((r["paced"] for r in summary.values()), key=len, default=[])
    at = [f"{p['rate_per_s']:,.0f}/s" for p in rates]
    head = (
        ["min bytes", "runs"]
        + [f"CPU ms a frame at {a}" for a in at]
        + ["at saturation", "lowest rate / saturation"]
        + [f"p50 / p99 at {a}" for a in at]
        + ["saturation frames/s"]
    )
    lines = ["| " + " | ".join(head) + " |", "|:---|" + "---:|" * (len(head) - 1)]
    for kib, row in summary.items():
        name = f"**{kib} KiB**" if kib == default_kib else f"{kib} KiB"
        paced = row["paced"] + [{}] * (len(rates) - len(row["paced"]))
        cells = [name, str(row["runs"])]
        cells += [_cell(p.get("stack_ms"), 2) for p in paced]
        cells += [_cell(row["sat_stack_ms"], 2), _cell(row["low_over_sat"], 2, " x")]
        cells += [
            f"{_cell(p.get('p50_ms'), 0)} / {_cell(p.get('p99_ms'), 0)} ms" if p else _cell(None, 0)
            for p in paced
        ]
        cells.append(_cell(row["frames_per_s"], 0))
        lines.append("| " + " | ".join(cells) + " |")
    return lines
