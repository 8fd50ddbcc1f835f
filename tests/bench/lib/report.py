"""Figure files and tables: where a benchmark writes its figures (``var/bench/<name>.json``),
how numbers are printed, and the tables of ``make bench`` (``bench_report``): the one table
built from the serving and profile figures, and the architectures side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.settings import default_var_dir


def bench_dir() -> Path:
    """``var/bench`` of this run (``$STREAMLOOP_VAR/bench`` when set)."""
    return default_var_dir() / "bench"


def write_figures(name: str, doc: dict[str, Any]) -> Path:
    """Write ``doc`` to ``var/bench/<name>.json``; its path."""
    path = bench_dir() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    return path


# --- numbers ------------------------------------------------------------------------------


def fmt_rate(value: Any, missing: str = "n/a") -> str:
    """A rate without decimals, ``missing`` when it is not a number."""
    return f"{value:,.0f}" if isinstance(value, int | float) else missing


def fmt_ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "n/a"


def fmt_num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def fmt_size(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "-"
    return f"{n_bytes / 1024:,.0f} KiB" if n_bytes < 2**20 else f"{n_bytes / 2**20:,.1f} MiB"


def fmt_kib(n_kib: int | None) -> str:
    """A ``/proc`` memory figure in MiB; ``not running`` for None."""
    return "not running" if n_kib is None else f"{n_kib / 1024:.0f} MiB"


def fmt_share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "n/a"


# --- the one table of ``make bench`` ------------------------------------------------------


class FiguresError(RuntimeError):
    """A figure file is missing, or older than the run."""


def load_figures(path: Path, since: float | None) -> dict[str, Any]:
    """The figures in ``path``; FiguresError when missing or written before ``since``."""
    if not path.exists():
        raise FiguresError(f"{path} is missing: run its benchmark first")
    if since is not None and path.stat().st_mtime < since:
        raise FiguresError(f"{path} is older than this run: its benchmark did not finish")
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def _memory(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "—"
    pss, rss = entry.get("pss_mib"), entry.get("peak_rss_mib")
    if pss is not None:
        return f"{pss:,.0f} MiB PSS ({rss:,.0f} RSS, {entry.get('processes', '?')} processes)"
    return f"{rss:,.0f} MiB RSS"


Row = tuple[str, str, str, str]
"""(section, measure, value, ratio or note)."""


def summary_rows(serving: dict[str, Any], profile: dict[str, Any]) -> list[Row]:
    """The rows of the one table, from ``serving.json`` and ``profile.json``."""
    return [
        *_throughput(serving),
        *_latency(serving),
        *_cpu(serving, profile),
        *_peak_memory(serving),
        *_targets(serving),
    ]


def _throughput(serving: dict[str, Any]) -> list[Row]:
    ceiling = float(serving["inprocess"]["frames_per_s"])
    runtime = serving["settings"]["runtime"]
    ray = serving.get("ray", {})
    e2e = serving.get("end_to_end", {})

    def rate(label: str, fps: float | None) -> Row:
        ratio = "" if fps is None else f"{fps / ceiling:.2f} of (a)"
        return ("throughput", label, f"{fmt_num(fps)} frames/s", ratio)

    return [
        rate(f"(a) in process, {runtime}: the ceiling", ceiling),
        rate(
            "(a') in process, torch eager", serving.get("inprocess_eager", {}).get("frames_per_s")
        ),
        rate("(b) Ray Serve deployment alone", ray.get("sequential", {}).get("frames_per_s")),
        rate(
            "(b') Ray Serve, two calls in flight", ray.get("two_in_flight", {}).get("frames_per_s")
        ),
        rate(
            "(c) full path, frames.raw to predictions",
            e2e.get("saturation", {}).get("frames_per_s"),
        ),
    ]


def _latency(serving: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for level in serving.get("end_to_end", {}).get("paced", []):
        rec = level.get("record", {})
        share = level.get("load")
        label = f"{share:.0%} of (c)" if isinstance(share, float) else "paced"
        out.append(
            (
                "latency, publish to prediction record",
                f"{label}, {fmt_num(level.get('rate_per_s'))} frames/s offered",
                f"p50 {fmt_num(rec.get('p50_ms'), 1)} / p95 {fmt_num(rec.get('p95_ms'), 1)} / "
                f"p99 {fmt_num(rec.get('p99_ms'), 1)} ms",
                f"{fmt_num(level.get('frames'))} frames",
            )
        )
    return out


def _cpu(serving: dict[str, Any], profile: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    total = float(profile.get("total_us_per_frame") or 0.0)
    for row in profile.get("table", []):
        us = float(row["cpu_us_per_frame"])
        share = (
            f"{us / total:.1%} of the path" if total and "not in total" not in row["stage"] else ""
        )
        out.append((f"CPU per frame: {row['side']}", row["stage"], f"{us:,.1f} µs", share))
    if total:
        out.append(("CPU per frame", "the whole path (sum of the stages)", f"{total:,.1f} µs", ""))
    if profile.get("floor_us_per_frame") is not None:
        out.append(
            (
                "CPU per frame",
                "the floor: the model, the image decode and the broker (stages above)",
                f"{profile['floor_us_per_frame']:,.1f} µs",
                "",
            )
        )
    saturation = serving.get("end_to_end", {}).get("cpu", {}).get("saturation", {})
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
    return out


def _peak_memory(serving: dict[str, Any]) -> list[Row]:
    memory = serving.get("memory", {})
    out: list[Row] = [
        ("peak memory", label, _memory(memory.get(key)), "")
        for key, label in (
            ("c:ray_all", "Ray (every process of the session), end to end"),
            ("c:serving", "serving ingress"),
            ("c:ingest", "ingest"),
        )
    ]
    if serving.get("bench_peak_rss_mib") is not None:
        out.append(
            (
                "peak memory",
                "the benchmark process",
                _memory({"peak_rss_mib": serving["bench_peak_rss_mib"]}),
                "",
            )
        )
    return out


def _targets(serving: dict[str, Any]) -> list[Row]:
    targets = serving.get("targets", {})
    c_over_a = serving.get("ratios", {}).get("c_over_a")
    paced = serving.get("end_to_end", {}).get("paced", [])
    return [
        (
            "target",
            f"(c) / (a) at least {targets.get('c_over_a_min', 0.75)}",
            fmt_num(c_over_a, 2),
            "met" if targets.get("ratio") else "missed",
        ),
        (
            "target",
            f"p99 at {targets.get('p99_load', 0.5):.0%} of (c) at most "
            f"{fmt_num(targets.get('p99_ms_max'))} ms",
            _p99_at(paced, targets.get("p99_load", 0.5)),
            "met" if targets.get("p99") else "missed",
        ),
        *_cpu_targets(targets),
    ]


def _cpu_targets(targets: dict[str, Any]) -> list[Row]:
    stack = targets.get("stack_cpu_ms")
    if not stack:
        return []

    def verdict(met: bool | None) -> str:
        return "not measured" if met is None else "met" if met else "missed"

    ratio = stack.get("low_over_saturation")
    return [
        (
            "target",
            f"the stack's CPU a frame at (c)'s saturation at most {targets['cpu_ms_max']} ms",
            f"{fmt_num(stack.get('saturation'), 2)} ms",
            verdict(targets.get("cpu_ms")),
        ),
        (
            "target",
            f"the stack's CPU a frame at {targets['low_load']:.0%} of (c) at most "
            f"{targets['low_over_saturation_max']} x at saturation",
            "—" if ratio is None else f"{ratio:.2f} x",
            verdict(targets.get("low_load_cpu")),
        ),
    ]


def _p99_at(paced: list[dict[str, Any]], load: float) -> str:
    for level in paced:
        if level.get("load") == load:
            rec = level.get("record", {})
            return f"{fmt_num(rec.get('p99_ms'), 1)} ms"
    return "—"


def summary_markdown(table: list[Row], header: str) -> str:
    lines = [header, "", "| section | measure | value | ratio / share |", "|:---|:---|---:|:---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in table]
    return "\n".join(lines) + "\n"


# --- the architectures, side by side -----------------------------------------------------

ArchitectureColumn = tuple[str, str, int | None]
"""(key in an architecture's ``figures``, header, decimals; None: a size in bytes)."""

ARCHITECTURE_COLUMNS: tuple[ArchitectureColumn, ...] = (
    ("parameters_m", "parameters (M)", 2),
    ("mflops_per_image", "MFLOPs per image", 1),
    ("inprocess_frames_per_s", "in process frames/s", 0),
    ("e2e_frames_per_s", "end to end frames/s", 0),
    ("p99_ms_at_half", "p99 at 50 % of end to end, ms", 1),
    ("train_s_per_1000", "training s per 1,000 examples per epoch", 2),
    ("safetensors_bytes", "weights (safetensors)", None),
    ("export_bytes", "export for the runtime", None),
    ("replica_rss_mib", "replica peak RSS MiB", 0),
    ("replica_pss_mib", "replica PSS MiB", 0),
)


def ratios_to(baseline: dict[str, Any], figures: dict[str, Any]) -> dict[str, float | None]:
    """Each figure of ``figures`` over the same figure of ``baseline`` (None where either is
    missing or the baseline's is zero)."""
    out: dict[str, float | None] = {}
    for key, value in figures.items():
        base = baseline.get(key)
        ok = isinstance(value, int | float) and isinstance(base, int | float) and base
        out[key] = round(value / base, 3) if ok else None
    return out


def _architecture_cell(value: Any, ratio: float | None, decimals: int | None) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    shown = fmt_size(int(value)) if decimals is None else fmt_num(value, decimals)
    return shown if ratio is None else f"{shown} ({ratio:.2f})"


def architecture_table(doc: dict[str, Any]) -> list[str]:
    """The lines of a Markdown table of ``architectures.json``: one row per architecture,
    each figure followed by its ratio to the baseline architecture of the same run."""
    baseline = doc.get("baseline", "")
    entries = doc.get("architectures", [])
    base: dict[str, Any] = next(
        (e.get("figures", {}) for e in entries if e.get("architecture") == baseline), {}
    )
    lines = [
        "| architecture | " + " | ".join(h for _, h, _ in ARCHITECTURE_COLUMNS) + " |",
        "|:---|" + "---:|" * len(ARCHITECTURE_COLUMNS),
    ]
    for entry in entries:
        figures = entry.get("figures", {})
        ratios = ratios_to(base, figures)
        cells = [
            _architecture_cell(figures.get(key), ratios.get(key), decimals)
            for key, _, decimals in ARCHITECTURE_COLUMNS
        ]
        name = entry.get("architecture", "?")
        if _errors(entry):
            name += " (a part failed)"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def architecture_markdown(doc: dict[str, Any]) -> str:
    """``architecture_table`` under a heading that says what the figures are."""
    settings = doc.get("settings", {})
    header = (
        f"Architectures at {settings.get('input', '?')}, runtime {settings.get('runtime', '?')} "
        f"({doc.get('started_at', '?')[:19]}); in brackets: the ratio to "
        f"{doc.get('baseline', '?')} in this run"
    )
    lines = [header, "", *architecture_table(doc)]
    for entry in doc.get("architectures", []):
        lines += [f"\n{entry.get('architecture', '?')}: {e}" for e in _errors(entry)]
    return "\n".join(lines) + "\n"


def _errors(entry: dict[str, Any]) -> list[str]:
    """Why parts of an architecture's measure failed (the model, or end to end)."""
    return [str(entry[key]) for key in ("error", "end_to_end_error") if entry.get(key)]


def summary(figures: Path, since: float | None, out: Path) -> str:
    """The one table from ``figures/serving.json`` and ``figures/profile.json``, then the
    architectures' from ``figures/architectures.json``, also written to ``out``.
    FiguresError when a file is missing or older than ``since``."""
    serving = load_figures(figures / "serving.json", since)
    profile = load_figures(figures / "profile.json", since)
    architectures = load_figures(figures / "architectures.json", since)
    header = (
        f"StreamLoop serving benchmark, {serving.get('started_at', '?')[:19]} "
        f"({serving.get('cpu_count', '?')} cores, runtime {serving['settings']['runtime']}, "
        f"trace sample ratio {serving['settings'].get('sample_ratio')}, frames "
        f"{serving['settings'].get('frames_sample_ratio', serving['settings'].get('sample_ratio'))}"
        f"; profile of "
        f"{profile.get('frames', '?')} frames)"
    )
    text = summary_markdown(summary_rows(serving, profile), header)
    text += "\n" + architecture_markdown(architectures)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text
