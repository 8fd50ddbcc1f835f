"""What the registry API and the dashboard share: a read-only request handler that answers in
JSON (errors included) and refuses requests whose credentials ``shared.auth`` did not let
through, a handler that also takes POSTed JSON commands with a bounded body, and a stdlib
HTTP server running on a daemon thread (the port it really got, its URL, and a clean
stop)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self

from pydantic import TypeAdapter

from shared.auth import Decision, check_length

__all__ = [
    "ActionHandler",
    "BackgroundHTTPServer",
    "EndpointServer",
    "HttpError",
    "ReadOnlyHandler",
]

log = logging.getLogger("streamloop.http")

# Serialises datetimes and models, and writes non-finite floats as null (plain json.dumps
# would emit NaN, which is not JSON).
_JSON: TypeAdapter[Any] = TypeAdapter(Any)

Headers = Mapping[str, str] | Iterable[tuple[str, str]]
"""Extra response headers: a mapping, or pairs when a name repeats (``WWW-Authenticate``)."""


class HttpError(Exception):
    """Raised by a handler's routing to answer ``status`` with ``{"error": message}``."""

    def __init__(
        self, status: HTTPStatus, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

    @classmethod
    def refused(cls, decision: Decision) -> HttpError:
        """The answer to a request its credentials did not let through."""
        assert decision.status is not None
        return cls(decision.status, decision.message, decision.headers)


class ReadOnlyHandler(BaseHTTPRequestHandler):
    """A GET-only handler: every other method, and the stdlib's own errors (bad request
    line, unknown method, ...), are answered in JSON; subclasses write ``do_GET``."""

    sys_version = ""
    logger: logging.Logger = log
    """Where each request is logged, at debug level (never to stderr)."""

    def send_json(
        self,
        status: HTTPStatus,
        body: Any,
        allow: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        self.send_bytes(
            status, _JSON.dump_json(body), "application/json", allow=allow, headers=headers
        )

    def allowed_methods(self) -> str:
        """The ``Allow`` header of a 405 on the requested path."""
        return "GET"

    def send_bytes(
        self,
        status: HTTPStatus,
        payload: bytes,
        content_type: str,
        *,
        cache: str = "no-store",
        encoding: str | None = None,
        allow: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
        for name, value in pairs:
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

    def admitted(self, decision: Decision) -> bool:
        """True when ``decision`` lets the request through; otherwise answer the refusal
        (401 with its challenge, or 403) and return False."""
        if decision.allowed:
            return True
        assert decision.status is not None
        self.send_json(decision.status, {"error": decision.message}, headers=decision.headers)
        return False

    def _not_allowed(self) -> None:
        self.send_json(
            HTTPStatus.METHOD_NOT_ALLOWED,
            {"error": "method not allowed"},
            allow=self.allowed_methods(),
        )

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed
    do_TRACE = do_CONNECT = _not_allowed

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A method the stdlib has no handler for is answered 405 like every other non-GET."""
        status = HTTPStatus(code)
        if status is HTTPStatus.NOT_IMPLEMENTED:
            status, message = HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed"
        allow = self.allowed_methods() if hasattr(self, "path") else "GET"
        self.send_json(status, {"error": message or status.phrase}, allow=allow)

    def log_message(self, format: str, *args: Any) -> None:
        self.logger.debug(format, *args)


class ActionHandler(ReadOnlyHandler):
    """A handler that answers POST as well as GET: subclasses write ``do_GET`` and ``post``,
    which reads its JSON body with ``read_json``.

    A POST answered before its body was read (refused, too large, no such route) closes the
    connection, and what the client already sent is discarded, within bounds, so that the
    client gets to read the answer instead of a reset connection."""

    timeout = 30.0
    """Seconds a client may stall mid-request before its connection is dropped, so a slow
    sender cannot hold a thread for ever."""

    drain_limit_s: ClassVar[float] = 2.0
    """Longest time spent discarding an unread body after an early answer."""

    drain_limit_bytes: ClassVar[int] = 16 * 1024 * 1024
    """Most bytes of an unread body discarded after an early answer."""

    _body_pending = False

    def post(self) -> tuple[HTTPStatus, Any]:
        """Route a POST: return the status and JSON body of the answer, or raise HttpError."""
        raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")

    def do_POST(self) -> None:
        self._body_pending = self._announces_body()
        headers: tuple[tuple[str, str], ...] = ()
        allow: str | None = None
        try:
            status, body = self.post()
        except HttpError as exc:
            status, body, headers = exc.status, {"error": exc.message}, exc.headers
            if status is HTTPStatus.METHOD_NOT_ALLOWED:
                allow = self.allowed_methods()
        except Exception:
            self.logger.exception("request failed", extra={"path": self.path})
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"}
        pending = self._body_pending
        if pending:
            headers = (*headers, ("Connection", "close"))
        self.send_json(status, body, allow=allow, headers=headers)
        if pending:
            self._discard_input()

    def read_body(self, limit: int, content_type: str) -> bytes:
        """The request's body, of ``content_type`` (or none stated); no body is ``b""``.

        Raises HttpError: 411 without ``Content-Length`` (chunked bodies are not taken),
        400 for an invalid length or a short body, 413 when the length exceeds ``limit``
        (before reading any of it), 415 for another content type."""
        lengths = self.headers.get_all("Content-Length") or []
        declared = check_length(lengths, limit, chunked=bool(self.headers.get("Transfer-Encoding")))
        if not declared.allowed:
            raise HttpError.refused(declared)
        length = int(lengths[0])
        stated = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if length and stated not in ("", content_type):
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"send {content_type}")
        raw = self.rfile.read(length) if length else b""
        self._body_pending = False
        if len(raw) < length:
            raise HttpError(HTTPStatus.BAD_REQUEST, "incomplete body")
        return raw

    def read_json(self, limit: int) -> dict[str, Any]:
        """The request's body as a JSON object; no body (``Content-Length: 0``) is ``{}``.

        Raises HttpError like ``read_body``, and 400 for a body that is not a JSON object."""
        raw = self.read_body(limit, "application/json")
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            raise HttpError(HTTPStatus.BAD_REQUEST, "body is not valid JSON") from None
        if not isinstance(value, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return value

    def _announces_body(self) -> bool:
        length = self.headers.get("Content-Length", "0").strip()
        return bool(self.headers.get("Transfer-Encoding")) or length != "0"

    def _discard_input(self) -> None:
        """Stop sending, then read and drop what the client still sends, for a bounded time
        and size: closing a socket with unread input resets the connection, and the client
        would lose the answer it was sent."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + self.drain_limit_s
            budget = self.drain_limit_bytes
            while budget > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.connection.settimeout(left)
                chunk = self.rfile.read1(min(65536, budget))
                if not chunk:
                    break
                budget -= len(chunk)
        except OSError:
            pass  # the client is gone or too slow: nothing more to do for it
        self.close_connection = True


class EndpointServer(ThreadingHTTPServer):
    """A threading HTTP server of one of StreamLoop's endpoints: a thread per connection
    that does not hold the process up at exit, on IPv4 or, for an address with a colon, IPv6."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


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
