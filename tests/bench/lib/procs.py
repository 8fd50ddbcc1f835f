"""Processes from /proc: CPU seconds, resident memory (RSS, PSS), threads, listening sockets;
a sampler of peak memory by phase, and the CPU of each process group between two snapshots.

Units: CPU in seconds (``cpu_s``), memory in bytes (``rss_bytes``, ``pss_bytes``) unless the
name says KiB (``/proc/<pid>/status`` fields) or MiB (reports)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.settings import KafkaSettings

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")
RAY_MARKERS = ("ray::", "raylet", "gcs_server")
SAMPLE_EVERY_S = 0.5
"""How often ``MemorySampler`` reads /proc."""


def bytes_to_mib(n_bytes: float) -> float:
    return n_bytes / 2**20


def kib_to_mib(n_kib: float) -> float:
    return n_kib / 1024


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _after_comm(stat: str) -> list[str]:
    """The fields of a ``stat`` line after ``pid (comm) ``: state ppid ... utime(11)
    stime(12) ... starttime(19), counted from state."""
    return stat[stat.rindex(")") + 2 :].split()


def _cpu_s(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- processes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    start_ticks: int
    """Start time in clock ticks since boot: tells a process from a later one on its pid."""
    cpu_s: float
    """CPU time so far (user + system)."""
    rss_bytes: int
    cmdline: str


def scan_procs() -> dict[int, ProcInfo]:
    """Every process readable in /proc now."""
    out: dict[int, ProcInfo] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
            with open(f"/proc/{pid}/statm", encoding="ascii") as f:
                statm = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as fb:
                cmd = fb.read()
        except OSError:
            continue
        try:
            rest = _after_comm(stat)
            ppid, start = int(rest[1]), int(rest[19])
            rss = int(statm.split()[1]) * PAGE_SIZE
            cpu_s = _cpu_s(rest)
        except (ValueError, IndexError):
            continue
        cmdline = cmd.replace(b"\0", b" ").decode("utf-8", "replace").strip()
        out[pid] = ProcInfo(pid, ppid, start, cpu_s, rss, cmdline)
    return out


def pss_bytes(pid: int) -> int:
    """Proportional set size (shared pages split between their users), 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return 0


def status_kib(pid: int | str, name: str) -> int | None:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/<pid>/status; None when there is no such process."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def pidfile_rss_kib(pidfile: Path) -> int | None:
    """VmRSS of the process named in ``pidfile``; None when it is missing or not running."""
    try:
        pid = pidfile.read_text().strip()
    except OSError:
        return None
    return status_kib(pid, "VmRSS") if pid.isdigit() else None


def descendants(procs: dict[int, ProcInfo], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    out: set[int] = set()
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, ()))
    return out


def is_ray(cmdline: str) -> bool:
    return any(m in cmdline for m in RAY_MARKERS)


def is_replica(cmdline: str) -> bool:
    """A Ray Serve replica's worker (``ray::ServeReplica:<app>:<deployment>``)."""
    return "ServeReplica" in cmdline


def own_descendants() -> list[ProcInfo]:
    procs = scan_procs()
    return [procs[pid] for pid in descendants(procs, os.getpid())]


def cpu_s_of(pid: int | None) -> float | None:
    """User + system CPU seconds of ``pid`` so far; None when unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return _cpu_s(_after_comm(f.read()))
    except (OSError, ValueError, IndexError):
        return None


def broker_pid(kafka: KafkaSettings) -> int | None:
    """The process of the first bootstrap broker (local), found by its listening port."""
    return listening_pid(int(kafka.bootstrap_servers.split(",")[0].rpartition(":")[2]))


def listening_pid(port: int) -> int | None:
    """The process holding a listening TCP socket on ``port`` (None when not found)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry.name}/fd/{fd}") in inodes:
                    return int(entry.name)
            except OSError:
                continue
    return None


# --- threads of this process --------------------------------------------------------------


def _thread_stats(pid: int | str) -> Iterator[tuple[int, str, float]]:
    """(native id, name, user + system CPU seconds so far) of each thread of process ``pid``
    (``self`` for this one); nothing when the process is gone."""
    try:
        entries = list(os.scandir(f"/proc/{pid}/task"))
    except OSError:
        return
    for entry in entries:
        try:
            with open(f"{entry.path}/stat", encoding="utf-8") as f:
                stat = f.read()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            cpu_s = _cpu_s(_after_comm(stat))
        except (OSError, ValueError, IndexError):
            continue
        yield int(entry.name), name, cpu_s


def thread_cpu_s() -> dict[int, float]:
    """User + system CPU seconds of each thread of this process so far, by native id."""
    return {tid: cpu_s for tid, _, cpu_s in _thread_stats("self")}


def threads_by_name(pid: int) -> dict[str, float]:
    """CPU seconds so far of the threads of process ``pid``, summed by thread name (the
    kernel's ``comm``, at most 15 characters: a JVM's pools share one, e.g. ``data-plane-kafk``
    for the broker's network threads). Empty when the process is gone."""
    out: dict[str, float] = {}
    for _, name, cpu_s in _thread_stats(pid):
        out[name] = out.get(name, 0.0) + cpu_s
    return out


def thread_cores(
    before: dict[str, float], after: dict[str, float], seconds: float, top: int
) -> dict[str, float]:
    """Cores of each thread name between two ``threads_by_name`` over ``seconds``: the ``top``
    busiest, the others summed as ``other threads``."""
    spent = {n: after[n] - before.get(n, 0.0) for n in after}
    ranked = sorted((kv for kv in spent.items() if kv[1] > 0), key=lambda kv: -kv[1])
    out = {n: round(c / seconds, 4) for n, c in ranked[:top]}
    rest = sum(c for _, c in ranked[top:])
    if rest > 0:
        out["other threads"] = round(rest / seconds, 4)
    return out


def thread_names() -> dict[int, str]:
    return {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}


def threads_us_per_frame(
    before: dict[int, float], after: dict[int, float], names: dict[int, str], frames: int
) -> dict[str, float]:
    """CPU µs per frame of each thread between two ``thread_cpu_s`` (threads without a Python
    name, such as ONNX Runtime's or torch's, are summed as native), most first."""
    out: dict[str, float] = {}
    for tid, cpu_s in after.items():
        delta = cpu_s - before.get(tid, 0.0)
        if delta > 0:
            name = names.get(tid, "native threads")
            out[name] = out.get(name, 0.0) + delta
    ranked = sorted(out.items(), key=lambda kv: -kv[1])
    return {k: round(1e6 * v / max(1, frames), 1) for k, v in ranked}


# --- peak memory --------------------------------------------------------------------------


@dataclass
class Peak:
    rss_bytes: int = 0
    pss_bytes: int = 0
    processes: int = 0
    names: list[str] = field(default_factory=list)


class MemorySampler:
    """Samples resident memory every ``SAMPLE_EVERY_S`` into per-phase peaks.

    Per phase: ``ray`` sums the RSS of this process's descendants whose command line names
    ``ray::``, ``raylet`` or ``gcs_server``; ``ray_all`` sums every process below the Ray
    driver (Ray's Python helpers too: autoscaler monitor, log monitor, dashboard head), with
    their PSS besides (shared pages counted once); ``replica`` the Ray Serve replicas among
    them, with their PSS; ``watch`` adds single processes."""

    def __init__(self) -> None:
        self.phase = "setup"
        self.paused = False
        self.driver: int | None = None
        """pid whose descendants are all Ray's (this process in (b), serving's in (c))."""
        self.watch: dict[str, int] = {}
        """label -> pid of a process whose own RSS is tracked."""
        self.peaks: dict[str, Peak] = {}
        self.foreign_ray = 0
        """Most Ray processes seen at once that are not ours (another run on the machine)."""
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.paused:
                try:
                    self.sample()
                except Exception as exc:  # noqa: BLE001 - a failed sample must not end the run
                    logging.getLogger(__name__).warning("memory sample failed: %s", exc)
            self._stop.wait(SAMPLE_EVERY_S)

    def _peak(self, key: str, procs: list[ProcInfo], pss: bool = False) -> None:
        rss = sum(p.rss_bytes for p in procs)
        peak = self.peaks.setdefault(key, Peak())
        if rss > peak.rss_bytes:
            peak.rss_bytes, peak.processes = rss, len(procs)
            peak.pss_bytes = sum(pss_bytes(p.pid) for p in procs) if pss else 0
            peak.names = sorted(p.cmdline.split(" ")[0][-60:] for p in procs)

    def sample(self) -> None:
        procs = scan_procs()
        mine = descendants(procs, os.getpid())
        ray = [procs[pid] for pid in mine if is_ray(procs[pid].cmdline)]
        self.foreign_ray = max(
            self.foreign_ray,
            sum(1 for p in procs.values() if p.pid not in mine and is_ray(p.cmdline)),
        )
        phase = self.phase
        if ray:
            self._peak(f"{phase}:ray", ray)
        driver = self.driver
        if driver is not None:
            below = [procs[pid] for pid in descendants(procs, driver)]
            if below:
                self._peak(f"{phase}:ray_all", below, pss=True)
            replicas = [p for p in below if is_replica(p.cmdline)]
            if replicas:
                self._peak(f"{phase}:replica", replicas, pss=True)
        for label, pid in list(self.watch.items()):
            p = procs.get(pid)
            if p is not None:
                self._peak(f"{phase}:{label}", [p])
        self.samples += 1

    def peak(self, key: str) -> Peak | None:
        return self.peaks.get(key)

    def as_dict(self) -> dict[str, Any]:
        """The peaks in MiB by ``phase:group``, and the most foreign Ray processes seen."""
        out: dict[str, Any] = {
            key: {
                "peak_rss_mib": round(bytes_to_mib(p.rss_bytes), 1),
                "pss_mib": round(bytes_to_mib(p.pss_bytes), 1) if p.pss_bytes else None,
                "processes": p.processes,
                "names": p.names,
            }
            for key, p in sorted(self.peaks.items())
        }
        out["foreign_ray_processes_max"] = self.foreign_ray
        return out


# --- CPU by process group -----------------------------------------------------------------

CPU_GROUPS = {
    "serving": "serving process (Kafka ingress, Ray driver)",
    "replica": "Ray Serve replica",
    "ray": "Ray's other processes (raylet, GCS, controller, proxy, agents)",
    "ingest": "ingest process",
    "kafka": "Kafka broker",
    "redis": "Redis",
    "bench": "this benchmark (publisher, prediction reader)",
}
STACK = ("serving", "replica", "ray", "ingest", "kafka", "redis")
"""The groups a deployment runs, the cameras and the consumers of predictions left out:
what ``stack`` sums."""


@dataclass
class CpuSnapshot:
    at: float
    groups: dict[str, dict[tuple[int, int], float]]
    """group -> (pid, start ticks) -> CPU seconds so far."""
    busy_s: float
    """Machine-wide busy CPU seconds (``/proc/stat``), all CPUs."""


def machine_busy_s() -> float:
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (sum(fields[:3]) + sum(fields[5:8])) / CLK_TCK


def cpu_snapshot(serving: int, ingest: int) -> CpuSnapshot:
    """CPU so far of the serving process, its Ray descendants, ingest, Kafka, Redis and this
    process, by ``CPU_GROUPS``."""
    procs = scan_procs()
    ray = descendants(procs, serving)
    groups: dict[str, dict[tuple[int, int], float]] = {g: {} for g in CPU_GROUPS}
    for p in procs.values():
        if p.pid in ray:
            group = "replica" if is_replica(p.cmdline) else "ray"
        elif p.pid == serving:
            group = "serving"
        elif p.pid == ingest:
            group = "ingest"
        elif p.pid == os.getpid():
            group = "bench"
        elif "kafka.Kafka" in p.cmdline:
            group = "kafka"
        elif p.cmdline.startswith("redis-server"):
            group = "redis"
        else:
            continue
        groups[group][(p.pid, p.start_ticks)] = p.cpu_s
    return CpuSnapshot(time.monotonic(), groups, machine_busy_s())


def cpu_between(before: CpuSnapshot, after: CpuSnapshot, frames: int) -> dict[str, Any]:
    """CPU seconds, cores and CPU ms per frame of each group between two snapshots; ``other``
    is the rest of the machine (another run, the kernel), ``stack`` the groups of ``STACK``,
    ``machine`` all of it."""
    wall = after.at - before.at
    spent: dict[str, float] = {}
    for group, now in after.groups.items():
        then = before.groups.get(group, {})
        spent[group] = sum(s - then.get(key, 0.0) for key, s in now.items())
    machine = after.busy_s - before.busy_s
    spent["other"] = max(0.0, machine - sum(spent.values()))
    spent["stack"] = sum(spent.get(group, 0.0) for group in STACK)
    spent["machine"] = machine
    out: dict[str, Any] = {"wall_s": round(wall, 2), "frames": frames}
    for group, seconds in spent.items():
        out[group] = {
            "cpu_s": round(seconds, 2),
            "cores": round(seconds / wall, 2) if wall > 0 else None,
            "ms_per_frame": round(seconds * 1e3 / frames, 3) if frames else None,
        }
    return out
