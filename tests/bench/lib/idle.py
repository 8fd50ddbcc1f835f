"""The stack at rest (``bench_idle``): the seven services started with no frame, and the CPU of
every process read from /proc, by service, what each service started, Kafka and Redis."""

from __future__ import annotations

import time
from pathlib import Path

from rich.table import Table

from streamloop.demo import READY, SERVICES
from tests.bench.lib.control import Service
from tests.bench.lib.procs import ProcInfo, descendants, scan_procs
from tests.integration.helpers import demo_env

SAMPLE_RATIO = "0.05"
"""Trace sampling as ``streamloop demo`` runs the services."""


def groups_of(procs: dict[int, ProcInfo], services: dict[str, int]) -> dict[int, str]:
    """pid -> the row it counts in: a service, what a service started, Kafka or Redis."""
    out: dict[int, str] = {}
    for name, pid in services.items():
        out[pid] = name
        for child in descendants(procs, pid) - {pid}:
            out[child] = f"{name} children"
    for p in procs.values():
        if "kafka.Kafka" in p.cmdline:
            out[p.pid] = "kafka"
        elif p.cmdline.startswith("redis-server"):
            out[p.pid] = "redis"
    return out


def cpu_by_group(services: dict[str, int]) -> tuple[float, dict[str, float]]:
    """(now, CPU seconds so far per row); processes keyed by pid and start time."""
    procs = scan_procs()
    rows: dict[str, float] = {}
    for pid, group in groups_of(procs, services).items():
        rows[group] = rows.get(group, 0.0) + procs[pid].cpu_s
    return time.monotonic(), rows


def window(services: dict[str, int], seconds: float) -> dict[str, float]:
    """Cores per row over ``seconds`` (a process that ended or started in between counts
    for the part it was seen in both scans)."""
    t0, before = cpu_by_group(services)
    time.sleep(seconds)
    t1, after = cpu_by_group(services)
    wall = t1 - t0
    cores = {g: max(0.0, after[g] - before.get(g, 0.0)) / wall for g in after}
    cores["total"] = sum(cores.values())
    return {g: round(c, 3) for g, c in sorted(cores.items())}


def start_stack(home: Path, prefix: str) -> list[Service]:
    env = {
        **demo_env(prefix, home),
        "STREAMLOOP_TELEMETRY_SAMPLE_RATIO": SAMPLE_RATIO,
    }
    return [
        Service(name, f"services.{name}", env, (READY.get(name, '"consumer started"'),))
        for name in SERVICES
    ]


def wait_ready(services: list[Service], timeout_s: float) -> float:
    start = time.monotonic()
    for s in services:
        marker = READY.get(s.name, '"consumer started"')
        s.wait_for(marker, max(1.0, timeout_s - (time.monotonic() - start)), f"{s.name} ready")
    return time.monotonic() - start


def table(windows: dict[str, dict[str, float]]) -> Table:
    t = Table(title="CPU at rest, cores (1.0 = one core busy)")
    t.add_column("process")
    for name in windows:
        t.add_column(name, justify="right")
    rows = sorted({g for w in windows.values() for g in w} - {"total"})
    for g in [*rows, "total"]:
        t.add_row(g, *(f"{w.get(g, 0.0):.3f}" for w in windows.values()))
    return t
