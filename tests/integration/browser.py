"""Headless Chromium driven over the DevTools protocol, for pages that need more than a URL
(a login cookie, a wait for the page's own requests, a screenshot): ``Browser`` starts Debian's
``chromium`` with a debugging port on loopback, and its page answers ``call`` and ``evaluate``."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from tests.integration.helpers import free_port, wait_for

__all__ = ["CHROMIUM", "Browser", "headless"]

CHROMIUM = shutil.which("chromium")


def headless(workdir: Path) -> list[str]:
    """Chromium's options for a headless run in a container, its profile under ``workdir``."""
    return [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={workdir / 'profile'}",
    ]


class Browser:
    def __init__(self, workdir: Path, width: int = 1400, height: int = 1000) -> None:
        assert CHROMIUM is not None, "make setup installs Debian's chromium"
        port = free_port()
        env = {**os.environ, "HOME": str(workdir), "XDG_CONFIG_HOME": str(workdir / "config")}
        self._proc = subprocess.Popen(
            [
                CHROMIUM,
                *headless(workdir),
                f"--window-size={width},{height}",
                "--remote-debugging-address=127.0.0.1",
                f"--remote-debugging-port={port}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        pages = wait_for(lambda: self._pages(port), 60, interval_s=0.5, what="chromium's page")
        self._closing = ExitStack()
        self._ws = self._closing.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024)
        )
        self._ids = itertools.count(1)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    @staticmethod
    def _pages(port: int) -> list[dict[str, Any]]:
        """The browser's pages (none while it is starting)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                return [t for t in json.load(r) if t.get("type") == "page"]
        except OSError:
            return []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events in between are skipped)."""
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result") or {})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float, what: str) -> Any:
        return wait_for(lambda: self.evaluate(expression), timeout_s, interval_s=0.5, what=what)

    def screenshot(self, path: Path) -> bytes:
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return png

    def close(self) -> None:
        try:
            self._closing.close()
        finally:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
