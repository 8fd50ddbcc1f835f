"""A stdlib HTTP server running on a daemon thread: what the registry API and the dashboard
share (the port it really got, its URL, and a clean stop)."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Self

__all__ = ["BackgroundHTTPServer"]


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
