"""Subprocesses and shared infrastructure: services run as ``python -m``, Ray, and the Kafka
topics, consumer groups and Redis keys a run creates (deleted at its end)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from rich.console import Console

from shared.kafka_admin import KafkaAdmin, wait_for_kafka
from shared.redis_store import connect
from shared.settings import KafkaSettings, RedisSettings
from tests.bench.lib.procs import ProcInfo, is_ray, own_descendants, scan_procs

REPO = Path(__file__).resolve().parents[3]


class BenchError(RuntimeError):
    """A part of a benchmark could not be measured (the message says why)."""


@contextlib.contextmanager
def workdir(prefix: str = "bench-serving-") -> Iterator[Path]:
    """A temporary folder, removed at the end."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def preflight(console: Console) -> None:
    """Raise BenchError unless Kafka and Redis answer; note Ray processes of another run."""
    try:
        wait_for_kafka(KafkaSettings(), timeout_s=15)
    except TimeoutError as exc:
        raise BenchError(f"{exc} (start it with `make up`)") from exc
    try:
        connect(RedisSettings()).ping()
    except Exception as exc:
        raise BenchError(f"Redis does not answer: {exc} (start it with `make up`)") from exc
    foreign = [p for p in scan_procs().values() if is_ray(p.cmdline)]
    if foreign:
        console.print(
            f"note: {len(foreign)} Ray process(es) of another run are on this machine; "
            f"they share the CPUs and are not counted"
        )


def kafka_reachable(settings: KafkaSettings, timeout_s: float = 2.0) -> str | None:
    """None when the first bootstrap server accepts a connection, else why not."""
    servers = settings.client_kwargs()["bootstrap_servers"]
    host, _, port = str(servers[0]).rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return None
    except (OSError, ValueError) as exc:
        return f"{servers[0]}: {exc}"


# --- services -----------------------------------------------------------------------------


class Service:
    """A service run as ``python -m MODULE`` (or as ``command``); its output is kept (the last
    lines) for errors."""

    def __init__(
        self,
        name: str,
        module: str,
        env: dict[str, str],
        markers: tuple[str, ...],
        command: list[str] | None = None,
    ):
        self.name = name
        self.tail: deque[str] = deque(maxlen=300)
        self.seen: set[str] = set()
        self.first: dict[str, str] = {}
        """marker -> the first output line that showed it."""
        self._markers = markers
        base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.p = subprocess.Popen(
            command or [sys.executable, "-m", module],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**base, "PYTHONUNBUFFERED": "1", **env},
        )
        self._pump = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            for m in self._markers:
                if m in line:
                    self.first.setdefault(m, line)
                    self.seen.add(m)

    def last_lines(self, n: int = 25) -> str:
        return "\n".join(f"    | {ln[:300]}" for ln in list(self.tail)[-n:])

    def check(self, doing: str) -> None:
        """Raise BenchError when the process has exited."""
        rc = self.p.poll()
        if rc is not None:
            raise BenchError(
                f"the {self.name} process exited ({rc}) {doing}; its last lines:\n"
                + self.last_lines()
            )

    def wait_for(self, marker: str, timeout_s: float, what: str) -> float:
        """Seconds until ``marker`` appeared in the output."""
        start = time.monotonic()
        while marker not in self.seen:
            self.check(f"before {what}")
            if time.monotonic() - start > timeout_s:
                raise BenchError(
                    f"the {self.name} process showed no {what} within {timeout_s:.0f} s; "
                    f"its last lines:\n" + self.last_lines()
                )
            time.sleep(0.2)
        return time.monotonic() - start

    def stop(self, timeout_s: float) -> str:
        """SIGTERM, then SIGKILL after ``timeout_s``; how it ended."""
        if self.p.poll() is not None:
            return f"had exited ({self.p.returncode})"
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout_s)
            return f"stopped ({self.p.returncode})"
        except subprocess.TimeoutExpired:
            self.p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.p.wait(10)
            return f"killed after {timeout_s:.0f} s without stopping"


def end_processes(snapshot: list[ProcInfo], console: Console, grace_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL, the processes of ``snapshot`` that still run (same pid and start
    time: never a later process on a reused pid). Returns how many had to be ended."""

    def alive() -> list[ProcInfo]:
        now = scan_procs()
        return [p for p in snapshot if p.pid in now and now[p.pid].start_ticks == p.start_ticks]

    left = alive()
    if not left:
        return 0
    for p in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive():
        time.sleep(0.3)
    for p in alive():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, signal.SIGKILL)
    console.print(f"  ended {len(left)} leftover process(es): {[p.pid for p in left]}")
    return len(left)


# --- Ray ----------------------------------------------------------------------------------


def ray_cli(*args: str) -> None:
    """``ray ARGS`` from this interpreter's environment; BenchError when it fails."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), *args],
        capture_output=True,
        text=True,
        timeout=180,
        # A head started by ``ray start`` asks for an auth token by default, which clients
        # started without the token file refuse to send; a benchmark's private head needs none.
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"},
    )
    if out.returncode != 0:
        raise BenchError(f"ray {' '.join(args)} failed: {(out.stderr or out.stdout)[-800:]}")


def wait_ray_gone(console: Console, timeout_s: float = 20.0) -> None:
    """Wait for Ray's processes (all of this one's children at this point) to exit; end any
    left after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not own_descendants():
            return
        time.sleep(0.5)
    left = own_descendants()
    if left:
        console.print(f"  warning: {len(left)} Ray process(es) still running after shutdown")
        end_processes(left, console)


# --- the run's topics, groups and keys ----------------------------------------------------


def delete_topics(
    topics: Iterable[str], warn: Callable[[str], object], *, only_existing: bool = False
) -> int | None:
    """Delete ``topics`` (with ``only_existing``, those that exist); how many were deleted,
    None when it failed. Never raises: it runs in ``finally`` and must not hide the result
    (``warn`` says why it failed)."""
    names = list(topics)
    try:
        with KafkaAdmin(KafkaSettings()) as admin:
            if only_existing:
                existing = set(admin.list_topics())
                names = [t for t in names if t in existing]
            if names:
                admin.delete_topics(names)
    except (KafkaError, OSError) as exc:
        warn(f"warning: could not delete the bench topics: {exc}")
        return None
    return len(names)


def delete_groups(settings: KafkaSettings, groups: list[str]) -> None:
    """Delete consumer groups (their committed offsets would otherwise linger until
    offsets.retention expires); never raises."""
    admin_client = None
    try:
        admin_client = KafkaAdminClient(client_id="bench-cleanup", **settings.client_kwargs())
        admin_client.delete_groups(groups)
    except (KafkaError, OSError):
        pass
    finally:
        if admin_client is not None:
            admin_client.close()


def delete_redis_keys(pattern: str, warn: Callable[[str], object]) -> None:
    """Delete the Redis keys matching ``pattern``; never raises."""
    try:
        client = connect(RedisSettings())
        keys = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the result
        warn(f"warning: could not delete the keys {pattern}: {exc}")
