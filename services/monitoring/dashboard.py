"""The monitoring dashboard: one live page, served by stdlib ``http.server``.

Routes, GET only:

- ``/``: the page (``dashboard.html``), which polls ``/api/state`` every 2 s and draws it;
- ``/static/plotly.min.js``: the charting library, from the installed ``plotly`` package, so
  the page needs nothing from the internet;
- ``/api/state``: ``DashboardState.snapshot`` as JSON, with ``model_name`` and the
  registry's versions. A registry that cannot be read gives an empty models table and an
  ``error`` field, never a failed request: the charts stay live while Redis is away;
- ``/healthz``: ``{"status": "ok"}``.

Anything else is a JSON 404, any other method a JSON 405. With a read token configured,
every route but ``/healthz`` needs it: as a bearer token (scripts), or as the password of
HTTP Basic credentials with any user name, which is what a browser sends after its login
prompt, and then sends with the page's own requests too.
"""

from __future__ import annotations

import gzip
import logging
import threading
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import TypeAdapter

from services.monitoring.board import DashboardState
from shared.auth import ApiAuthSettings, HttpAuthSettings, authorize_read
from shared.http import BackgroundHTTPServer, EndpointServer, ReadOnlyHandler
from shared.registry import RegistryReader, RegistryView

__all__ = ["DashboardServer", "plotly_js", "serve_dashboard"]

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("dashboard.html")

# Serialises the snapshot, writing any non-finite float as null (json.dumps would emit NaN,
# which is not JSON).
_JSON: TypeAdapter[Any] = TypeAdapter(Any)

_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The page may load only what this server serves: no asset from elsewhere, and event text
that ever slipped into markup could not fetch or post anything."""

_plotly_lock = threading.Lock()
_plotly: tuple[bytes, bytes] | None = None


def plotly_js() -> tuple[bytes, bytes]:
    """The minified plotly.js bundle of the installed ``plotly`` package, plain and gzipped,
    read and compressed once per process (about 5 MB, 1.4 MB gzipped)."""
    global _plotly
    with _plotly_lock:
        if _plotly is None:
            from plotly.offline import get_plotlyjs  # type: ignore[import-untyped]

            plain = str(get_plotlyjs()).encode()
            _plotly = (plain, gzip.compress(plain, compresslevel=6, mtime=0))
        return _plotly


class _Server(EndpointServer):
    def __init__(
        self,
        address: tuple[str, int],
        state: DashboardState,
        registry: RegistryReader | None,
        model_name: str,
        threshold: float,
        auth: HttpAuthSettings,
    ) -> None:
        self.auth = auth
        self.state = state
        self.registry = registry
        self.model_name = model_name
        self.threshold = threshold
        self.page = PAGE.read_bytes()
        self.plotly, self.plotly_gz = plotly_js()
        super().__init__(address, _Handler)

    def api_state(self) -> dict[str, Any]:
        view: RegistryView | None = None
        error: str | None = None
        if self.registry is not None:
            try:
                view = self.registry.view(self.model_name)
            except Exception as exc:
                log.warning("dashboard cannot read the registry", exc_info=True)
                error = f"registry unavailable: {exc}"[:300]
        snap = self.state.snapshot(self.threshold, view)
        snap["model_name"] = self.model_name
        if error is not None:
            snap["error"] = error
        return snap


class _Handler(ReadOnlyHandler):
    server: _Server
    server_version = "streamloop-dashboard"
    logger = log

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path != "/healthz" and not self.admitted(
            authorize_read(self.headers.get("Authorization"), self.server.auth, basic=True)
        ):
            return
        try:
            match path:
                case "/" | "/index.html":
                    self.send_bytes(
                        HTTPStatus.OK,
                        self.server.page,
                        "text/html; charset=utf-8",
                        headers={"Content-Security-Policy": _CSP, "Referrer-Policy": "no-referrer"},
                    )
                case "/static/plotly.min.js":
                    self._send_plotly()
                case "/api/state":
                    self.send_json(HTTPStatus.OK, self.server.api_state())
                case "/healthz":
                    self.send_json(HTTPStatus.OK, {"status": "ok"})
                case _:
                    self.send_json(HTTPStatus.NOT_FOUND, {"error": "no such route"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away mid-answer: nothing to tell it
        except Exception:
            log.exception("dashboard request failed", extra={"path": path})
            self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})

    def _send_plotly(self) -> None:
        accepts = self.headers.get("Accept-Encoding", "")
        gz = "gzip" in {part.split(";")[0].strip() for part in accepts.split(",")}
        self.send_bytes(
            HTTPStatus.OK,
            self.server.plotly_gz if gz else self.server.plotly,
            "application/javascript; charset=utf-8",
            cache="public, max-age=3600",
            encoding="gzip" if gz else None,
        )


class DashboardServer(BackgroundHTTPServer):
    """A running dashboard; ``close`` stops it."""

    def __init__(self, server: _Server) -> None:
        super().__init__(server, "dashboard-http")


def serve_dashboard(
    state: DashboardState,
    registry: RegistryReader | None,
    model_name: str,
    threshold: float,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    auth: HttpAuthSettings | None = None,
) -> DashboardServer:
    """Serve the dashboard of ``model_name`` on ``host:port`` (0 picks a free port) from a
    daemon thread. ``threshold`` is the accuracy the chart draws as the retrain line;
    ``registry`` None shows no models table; ``auth`` None leaves it open. Raises OSError
    when the address cannot be bound."""
    # model_construct: the defaults as they are, without reading the environment, which only
    # a service's __main__ does.
    auth = auth or ApiAuthSettings.model_construct()
    return DashboardServer(_Server((host, port), state, registry, model_name, threshold, auth))
