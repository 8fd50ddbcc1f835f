"""Helpers for tests against the real broker: bare clients, deadline polling, subprocesses."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from kafka import KafkaConsumer, KafkaProducer

from shared.settings import KafkaSettings

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def wait_for(
    pred: Callable[[], T], timeout_s: float = 30.0, interval_s: float = 0.2, what: str = ""
) -> T:
    """Poll ``pred`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or pred}; last={last!r}")


@contextmanager
def running(loop: Any) -> Iterator[None]:
    """Run a ConsumerLoop in a thread for the duration of the block; stop and join it after."""
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.stop()
        thread.join(30)


_QUIET_PORTS = range(20000, 32000)
"""Ports that no process here is handed without asking: below the kernel's ephemeral range
(32768 and up, where outgoing connections and ``bind(0)`` land) and above Ray's worker ports
(10002-19999). A port from ``bind(0)`` can be taken by someone else's connection before the
service under test binds it; one from this range only by a listener that asked for it."""


def free_port() -> int:
    """A TCP port nobody listens on right now, from ``_QUIET_PORTS`` (for a service's HTTP)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.choice(_QUIET_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


DEMO_GROUPS = ("ingest", "serving", "simulator", "training", "evaluation", "registry")
"""The services whose consumer group a ``streamloop demo`` run names itself."""


def demo_env(prefix: str, home: Path) -> dict[str, str]:
    """The settings of one isolated ``streamloop demo`` run: its own topics (``prefix``),
    consumer groups, artifacts, traces and logs (under ``home``), and free ports."""
    return {
        "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
        "STREAMLOOP_ARTIFACTS_ROOT": str(home / "artifacts"),
        "STREAMLOOP_TELEMETRY_TRACES_DIR": str(home / "traces"),
        "STREAMLOOP_VAR": str(home / "var"),
        "STREAMLOOP_REGISTRY_API_PORT": "0",
        "STREAMLOOP_MONITORING_DASHBOARD_PORT": "0",
        "STREAMLOOP_SERVING_HTTP_PORT": str(free_port()),
        **{f"STREAMLOOP_{g.upper()}_GROUP_ID": f"{prefix}{g}" for g in DEMO_GROUPS},
    }


def bare_producer(settings: KafkaSettings) -> KafkaProducer:
    return KafkaProducer(max_request_size=2 * 1024 * 1024, **settings.client_kwargs())


def read_all(
    settings: KafkaSettings,
    topic: str,
    expect: int,
    timeout_s: float = 30.0,
    alive: Callable[[], bool] | None = None,
) -> list[Any]:
    """Read ``topic`` from the beginning (no group) until ``expect`` records or the deadline;
    stop early (failing the test) when ``alive`` says the process under test died."""
    consumer = KafkaConsumer(
        topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        **settings.client_kwargs(),
    )
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                out.extend(batch)
            if alive is not None and not alive():
                raise AssertionError(f"the process under test died while reading {topic}")
    finally:
        consumer.close()
    return out


class Proc:
    """A child Python process whose stdout lines are collected in the background."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.p = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def saw(self, prefix: str) -> list[str]:
        return [ln for ln in self.lines if ln.startswith(prefix)]

    def wait_line(self, prefix: str, timeout_s: float = 60.0, count: int = 1) -> list[str]:
        def ready() -> list[str] | None:
            if self.p.poll() is not None and len(self.saw(prefix)) < count:
                raise AssertionError(
                    f"process exited ({self.p.returncode}):\n" + "\n".join(self.lines[-40:])
                )
            got = self.saw(prefix)
            return got if len(got) >= count else None

        return wait_for(ready, timeout_s, what=f"{count}x {prefix!r}")

    def alive(self) -> bool:
        if self.p.poll() is None:
            return True
        print("\n".join(self.lines[-60:]))
        return False

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)


def metric(port: int, name: str) -> float:
    """The sum of a Prometheus metric's samples (every label set) on ``port``'s /metrics."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )
