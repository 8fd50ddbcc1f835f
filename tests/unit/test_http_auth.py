"""Access control of the HTTP endpoints: the token checks, the settings (and their refusal
to start in production with weak tokens), and the registry API's operator actions and the
dashboard over real local sockets, with a fake publisher instead of Kafka."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from services.monitoring.board import DashboardState
from services.monitoring.dashboard import DashboardServer, serve_dashboard
from services.monitoring.settings import MonitoringSettings
from services.registry.http import OPERATOR_TOKEN_ENV, RegistryApi, serve_api
from services.registry.settings import RegistrySettings
from services.serving.settings import ServingSettings
from shared.auth import (
    PREDICT_BODY_BYTES,
    SMALL_BODY_BYTES,
    ApiAuthSettings,
    HttpAuthSettings,
    OperatorApiAuthSettings,
    authorize_operator,
    authorize_read,
    check_bearer,
    check_length,
)
from shared.events import Event, ModelLifecycle, RetrainRequest
from shared.registry import DEFAULT_MODEL_NAME, MemoryRegistry, lifecycle_key
from shared.settings import RedisSettings
from shared.topics import Topics

OP = "op-" + "x" * 29
READ = "read-" + "y" * 27
STRONG_REDIS = RedisSettings(password=SecretStr("a-real-redis-password"))


def bearer(token: str) -> str:
    return f"Bearer {token}"


# --- the checks ------------------------------------------------------------------------


def test_missing_credentials_are_401_with_a_bearer_challenge() -> None:
    for header in (None, "", "Bearer", "Bearer   ", "Token abc", f"Basic {OP}"):
        d = check_bearer(header, SecretStr(OP))
        assert d.status is HTTPStatus.UNAUTHORIZED and not d.allowed
        assert d.headers == (("WWW-Authenticate", 'Bearer realm="streamloop"'),)


def test_a_wrong_token_is_403_and_the_right_one_passes() -> None:
    assert check_bearer(bearer("nope"), SecretStr(OP)).status is HTTPStatus.FORBIDDEN
    assert check_bearer(bearer(OP + "x"), SecretStr(OP)).status is HTTPStatus.FORBIDDEN
    assert check_bearer(bearer(OP[:-1]), SecretStr(OP)).status is HTTPStatus.FORBIDDEN
    assert check_bearer(bearer(OP), SecretStr(OP)).allowed
    assert check_bearer(f"bearer  {OP} ", SecretStr(OP)).allowed
    # Any of several tokens; None entries are skipped.
    assert check_bearer(bearer(READ), None, SecretStr(OP), SecretStr(READ)).allowed
    with pytest.raises(ValueError):
        check_bearer(bearer(OP), None)


def test_basic_credentials_carry_the_token_only_when_asked() -> None:
    creds = "Basic " + base64.b64encode(f"anyone:{READ}".encode()).decode()
    assert check_bearer(creds, SecretStr(READ), basic=True).allowed
    assert check_bearer(creds, SecretStr(READ)).status is HTTPStatus.UNAUTHORIZED
    wrong = "Basic " + base64.b64encode(b"anyone:guess").decode()
    assert check_bearer(wrong, SecretStr(READ), basic=True).status is HTTPStatus.FORBIDDEN
    for bad in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
        assert check_bearer(bad, SecretStr(READ), basic=True).status is HTTPStatus.UNAUTHORIZED
    challenge = check_bearer(None, SecretStr(READ), basic=True).headers
    assert [v.split()[0] for _, v in challenge] == ["Basic", "Bearer"]


def test_reads_are_open_without_a_read_token_and_take_either_token_with_one() -> None:
    open_ = HttpAuthSettings.model_construct()
    assert authorize_read(None, open_).allowed
    guarded = HttpAuthSettings(operator_token=SecretStr(OP), read_token=SecretStr(READ))
    assert authorize_read(None, guarded).status is HTTPStatus.UNAUTHORIZED
    assert authorize_read(bearer("x"), guarded).status is HTTPStatus.FORBIDDEN
    assert authorize_read(bearer(READ), guarded).allowed
    assert authorize_read(bearer(OP), guarded).allowed


def test_operator_actions_are_closed_without_an_operator_token() -> None:
    d = authorize_operator(bearer(OP), HttpAuthSettings.model_construct(), "SOME_VAR")
    assert d.status is HTTPStatus.FORBIDDEN
    assert d.message == "operator actions are disabled: set SOME_VAR"
    auth = HttpAuthSettings(operator_token=SecretStr(OP), read_token=SecretStr(READ))
    assert authorize_operator(bearer(OP), auth, "V").allowed
    # The read token does not open operator actions.
    assert authorize_operator(bearer(READ), auth, "V").status is HTTPStatus.FORBIDDEN
    assert authorize_operator(None, auth, "V").status is HTTPStatus.UNAUTHORIZED


@pytest.mark.parametrize(
    ("lengths", "chunked", "required", "status"),
    [
        ([], False, True, HTTPStatus.LENGTH_REQUIRED),
        (["10"], True, True, HTTPStatus.LENGTH_REQUIRED),
        ([], False, False, None),
        ([], True, False, None),
        (["10"], False, True, None),
        (["100"], False, True, None),
        (["101"], False, True, HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
        (["-1"], False, True, HTTPStatus.BAD_REQUEST),
        (["1e3"], False, True, HTTPStatus.BAD_REQUEST),
        (["10", "10"], False, True, HTTPStatus.BAD_REQUEST),
    ],
)
def test_declared_body_lengths(
    lengths: list[str], chunked: bool, required: bool, status: HTTPStatus | None
) -> None:
    assert check_length(lengths, 100, chunked=chunked, required=required).status is status


# --- settings --------------------------------------------------------------------------


def test_tokens_are_masked_and_blank_means_unset() -> None:
    auth = HttpAuthSettings(operator_token=SecretStr(OP), read_token=" ")
    assert OP not in repr(auth) and OP not in str(auth) and OP not in auth.model_dump_json()
    assert auth.read_token is None


def test_body_limits_per_service() -> None:
    from services.ingest.logic import DEFAULT_MAX_IMAGE_BYTES

    # An image the stream accepts is accepted by POST /predict.
    assert ServingSettings().http_auth.max_body_bytes == PREDICT_BODY_BYTES
    assert PREDICT_BODY_BYTES == DEFAULT_MAX_IMAGE_BYTES == 8_000_000
    assert RegistrySettings().http_auth.max_body_bytes == SMALL_BODY_BYTES == 64 * 1024
    assert MonitoringSettings().http_auth.max_body_bytes == SMALL_BODY_BYTES


def test_shared_variables_reach_every_service_and_a_service_may_override(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMLOOP_HTTP_OPERATOR_TOKEN", OP)
    monkeypatch.setenv("STREAMLOOP_HTTP_READ_TOKEN", READ)
    monkeypatch.setenv("STREAMLOOP_REGISTRY_HTTP_AUTH__OPERATOR_TOKEN", "registry-only-token")
    monkeypatch.setenv("STREAMLOOP_SERVING_HTTP_AUTH__MAX_BODY_BYTES", "2048")
    registry = RegistrySettings().http_auth
    assert registry.operator_token is not None and registry.read_token is not None
    assert registry.operator_token.get_secret_value() == "registry-only-token"
    assert registry.read_token.get_secret_value() == READ
    serving = ServingSettings().http_auth
    assert serving.max_body_bytes == 2048
    assert serving.read_token is not None and serving.read_token.get_secret_value() == READ
    monitoring = MonitoringSettings().http_auth
    assert monitoring.operator_token is not None
    assert monitoring.operator_token.get_secret_value() == OP


@pytest.mark.parametrize("token", [None, "", "  ", "changeme", "Secret", "streamloop-dev", "short"])
def test_production_refuses_a_registry_without_a_strong_operator_token(
    token: str | None,
) -> None:
    auth = OperatorApiAuthSettings(operator_token=token)
    with pytest.raises(ValidationError, match=r"http_auth\.operator_token"):
        RegistrySettings(environment="production", redis=STRONG_REDIS, http_auth=auth)
    # Development starts with anything (the actions are just closed without a token).
    assert RegistrySettings(http_auth=auth).environment == "development"


def test_production_accepts_strong_tokens() -> None:
    auth = OperatorApiAuthSettings(operator_token=SecretStr(OP), read_token=SecretStr(READ))
    ok = RegistrySettings(environment="production", redis=STRONG_REDIS, http_auth=auth)
    assert ok.http_auth.operator_token == SecretStr(OP)


def test_production_checks_the_read_token_when_set_and_needs_no_unused_operator_token() -> None:
    # Serving and the dashboard take no operator actions: no operator token needed.
    ServingSettings(environment="production", redis=STRONG_REDIS)
    MonitoringSettings(environment="production", redis=STRONG_REDIS)
    with pytest.raises(ValidationError, match=r"http_auth\.read_token"):
        ServingSettings(
            environment="production",
            redis=STRONG_REDIS,
            http_auth=HttpAuthSettings(read_token=SecretStr("password")),
        )
    with pytest.raises(ValidationError, match=r"http_auth\.operator_token"):
        MonitoringSettings(
            environment="production",
            redis=STRONG_REDIS,
            http_auth=ApiAuthSettings(operator_token=SecretStr("changeme")),
        )
    with pytest.raises(ValidationError, match="refusing to start in production"):
        RegistrySettings(environment="production", redis=STRONG_REDIS)


# --- the registry API ------------------------------------------------------------------


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Event, str | None]] = []
        self.flushes = 0
        self.fail = False

    def publish(self, topic: str, event: Event, *, key: str | None = None) -> object:
        if self.fail:
            raise RuntimeError("kafka is away")
        self.sent.append((topic, event, key))
        return None

    def flush(self, timeout_s: float | None = None) -> None:
        self.flushes += 1


def start_api(publisher: FakePublisher | None, **auth: Any) -> RegistryApi:
    return serve_api(
        MemoryRegistry(),
        DEFAULT_MODEL_NAME,
        auth=OperatorApiAuthSettings(**auth),
        publisher=publisher,
    )


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def api(publisher: FakePublisher) -> Iterator[RegistryApi]:
    server = start_api(publisher, operator_token=SecretStr(OP))
    yield server
    server.close()


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, http.client.HTTPMessage]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = bearer(token)
    data: bytes | None
    if body is None:
        data = None
    elif isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None, resp.headers
    finally:
        conn.close()


def raw(port: int, data: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_reads_stay_open_and_actions_need_the_operator_token(
    api: RegistryApi, publisher: FakePublisher
) -> None:
    assert call(api.port, "GET", "/models")[0] == 200
    status, body, headers = call(api.port, "POST", "/rollback", {"reason": "x"})
    assert status == 401 and body == {"error": "authentication required"}
    assert headers["WWW-Authenticate"] == 'Bearer realm="streamloop"'
    status, body, _ = call(api.port, "POST", "/rollback", {"reason": "x"}, token="wrong")
    assert status == 403 and body == {"error": "invalid token"}
    assert publisher.sent == []


def test_a_rollback_publishes_the_cli_command_and_answers_its_event_id(
    api: RegistryApi, publisher: FakePublisher
) -> None:
    status, body, _ = call(api.port, "POST", "/rollback", {"reason": "bad night"}, token=OP)
    assert status == 202
    ((topic, event, key),) = publisher.sent
    assert isinstance(event, ModelLifecycle) and topic == Topics.MODELS_LIFECYCLE
    assert body == {"event_id": event.event_id, "topic": Topics.MODELS_LIFECYCLE}
    assert event.action == "rollback_requested" and event.model_version is None
    assert event.model_name == DEFAULT_MODEL_NAME and event.reason == "bad night"
    assert event.source == "registry-api" and event.actor == "operator@http"
    assert key == lifecycle_key(event) and publisher.flushes == 1


def test_promote_with_force_and_without_a_body(api: RegistryApi, publisher: FakePublisher) -> None:
    body = {"force": True, "reason": "trust me"}
    assert call(api.port, "POST", "/models/v7/promote", body, token=OP)[0] == 202
    assert call(api.port, "POST", "/models/v8/promote?model=other", token=OP)[0] == 202
    first, second = (e for _, e, _ in publisher.sent)
    assert isinstance(first, ModelLifecycle) and isinstance(second, ModelLifecycle)
    assert (first.action, first.model_version, first.details) == (
        "promote_requested",
        "v7",
        {"force": True},
    )
    assert (second.model_name, second.model_version, second.details) == ("other", "v8", {})
    assert second.reason == "operator request"


def test_retrain_publishes_a_request_with_its_key(
    api: RegistryApi, publisher: FakePublisher
) -> None:
    status, body, _ = call(api.port, "POST", "/retrain", {"reason": "drift", "key": "k-1"}, OP)
    assert status == 202
    ((topic, event, key),) = publisher.sent
    assert isinstance(event, RetrainRequest) and topic == Topics.RETRAIN_REQUESTS
    assert key == DEFAULT_MODEL_NAME
    assert (event.idempotency_key, event.reason, event.trigger) == ("k-1", "drift", "operator")
    assert body == {
        "event_id": event.event_id,
        "topic": Topics.RETRAIN_REQUESTS,
        "idempotency_key": "k-1",
    }
    call(api.port, "POST", "/retrain", {}, OP)
    assert publisher.sent[1][1].idempotency_key.startswith("operator:")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/rollback", b"{not json", "body is not valid JSON"),
        ("/rollback", b"[1, 2]", "body must be a JSON object"),
        ("/rollback", b'{"reason": "x", "extra": 1}', "invalid body: extra"),
        ("/rollback", b'{"reason": 5}', "invalid body: reason"),
        ("/rollback", b'{"reason": ""}', "invalid body: reason"),
        ("/models/v1/promote", b'{"force": "yes"}', "invalid body: force"),
        ("/retrain", b'{"key": ""}', "invalid body: key"),
        ("/models/a%20b/promote", b"{}", "invalid version"),
        ("/rollback?model=a/b", b"{}", "invalid model name"),
    ],
)
def test_bad_bodies_are_400(
    api: RegistryApi, publisher: FakePublisher, path: str, body: bytes, message: str
) -> None:
    status, answer, _ = call(
        api.port, "POST", path, body, OP, headers={"Content-Type": "application/json"}
    )
    assert status == 400 and answer["error"].startswith(message)
    assert publisher.sent == []


def test_a_body_needs_a_length_a_json_type_and_a_bounded_size(
    publisher: FakePublisher,
) -> None:
    server = start_api(publisher, operator_token=SecretStr(OP), max_body_bytes=1000)
    auth = f"Authorization: Bearer {OP}\r\n".encode()
    try:
        status, body = raw(server.port, b"POST /rollback HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
        assert status == 411 and json.loads(body) == {"error": "Content-Length required"}
        chunked = b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        status, _ = raw(server.port, b"POST /rollback HTTP/1.1\r\n" + auth + chunked)
        assert status == 411
        # Too large: answered before the body is read, and the client still gets the answer.
        big = b'{"reason": "' + b"x" * 2_000_000 + b'"}'
        status, body, headers = call(server.port, "POST", "/rollback", big, OP)
        assert status == 413 and body == {"error": "body larger than 1000 bytes"}
        assert headers["Connection"] == "close"
        status, _, _ = call(
            server.port, "POST", "/rollback", b"reason=x", OP, {"Content-Type": "text/plain"}
        )
        assert status == 415
        assert publisher.sent == []
        # The server is still serving after all that.
        assert call(server.port, "POST", "/rollback", {"reason": "ok"}, OP)[0] == 202
    finally:
        server.close()


def test_an_unauthenticated_large_body_is_refused_without_reading_it(
    api: RegistryApi,
) -> None:
    status, _, headers = call(api.port, "POST", "/rollback", b"x" * 3_000_000)
    assert status == 401 and headers["Connection"] == "close"


def test_methods_per_route(api: RegistryApi) -> None:
    status, _, headers = call(api.port, "GET", "/rollback")
    assert status == 405 and headers["Allow"] == "POST"
    status, _, headers = call(api.port, "PUT", "/models/v1/promote")
    assert status == 405 and headers["Allow"] == "POST"
    status, _, headers = call(api.port, "POST", "/models", {}, OP)
    assert status == 405 and headers["Allow"] == "GET"
    assert call(api.port, "POST", "/nope", {}, OP)[0] == 404
    assert call(api.port, "POST", "/models/v1/demote", {}, OP)[0] == 404


def test_actions_are_disabled_without_an_operator_token(publisher: FakePublisher) -> None:
    server = start_api(publisher)
    try:
        status, body, _ = call(server.port, "POST", "/rollback", {}, token="anything")
        assert status == 403
        assert body == {"error": f"operator actions are disabled: set {OPERATOR_TOKEN_ENV}"}
        assert publisher.sent == []
    finally:
        server.close()


def test_kafka_trouble_is_503(publisher: FakePublisher) -> None:
    publisher.fail = True
    server = start_api(publisher, operator_token=SecretStr(OP))
    nowhere = start_api(None, operator_token=SecretStr(OP))
    try:
        status, body, _ = call(server.port, "POST", "/rollback", {}, OP)
        assert status == 503 and "try again" in body["error"]
        assert call(nowhere.port, "POST", "/rollback", {}, OP)[0] == 503
    finally:
        server.close()
        nowhere.close()


def test_a_read_token_guards_reads_but_not_health(publisher: FakePublisher) -> None:
    server = start_api(publisher, operator_token=SecretStr(OP), read_token=SecretStr(READ))
    try:
        assert call(server.port, "GET", "/healthz")[0] == 200
        for path in ("/models", "/models/v1", "/aliases", "/nope"):
            status, _, headers = call(server.port, "GET", path)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
            assert call(server.port, "GET", path, token="wrong")[0] == 403
        assert call(server.port, "GET", "/models", token=READ)[0] == 200
        assert call(server.port, "GET", "/aliases", token=OP)[0] == 200
        # The read token does not open operator actions.
        assert call(server.port, "POST", "/rollback", {}, READ)[0] == 403
    finally:
        server.close()


def test_tokens_never_reach_the_logs(
    publisher: FakePublisher, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_api(publisher, operator_token=SecretStr(OP), read_token=SecretStr(READ))
    try:
        with caplog.at_level(logging.DEBUG):
            call(server.port, "GET", "/models", token=READ)
            call(server.port, "GET", "/models", token=READ + "-wrong")
            call(server.port, "POST", "/rollback", {"reason": "r"}, OP)
            call(server.port, "POST", "/rollback", {"reason": "r"}, OP + "-wrong")
            call(server.port, "POST", "/rollback", b"{bad", OP)
            publisher.fail = True
            call(server.port, "POST", "/retrain", {}, OP)
    finally:
        server.close()
    text = "\n".join(f"{r.getMessage()} {r.__dict__} {r.exc_text or ''}" for r in caplog.records)
    assert "/rollback" in text  # the requests were logged
    assert OP not in text and READ not in text
    assert all(OP not in e.model_dump_json() for _, e, _ in publisher.sent)


# --- the dashboard ---------------------------------------------------------------------


@pytest.fixture
def dashboard() -> Iterator[DashboardServer]:
    srv = serve_dashboard(
        DashboardState(),
        None,
        DEFAULT_MODEL_NAME,
        0.8,
        auth=ApiAuthSettings(read_token=SecretStr(READ)),
    )
    yield srv
    srv.close()


def test_the_dashboard_needs_the_read_token_but_health_does_not(
    dashboard: DashboardServer,
) -> None:
    assert call(dashboard.port, "GET", "/healthz")[0] == 200
    for path in ("/", "/api/state", "/static/plotly.min.js", "/nope"):
        status, _, headers = call(dashboard.port, "GET", path)
        assert status == 401
        assert headers.get_all("WWW-Authenticate")[0].startswith("Basic ")
        assert call(dashboard.port, "GET", path, token="wrong")[0] == 403
    status, body, _ = call(dashboard.port, "GET", "/api/state", token=READ)
    assert status == 200 and body["model_name"] == DEFAULT_MODEL_NAME
    # What a browser sends after its login prompt.
    creds = base64.b64encode(f"me:{READ}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", dashboard.port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Authorization": f"Basic {creds}"})
        resp = conn.getresponse()
        assert resp.status == 200 and b"accuracy-chart" in resp.read()
    finally:
        conn.close()
    # Still GET-only.
    status, _, headers = call(dashboard.port, "POST", "/api/state", {}, READ)
    assert status == 405 and headers["Allow"] == "GET"
