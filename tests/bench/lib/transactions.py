"""The transactions benchmark's bookkeeping (``tests.bench.bench_transactions``): the
settings of each mode, the figures it takes from a run, each mode's best round."""

from __future__ import annotations

from typing import Any

MODES = {"on": "true", "off": "false"}


def env_of(mode: str) -> dict[str, str]:
    flag = MODES[mode]
    return {
        "STREAMLOOP_INGEST_TRANSACTIONS__ENABLED": flag,
        "STREAMLOOP_SERVING_TRANSACTIONS__ENABLED": flag,
    }


def figures(out: dict[str, Any]) -> dict[str, float | None]:
    """Saturation frames/s and the paced stream's p50/p99 (ms) of one run."""
    paced = out.get("paced") or [{}]
    record = paced[-1].get("record", {})
    return {
        "frames_per_s": (out.get("saturation") or {}).get("frames_per_s"),
        "p50_ms": record.get("p50_ms"),
        "p99_ms": record.get("p99_ms"),
        "duplicates": out.get("duplicates"),
    }


def best(runs: list[dict[str, float | None]]) -> dict[str, float | None]:
    """The best figure of each kind over a mode's rounds (other work only slows a run)."""
    done = [r for r in runs if r["frames_per_s"] is not None]
    if not done:
        return {"frames_per_s": None, "p50_ms": None, "p99_ms": None}
    return {
        "frames_per_s": max(float(r["frames_per_s"] or 0) for r in done),
        "p50_ms": min(float(r["p50_ms"] or 0) for r in done),
        "p99_ms": min(float(r["p99_ms"] or 0) for r in done),
    }
