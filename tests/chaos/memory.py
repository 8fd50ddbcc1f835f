"""Resident memory of processes and their descendants, from /proc (Linux)."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    kids: list[int] = []
    for task in (PROC / str(pid) / "task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def rss_kib(pid: int) -> int:
    """Resident set size of one process in KiB (0 when it is gone)."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, summed, in MiB (a service with Ray
    counts its raylet, GCS and replica workers)."""
    return sum(rss_kib(p) for p in tree(pid)) / 1024


def pid_from_file(path: Path) -> int | None:
    """The pid written in ``path`` if that process is alive."""
    try:
        pid = int(path.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid
