"""The registry's read-only HTTP API (JSON over stdlib ``http.server``).

Routes, GET only:

- ``/models``: the model's versions, one summary each;
- ``/models/{version}``: one ``VersionView`` in full;
- ``/aliases``: ``{"champion": "<version>", ...}``;
- ``/healthz``: ``{"status": "ok"}`` (does not touch the store).

``?model=NAME`` reads another model than the one the API was started for. A version or
model name that is not 1 to 64 of ``A-Za-z0-9._-`` is a 400; an unknown route or version a
404; any other method a 405; a failing store a 503. Every answer, errors included, is a
JSON object, and request text only ever reaches the client inside JSON strings.
"""

from __future__ import annotations

import logging
import socket
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from shared.http import BackgroundHTTPServer, ReadOnlyHandler
from shared.registry import RegistryReader, VersionView, valid_name

__all__ = ["RegistryApi", "serve_api"]

log = logging.getLogger("streamloop.registry.http")


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _summary(v: VersionView) -> dict[str, Any]:
    return {
        "version": v.version,
        "number": v.number,
        "status": v.status,
        "aliases": v.aliases,
        "registered_at": v.registered_at,
        "dataset_size": v.dataset.size,
        "fresh_accuracy": v.fresh_accuracy,
        "reference_accuracy": v.reference_accuracy,
        "verdict": v.verdict,
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], reader: RegistryReader, model_name: str) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.reader = reader
        self.model_name = model_name


class _Handler(ReadOnlyHandler):
    server: _Server
    server_version = "streamloop-registry"
    logger = log

    def do_GET(self) -> None:
        try:
            status, body = HTTPStatus.OK, self._route()
        except _HttpError as exc:
            status, body = exc.status, {"error": exc.message}
        except Exception:
            log.exception("registry read failed", extra={"path": self.path})
            status, body = HTTPStatus.SERVICE_UNAVAILABLE, {"error": "registry unavailable"}
        self.send_json(status, body)

    def _route(self) -> Any:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        model = self._model(url.query)
        reader = self.server.reader
        match parts:
            case ["healthz"]:
                return {"status": "ok"}
            case ["models"]:
                return {
                    "model_name": model,
                    "versions": [_summary(v) for v in reader.versions(model)],
                }
            case ["models", version]:
                if not valid_name(version):
                    raise _HttpError(HTTPStatus.BAD_REQUEST, "invalid version")
                found = reader.get_version(model, version)
                if found is None:
                    raise _HttpError(HTTPStatus.NOT_FOUND, f"unknown version {version}")
                return found
            case ["aliases"]:
                return reader.aliases(model)
        raise _HttpError(HTTPStatus.NOT_FOUND, "no such route")

    def _model(self, query: str) -> str:
        names = parse_qs(query).get("model")
        if not names:
            return self.server.model_name
        if len(names) > 1 or not valid_name(names[0]):
            raise _HttpError(HTTPStatus.BAD_REQUEST, "invalid model name")
        return names[0]


class RegistryApi(BackgroundHTTPServer):
    """A running API server; ``close`` stops it."""

    def __init__(self, server: _Server) -> None:
        super().__init__(server, "registry-http")


def serve_api(
    reader: RegistryReader, model_name: str, host: str = "127.0.0.1", port: int = 0
) -> RegistryApi:
    """Serve the API for ``model_name`` on ``host:port`` (0 picks a free port) from a daemon
    thread. Raises OSError when the address cannot be bound."""
    return RegistryApi(_Server((host, port), reader, model_name))
