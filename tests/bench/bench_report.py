"""The one table of ``make bench``: serving's throughput, latency, CPU per stage and memory.

    python -m tests.bench.bench_report [--since EPOCH_S] [--out PATH]

Reads what ``bench_serving`` (``var/bench/serving.json``) and ``bench_profile``
(``var/bench/profile.json``) wrote and prints them as one Markdown table:

- throughput in frames/s with the ratio to the ceiling: (a) the serving core in process (the
  ceiling), (a') the same with torch eager, (b) the Ray Serve deployment alone through its
  handle, (b') with two calls in flight, (c) the full path ``frames.raw`` -> ingest ->
  ``frames.valid`` -> serving -> ``predictions``;
- latency from publish to the prediction record, p50/p95/p99, at 25, 50 and 90 % of (c);
- CPU time per frame of every stage of the path, from the profiler run, and of every process
  during (c)'s saturation burst;
- peak resident memory of each process (Ray's as PSS, so shared pages count once);
- the targets, met or not.

``--since`` (seconds since the epoch; ``make bench`` passes its start) refuses figures
written before it, so the table is always from one run. The table is also written to
``--out`` (``var/bench/report.md``). Exits 1 when a figure file is missing or stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path("var/bench")


def _load(path: Path, since: float | None) -> dict[str, Any]:
    if not path.exists():
        raise SystemExit(f"{path} is missing: run its benchmark first")
    if since is not None and path.stat().st_mtime < since:
        raise SystemExit(f"{path} is older than this run: its benchmark did not finish")
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def _num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _mib(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "—"
    pss, rss = entry.get("pss_mib"), entry.get("peak_rss_mib")
    if pss is not None:
        return f"{pss:,.0f} MiB PSS ({rss:,.0f} RSS, {entry.get('processes', '?')} processes)"
    return f"{rss:,.0f} MiB RSS"


def rows(serving: dict[str, Any], profile: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(section, measure, value, ratio or note) for the one table."""
    out: list[tuple[str, str, str, str]] = []
    ceiling = float(serving["inprocess"]["frames_per_s"])
    runtime = serving["settings"]["runtime"]
    ray = serving.get("ray", {})
    e2e = serving.get("end_to_end", {})

    def rate(label: str, fps: float | None) -> None:
        ratio = "" if fps is None else f"{fps / ceiling:.2f} of (a)"
        out.append(("throughput", label, f"{_num(fps)} frames/s", ratio))

    rate(f"(a) in process, {runtime}: the ceiling", ceiling)
    rate("(a') in process, torch eager", serving.get("inprocess_eager", {}).get("frames_per_s"))
    rate("(b) Ray Serve deployment alone", ray.get("sequential", {}).get("frames_per_s"))
    rate("(b') Ray Serve, two calls in flight", ray.get("two_in_flight", {}).get("frames_per_s"))
    rate("(c) full path, frames.raw to predictions", e2e.get("saturation", {}).get("frames_per_s"))

    for level in e2e.get("paced", []):
        rec = level.get("record", {})
        share = level.get("load")
        label = f"{share:.0%} of (c)" if isinstance(share, float) else "paced"
        out.append(
            (
                "latency, publish to prediction record",
                f"{label}, {_num(level.get('rate_per_s'))} frames/s offered",
                f"p50 {_num(rec.get('p50_ms'), 1)} / p95 {_num(rec.get('p95_ms'), 1)} / "
                f"p99 {_num(rec.get('p99_ms'), 1)} ms",
                f"{_num(level.get('frames'))} frames",
            )
        )

    total = float(profile.get("total_us_per_frame") or 0.0)
    for row in profile.get("table", []):
        us = float(row["cpu_us_per_frame"])
        share = (
            f"{us / total:.1%} of the path" if total and "not in total" not in row["stage"] else ""
        )
        out.append((f"CPU per frame: {row['side']}", row["stage"], f"{us:,.1f} µs", share))
    if total:
        out.append(("CPU per frame", "the whole path (sum of the stages)", f"{total:,.1f} µs", ""))

    saturation = e2e.get("cpu", {}).get("saturation", {})
    for name, cpu in saturation.items():
        if isinstance(cpu, dict) and cpu.get("ms_per_frame"):
            out.append(
                (
                    "CPU per frame at (c)'s saturation, by process",
                    name,
                    f"{cpu['ms_per_frame'] * 1000:,.0f} µs",
                    f"{cpu['cores']:.2f} cores",
                )
            )

    memory = serving.get("memory", {})
    for key, label in (
        ("c:ray_all", "Ray (every process of the session), end to end"),
        ("c:serving", "serving ingress"),
        ("c:ingest", "ingest"),
    ):
        out.append(("peak memory", label, _mib(memory.get(key)), ""))
    if serving.get("bench_peak_rss_mib") is not None:
        out.append(
            (
                "peak memory",
                "the benchmark process",
                _mib({"peak_rss_mib": serving["bench_peak_rss_mib"]}),
                "",
            )
        )

    targets = serving.get("targets", {})
    c_over_a = serving.get("ratios", {}).get("c_over_a")
    out.append(
        (
            "target",
            f"(c) / (a) at least {targets.get('c_over_a_min', 0.75)}",
            _num(c_over_a, 2),
            "met" if targets.get("ratio") else "missed",
        )
    )
    out.append(
        (
            "target",
            f"p99 at {targets.get('p99_load', 0.5):.0%} of (c) at most "
            f"{_num(targets.get('p99_ms_max'))} ms",
            _p99_at(e2e.get("paced", []), targets.get("p99_load", 0.5)),
            "met" if targets.get("p99") else "missed",
        )
    )
    return out


def _p99_at(paced: list[dict[str, Any]], load: float) -> str:
    for level in paced:
        if level.get("load") == load:
            rec = level.get("record", {})
            return f"{_num(rec.get('p99_ms'), 1)} ms"
    return "—"


def markdown(table: list[tuple[str, str, str, str]], header: str) -> str:
    lines = [header, "", "| section | measure | value | ratio / share |", "|:---|:---|---:|:---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in table]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--since", type=float, default=None)
    parser.add_argument("--dir", type=Path, default=BENCH_DIR)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "report.md")
    args = parser.parse_args(argv)
    try:
        serving = _load(args.dir / "serving.json", args.since)
        profile = _load(args.dir / "profile.json", args.since)
    except SystemExit as exc:
        print(f"bench_report: {exc}", file=sys.stderr)
        return 1
    header = (
        f"StreamLoop serving benchmark, {serving.get('started_at', '?')[:19]} "
        f"({serving.get('cpu_count', '?')} cores, runtime {serving['settings']['runtime']}, "
        f"trace sample ratio {serving['settings'].get('sample_ratio')}; profile of "
        f"{profile.get('frames', '?')} frames)"
    )
    text = markdown(rows(serving, profile), header)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
