"""What the registry API and the dashboard share: a read-only request handler that answers in
JSON (errors included), and a stdlib HTTP server running on a daemon thread (the port it
really got, its URL, and a clean stop)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from pydantic import TypeAdapter

__all__ = ["BackgroundHTTPServer", "ReadOnlyHandler"]

log = logging.getLogger("streamloop.http")

# Serialises datetimes and models, and writes non-finite floats as null (plain json.dumps
# would emit NaN, which is not JSON).
_JSON: TypeAdapter[Any] = TypeAdapter(Any)


class ReadOnlyHandler(BaseHTTPRequestHandler):
    """A GET-only handler: every other method, and the stdlib's own errors (bad request
    line, unknown method, ...), are answered in JSON; subclasses write ``do_GET``."""

    sys_version = ""
    logger: logging.Logger = log
    """Where each request is logged, at debug level (never to stderr)."""

    def send_json(self, status: HTTPStatus, body: Any, allow: str | None = None) -> None:
        self.send_bytes(status, _JSON.dump_json(body), "application/json", allow=allow)

    def send_bytes(
        self,
        status: HTTPStatus,
        payload: bytes,
        content_type: str,
        *,
        cache: str = "no-store",
        encoding: str | None = None,
        allow: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if encoding is not None:
            self.send_header("Content-Encoding", encoding)
            self.send_header("Vary", "Accept-Encoding")
        if allow is not None:
            self.send_header("Allow", allow)
        self.end_headers()
        # HEAD must not carry a body, whatever the status.
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(payload)

    def _not_allowed(self) -> None:
        self.send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "method not allowed"}, allow="GET")

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed
    do_TRACE = do_CONNECT = _not_allowed

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A method the stdlib has no handler for is answered 405 like every other non-GET."""
        status = HTTPStatus(code)
        if status is HTTPStatus.NOT_IMPLEMENTED:
            status, message = HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed"
        self.send_json(status, {"error": message or status.phrase}, allow="GET")

    def log_message(self, format: str, *args: Any) -> None:
        self.logger.debug(format, *args)


class BackgroundHTTPServer:
    """Serves ``server`` from a daemon thread named ``name``; ``close`` stops it."""

    def __init__(self, server: ThreadingHTTPServer, name: str) -> None:
        self._server = server
        # close() waits up to one poll interval for serve_forever to notice the shutdown.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=name,
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The port it listens on (the real one when started with port 0)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port`` of the server."""
        host = str(self._server.server_address[0])
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the socket; waits for the serving thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
