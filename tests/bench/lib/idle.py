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


def ready_marker(service: str) -> str:
    """The log line that says ``service`` is ready (as ``streamloop demo`` waits for it)."""
    return READY.get(service, '"consumer started"')


def kind_of(cmdline: str) -> str:
    """What a started process is, from its command line: a Ray actor or worker by its name
    (``ray::ServeController``), a program by its file name (``gcs_server``, ``raylet``,
    ``agent.py``)."""
    words = cmdline.split()
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        # Ray renames a worker by the task it runs (ray::ServeController.listen_for_change).
        return "ray::" + words[0][len("ray::") :].split(":")[0].split(".")[0]
    program = (
        next((w for w in words[1:] if w.endswith(".py")), words[0])
        if Path(words[0]).name.startswith("python")
        else words[0]
    )
    return Path(program).name


def groups_of(procs: dict[int, ProcInfo], services: dict[str, int]) -> dict[int, str]:
    """pid -> the row it counts in: a service, each kind of process a service started, Kafka
    or Redis."""
    out: dict[int, str] = {}
    for name, pid in services.items():
        out[pid] = name
        for child in descendants(procs, pid) - {pid}:
            out[child] = f"{name}: {kind_of(procs[child].cmdline)}"
    for p in procs.values():
        if "kafka.Kafka" in p.cmdline:
            out[p.pid] = "kafka"
        elif p.cmdline.startswith("redis-server"):
            out[p.pid] = "redis"
    return out


Counted = dict[tuple[int, int], tuple[str, float]]
"""(pid, start time) -> (the process's row, its CPU seconds so far)."""


def cpu_by_process(services: dict[str, int]) -> tuple[float, Counted]:
    """(now, every process counted)."""
    procs = scan_procs()
    rows = groups_of(procs, services)
    cpu = {(pid, procs[pid].start_ticks): (row, procs[pid].cpu_s) for pid, row in rows.items()}
    return time.monotonic(), cpu


def window(services: dict[str, int], seconds: float) -> dict[str, float]:
    """Cores per row over ``seconds``: a process started in the window counts whole, one
    that ended in it is not counted (its last CPU time is not readable)."""
    t0, before = cpu_by_process(services)
    time.sleep(seconds)
    t1, after = cpu_by_process(services)
    cores: dict[str, float] = {}
    for key, (row, cpu_s) in after.items():
        spent = cpu_s - before.get(key, (row, 0.0))[1]
        cores[row] = cores.get(row, 0.0) + spent / (t1 - t0)
    cores["total"] = sum(cores.values())
    return {g: round(c, 3) for g, c in sorted(cores.items())}


def start_stack(home: Path, prefix: str) -> list[Service]:
    env = {
        **demo_env(prefix, home),
        "STREAMLOOP_TELEMETRY_SAMPLE_RATIO": SAMPLE_RATIO,
    }
    return [Service(name, f"services.{name}", env, (ready_marker(name),)) for name in SERVICES]


def wait_ready(services: list[Service], timeout_s: float) -> float:
    start = time.monotonic()
    for s in services:
        left = max(1.0, timeout_s - (time.monotonic() - start))
        s.wait_for(ready_marker(s.name), left, f"{s.name} ready")
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
