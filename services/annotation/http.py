"""The bridge's HTTP endpoint: the frames people see, and Label Studio's webhook.

- ``GET /frames/<frame_id>.png?sig=…``: the rendered frame. A person's browser fetches it from
  Label Studio's page, so it cannot send the read token; when a read token is set, each
  image URL instead carries a signature made with it (HMAC-SHA256 of the frame id), which
  opens that frame only (a client that can send the read token as a bearer token may). The
  page fetches it from another origin, so it is served with ``Access-Control-Allow-Origin: *``.
- ``POST /webhook``: Label Studio's ``ANNOTATION_CREATED``, ``ANNOTATION_UPDATED`` and
  ``ANNOTATIONS_DELETED``, answered at once (``Bridge.on_webhook`` queues the ids). Only the
  annotation's id is taken from the payload: the bridge reads the annotation back from Label
  Studio with its token, so a forged call can publish nothing Label Studio does not hold, and
  the endpoint needs no secret of its own.
- ``GET /healthz``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from prometheus_client import Counter
from pydantic import SecretStr

from services.annotation.bridge import Bridge
from shared.auth import SMALL_BODY_BYTES, HttpAuthSettings, authorize_read
from shared.http import ActionHandler, BackgroundHTTPServer, EndpointServer, HttpError
from shared.ports import Unavailable

__all__ = ["ImageSigner", "serve_bridge"]

log = logging.getLogger("streamloop.annotation")

WEBHOOKS = Counter(
    "streamloop_annotation_webhooks",
    "Label Studio webhook calls, by action (malformed: refused with 400).",
    ["action"],
)
_FRAME = re.compile(r"^/frames/([^/]{1,128})\.png$")
WEBHOOK_BODY_BYTES = 4 * SMALL_BODY_BYTES


class ImageSigner:
    """Image URLs of ``public_url`` signed with ``key`` (the read token; None: unsigned)."""

    def __init__(self, public_url: str, key: SecretStr | None) -> None:
        self.public_url = public_url.rstrip("/")
        self._key = key.get_secret_value().encode() if key is not None else None

    def sign(self, frame_id: str) -> str:
        if self._key is None:
            return ""
        return hmac.new(self._key, frame_id.encode(), hashlib.sha256).hexdigest()[:32]

    def url(self, frame_id: str) -> str:
        path = f"{self.public_url}/frames/{quote(frame_id, safe='')}.png"
        return path + (f"?sig={self.sign(frame_id)}" if self._key is not None else "")

    def admits(self, frame_id: str, sig: str) -> bool:
        return self._key is None or hmac.compare_digest(self.sign(frame_id), sig)


class _Server(EndpointServer):
    def __init__(
        self,
        address: tuple[str, int],
        bridge: Bridge,
        signer: ImageSigner,
        auth: HttpAuthSettings,
    ) -> None:
        super().__init__(address, _Handler)
        self.bridge = bridge
        self.signer = signer
        self.auth = auth


class _Handler(ActionHandler):
    server: _Server
    server_version = "streamloop-annotation"
    logger = log

    def allowed_methods(self) -> str:
        return "POST" if urlsplit(self.path).path == "/webhook" else "GET"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self.send_json(HTTPStatus.OK, {"status": "ok"})
            return
        match = _FRAME.match(url.path)
        if match is None:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": "no such path"})
            return
        frame_id = unquote(match.group(1))
        sig = (parse_qs(url.query).get("sig") or [""])[0]
        bearer = authorize_read(self.headers.get("Authorization"), self.server.auth)
        if not self.server.signer.admits(frame_id, sig) and not (
            bearer.allowed and self.server.auth.read_token is not None
        ):
            self.send_json(HTTPStatus.FORBIDDEN, {"error": "bad or missing image signature"})
            return
        try:
            png = self.server.bridge.image(frame_id)
        except Unavailable:
            self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "image store unavailable"})
            return
        if png is None:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": "no such frame"})
            return
        self.send_bytes(
            HTTPStatus.OK,
            png,
            "image/png",
            cache="private, max-age=86400",
            headers={"Access-Control-Allow-Origin": "*"},
        )

    def post(self) -> tuple[HTTPStatus, Any]:
        if urlsplit(self.path).path != "/webhook":
            raise HttpError(HTTPStatus.NOT_FOUND, "no such path")
        body = self.read_json(WEBHOOK_BODY_BYTES)
        try:
            answer = self.server.bridge.on_webhook(body)
        except ValueError as exc:
            WEBHOOKS.labels("malformed").inc()
            raise HttpError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        WEBHOOKS.labels(str(body.get("action"))[:40]).inc()
        return HTTPStatus.OK, answer


class BridgeHttp(BackgroundHTTPServer):
    def __init__(self, server: _Server) -> None:
        super().__init__(server, "annotation-http")


def serve_bridge(
    bridge: Bridge, auth: HttpAuthSettings, public_url: str, host: str, port: int
) -> BridgeHttp:
    """Serve the bridge's endpoint on ``host:port`` (0 picks a free port) from a thread;
    images open with their signature or the read token (``auth``)."""
    http = BridgeHttp(_Server((host, port), bridge, ImageSigner(public_url, auth.read_token), auth))
    log.info("annotation bridge listening", extra={"url": http.url})
    return http
