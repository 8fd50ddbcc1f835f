"""The registry's HTTP API (JSON over stdlib ``http.server``).

Reads, GET:

- ``/models``: the model's versions, one summary each;
- ``/models/{version}``: one ``VersionView`` in full;
- ``/aliases``: ``{"champion": "<version>", ...}``;
- ``/healthz``: ``{"status": "ok"}`` (does not touch the store, needs no token).

Operator actions, POST with an optional JSON object body:

- ``/models/{version}/promote`` ``{"force": bool, "reason": str}``;
- ``/rollback`` ``{"reason": str}``;
- ``/retrain`` ``{"reason": str, "key": str}`` (``key``: the idempotency key);
- ``/models/import?architecture=A&classes=c1,c2,…[&input=WxH][&note=…][&file_name=…]`` with
  a safetensors file as the body (``application/octet-stream``, at most ``import_max_bytes``):
  the file is checked against the architecture, stored, and its import request published,
  as ``streamloop models import`` does; 202 with the ``version`` it will be, 200 when that
  version is already registered, 422 when the file is refused (not safetensors, or tensors
  that do not fit).

An action publishes the same event as ``streamloop models promote|rollback`` or
``streamloop retrain`` and answers 202 with that event's ``event_id``: the registry's
answer, an event whose ``cause_id`` is that id, follows on ``models.lifecycle``, exactly as
for the CLI. Actions need the operator token (without one configured they are refused,
403); reads need the read token when one is set (the operator token also does). A body
needs ``Content-Length`` (411), may not exceed ``max_body_bytes`` (413, before it is read)
and must be a JSON object (400).

``?model=NAME`` addresses another model than the one the API was started for. A version or
model name that is not 1 to 64 of ``A-Za-z0-9._-`` is a 400; an unknown route or version a
404; a method a route does not take a 405; a failing store, or Kafka not taking a command,
a 503. Every answer, errors included, is a JSON object, and request text only ever reaches
the client inside JSON strings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.auth import OperatorApiAuthSettings, authorize_operator, authorize_read
from shared.commands import (
    import_request,
    lifecycle_command,
    publish_command,
    publish_retrain,
    retrain_request,
)
from shared.events import Event
from shared.http import ActionHandler, BackgroundHTTPServer, EndpointServer, HttpError
from shared.ports import Publisher
from shared.registry import RegistryReader, VersionView, valid_name
from shared.settings import TaskSettings
from shared.topics import Topics

__all__ = ["OPERATOR_TOKEN_ENV", "ImportTarget", "RegistryApi", "serve_api"]

log = logging.getLogger("streamloop.registry.http")

OPERATOR_TOKEN_ENV = "STREAMLOOP_REGISTRY_HTTP_AUTH__OPERATOR_TOKEN"
"""The variable that enables operator actions (``STREAMLOOP_HTTP_OPERATOR_TOKEN`` sets the
token of every service at once)."""

SOURCE = "registry-api"
ACTOR = "operator@http"
"""The ``actor`` of commands that came through the API (the CLI names the user)."""

PUBLISH_TIMEOUT_S = 10.0
"""How long an action waits for Kafka to acknowledge its event before answering 503."""


class _Body(BaseModel):
    """Fields every action takes; unknown fields and loose types are refused, so a typo in
    ``force`` cannot silently promote nothing or everything."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    reason: str = Field(default="operator request", min_length=1, max_length=500)


class _PromoteBody(_Body):
    force: bool = False


class _RetrainBody(_Body):
    key: str | None = Field(default=None, min_length=1, max_length=128)


_B = TypeVar("_B", bound=_Body)
_E = TypeVar("_E", bound=Event)


def _parse(cls: type[_B], raw: dict[str, Any]) -> _B:
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        # Field names and messages only: the input itself is not echoed back.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise HttpError(HTTPStatus.BAD_REQUEST, f"invalid body: {problems}"[:500]) from None


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


@dataclass(frozen=True)
class ImportTarget:
    """What ``POST /models/import`` needs: the artifact store's root, the task imported
    weights default to, and the largest file taken."""

    store_root: Path
    task: TaskSettings
    max_bytes: int


class _Server(EndpointServer):
    def __init__(
        self,
        address: tuple[str, int],
        reader: RegistryReader,
        model_name: str,
        auth: OperatorApiAuthSettings,
        publisher: Publisher | None,
        imports: ImportTarget | None,
    ) -> None:
        super().__init__(address, _Handler)
        self.reader = reader
        self.model_name = model_name
        self.auth = auth
        self.publisher = publisher
        self.imports = imports


_ACTIONS = frozenset({("rollback",), ("retrain",), ("models", "import")})


class _Handler(ActionHandler):
    server: _Server
    server_version = "streamloop-registry"
    logger = log

    def allowed_methods(self) -> str:
        parts = _parts(self.path)
        if tuple(parts) in _ACTIONS or (len(parts) == 3 and parts[::2] == ["models", "promote"]):
            return "POST"
        return "GET"

    def do_GET(self) -> None:
        try:
            status, body = HTTPStatus.OK, self._route()
            headers: tuple[tuple[str, str], ...] = ()
            allow = None
        except HttpError as exc:
            status, body, headers = exc.status, {"error": exc.message}, exc.headers
            allow = self.allowed_methods() if status is HTTPStatus.METHOD_NOT_ALLOWED else None
        except Exception:
            log.exception("registry read failed", extra={"path": self.path})
            status, body = HTTPStatus.SERVICE_UNAVAILABLE, {"error": "registry unavailable"}
            headers, allow = (), None
        self.send_json(status, body, allow=allow, headers=headers)

    def _route(self) -> Any:
        url = urlsplit(self.path)
        parts = _parts(self.path)
        if parts == ["healthz"]:
            return {"status": "ok"}
        if self.allowed_methods() == "POST":
            raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")
        decision = authorize_read(self.headers.get("Authorization"), self.server.auth)
        if not decision.allowed:
            raise HttpError.refused(decision)
        model = self._model(url.query)
        reader = self.server.reader
        match parts:
            case ["models"]:
                return {
                    "model_name": model,
                    "versions": [_summary(v) for v in reader.versions(model)],
                }
            case ["models", version]:
                if not valid_name(version):
                    raise HttpError(HTTPStatus.BAD_REQUEST, "invalid version")
                found = reader.get_version(model, version)
                if found is None:
                    raise HttpError(HTTPStatus.NOT_FOUND, f"unknown version {version}")
                return found
            case ["aliases"]:
                return reader.aliases(model)
        raise HttpError(HTTPStatus.NOT_FOUND, "no such route")

    def post(self) -> tuple[HTTPStatus, Any]:
        parts = _parts(self.path)
        if self.allowed_methods() != "POST":
            known = parts == ["healthz"] or (
                bool(parts) and parts[0] in ("models", "aliases") and len(parts) <= 2
            )
            if known:
                raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")
            raise HttpError(HTTPStatus.NOT_FOUND, "no such route")
        auth = self.server.auth
        decision = authorize_operator(self.headers.get("Authorization"), auth, OPERATOR_TOKEN_ENV)
        if not decision.allowed:
            raise HttpError.refused(decision)
        query = urlsplit(self.path).query
        model = self._model(query)
        if parts == ["models", "import"]:
            return self._import(model, query)
        if parts[0] == "models" and not valid_name(parts[1]):
            raise HttpError(HTTPStatus.BAD_REQUEST, "invalid version")
        raw = self.read_json(auth.max_body_bytes)
        match parts:
            case ["models", version, "promote"]:
                promote = _parse(_PromoteBody, raw)
                command = lifecycle_command(
                    model,
                    "promote_requested",
                    version,
                    actor=ACTOR,
                    reason=promote.reason,
                    force=promote.force,
                    source=SOURCE,
                )
                return self._publish(command, Topics.MODELS_LIFECYCLE, publish_command)
            case ["rollback"]:
                body = _parse(_Body, raw)
                command = lifecycle_command(
                    model,
                    "rollback_requested",
                    None,
                    actor=ACTOR,
                    reason=body.reason,
                    source=SOURCE,
                )
                return self._publish(command, Topics.MODELS_LIFECYCLE, publish_command)
            case _:
                retrain = _parse(_RetrainBody, raw)
                request = retrain_request(model, retrain.reason, retrain.key, source=SOURCE)
                answer = self._publish(request, Topics.RETRAIN_REQUESTS, publish_retrain)
                answer[1]["idempotency_key"] = request.idempotency_key
                return answer

    def _import(self, model: str, query: str) -> tuple[HTTPStatus, dict[str, Any]]:
        target = self.server.imports
        if target is None:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "this API does not take imports")
        params = parse_qs(query)
        architecture = _required(params, "architecture")
        classes = _required(params, "classes")
        note = _param(params, "note") or ""
        if len(note) > 500:
            raise HttpError(HTTPStatus.BAD_REQUEST, "note: at most 500 characters")
        data = self.read_body(target.max_bytes, "application/octet-stream")
        if not data:
            raise HttpError(HTTPStatus.BAD_REQUEST, "send the safetensors file as the body")
        # torch loads on the first import, not when the registry starts.
        from shared.artifacts import ArtifactStore, FormatError
        from shared.imports import ImportRefusedError, import_weights, spec_for_import

        try:
            spec = spec_for_import(architecture, classes, _param(params, "input"), target.task)
            imported = import_weights(
                data,
                _param(params, "file_name") or "weights.safetensors",
                spec,
                ArtifactStore(target.store_root),
                actor=ACTOR,
                note=note,
            )
        except (ImportRefusedError, FormatError) as exc:
            raise HttpError(
                HTTPStatus.UNPROCESSABLE_ENTITY, f"not imported: {exc}"[:1000]
            ) from None
        version = imported.artifact_sha256[:12]
        known = self.server.reader.get_version(model, version)
        if known is not None:
            return HTTPStatus.OK, {"version": version, "status": known.status, "imported": False}
        request = import_request(model, imported, source=SOURCE)
        status, answer = self._publish(request, Topics.RETRAIN_REQUESTS, publish_retrain)
        return status, {**answer, "idempotency_key": request.idempotency_key, "version": version}

    def _publish(
        self, event: _E, topic: str, publish: Callable[[Publisher, _E, float | None], None]
    ) -> tuple[HTTPStatus, dict[str, Any]]:
        publisher = self.server.publisher
        if publisher is None:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "this API cannot publish commands")
        try:
            publish(publisher, event, PUBLISH_TIMEOUT_S)
        except Exception:
            log.exception("operator action not published", extra={"topic": topic})
            raise HttpError(
                HTTPStatus.SERVICE_UNAVAILABLE, "could not publish the command; try again"
            ) from None
        log.info(
            "operator action published",
            extra={"topic": topic, "event_id": event.event_id, "event_type": event.event_type},
        )
        return HTTPStatus.ACCEPTED, {"event_id": event.event_id, "topic": topic}

    def _model(self, query: str) -> str:
        names = parse_qs(query).get("model")
        if not names:
            return self.server.model_name
        if len(names) > 1 or not valid_name(names[0]):
            raise HttpError(HTTPStatus.BAD_REQUEST, "invalid model name")
        return names[0]


def _param(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"query parameter {name} given twice")
    return values[0]


def _required(params: dict[str, list[str]], name: str) -> str:
    value = _param(params, name)
    if value is None:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"query parameter {name} is required")
    return value


def _parts(path: str) -> list[str]:
    return [unquote(p) for p in urlsplit(path).path.split("/") if p]


class RegistryApi(BackgroundHTTPServer):
    """A running API server; ``close`` stops it."""

    def __init__(self, server: _Server) -> None:
        super().__init__(server, "registry-http")


def serve_api(
    reader: RegistryReader,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    auth: OperatorApiAuthSettings | None = None,
    publisher: Publisher | None = None,
    imports: ImportTarget | None = None,
) -> RegistryApi:
    """Serve the API for ``model_name`` on ``host:port`` (0 picks a free port) from a daemon
    thread. ``auth`` holds the tokens and body limit (default: reads open, actions closed);
    ``publisher`` carries operator actions to Kafka (None answers them 503); ``imports``
    enables ``POST /models/import`` (None answers it 503). Raises OSError
    when the address cannot be bound."""
    # model_construct: the defaults as they are, without reading the environment, which only
    # a service's __main__ does.
    auth = auth or OperatorApiAuthSettings.model_construct()
    api = RegistryApi(_Server((host, port), reader, model_name, auth, publisher, imports))
    log.info(
        "registry api listening",
        extra={
            "url": api.url,
            "operator_actions": auth.operator_token is not None,
            "reads_protected": auth.read_token is not None,
        },
    )
    return api
