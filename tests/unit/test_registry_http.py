"""The registry's HTTP API, on a real local socket, over an in-memory registry."""

from __future__ import annotations

import http.client
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from services.registry.http import RegistryApi, serve_api
from services.registry.state import RegistryState
from shared.events import DatasetSnapshot, ModelEvaluated, ModelTrained
from shared.registry import DEFAULT_MODEL_NAME, MemoryRegistry, VersionView

MODEL = DEFAULT_MODEL_NAME


def trained(version: str, model: str = MODEL) -> ModelTrained:
    return ModelTrained(
        model_name=model,
        model_version=version,
        idempotency_key=f"key-{version}",
        artifact_uri=f"file:///a/{version}",
        sha256="ab" * 32,
        dataset=DatasetSnapshot(
            snapshot_id="s",
            frame_ids_sha256="cd" * 32,
            size=321,
            per_class={"car": 321},
            per_condition={"day": 321},
            topic_offsets={"examples:0": 321},
            holdout_size=20,
        ),
        hyperparameters={"lr": 0.1},
        metrics={"loss": 0.2},
        code_version="c0",
        seed=1,
        duration_s=3.0,
    )


def registry_of(model: str, blessed: list[str], rejected: list[str]) -> RegistryState:
    state = RegistryState(model)
    offset = 0

    def publish(events: list[Any]) -> None:
        nonlocal offset
        for event in events:
            state.apply(event, offset)
            offset += 1
            publish(state.decide(event))

    for v in blessed + rejected:
        publish(state.on_trained(trained(v, model)))
        publish(
            state.on_evaluated(
                ModelEvaluated(
                    model_name=model,
                    model_version=v,
                    champion_version=None,
                    verdict="blessed" if v in blessed else "rejected",
                    reasons=[],
                    metrics={
                        "holdouts": {
                            "fresh": {"candidate": {"accuracy": 0.75}},
                            "reference": {"candidate": {"accuracy": float("nan")}},
                        }
                    },
                )
            )
        )
    return state


@pytest.fixture
def store() -> MemoryRegistry:
    reg = MemoryRegistry()
    reg.replace(registry_of(MODEL, ["v1", "v2"], ["v3"]).view())
    reg.replace(registry_of("other-model", ["o1"], []).view())
    return reg


@pytest.fixture
def api(store: MemoryRegistry) -> Iterator[RegistryApi]:
    server = serve_api(store, MODEL)
    yield server
    server.close()


def request(api: RegistryApi, path: str, method: str = "GET") -> tuple[int, Any, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        raw = resp.read()
        body = json.loads(raw) if raw else None
        return resp.status, body, resp.headers
    finally:
        conn.close()


def raw_request(api: RegistryApi, data: bytes) -> tuple[int, Any]:
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_models_lists_a_summary_per_version(api: RegistryApi) -> None:
    status, body, headers = request(api, "/models")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert body["model_name"] == MODEL
    assert [v["version"] for v in body["versions"]] == ["v1", "v2", "v3"]
    v1, v2, v3 = body["versions"]
    assert v1 == {
        "version": "v1",
        "number": 1,
        "status": "blessed",
        "aliases": ["champion"],
        "registered_at": v1["registered_at"],
        "dataset_size": 321,
        "fresh_accuracy": 0.75,
        # NaN is not JSON: it is served as null.
        "reference_accuracy": None,
        "verdict": "blessed",
    }
    assert v1["registered_at"].startswith("20")
    assert v2["aliases"] == ["challenger"]
    assert v3["status"] == "rejected" and v3["aliases"] == []


def test_a_version_in_full(api: RegistryApi, store: MemoryRegistry) -> None:
    status, body, _ = request(api, "/models/v2")
    assert status == 200
    assert VersionView.model_validate(body) == store.get_version(MODEL, "v2")
    assert body["dataset"]["size"] == 321 and body["evaluation"]["verdict"] == "blessed"


def test_aliases_and_health(api: RegistryApi) -> None:
    assert request(api, "/aliases")[:2] == (200, {"champion": "v1", "challenger": "v2"})
    assert request(api, "/healthz")[:2] == (200, {"status": "ok"})


def test_the_model_can_be_chosen_in_the_query(api: RegistryApi) -> None:
    status, body, _ = request(api, "/models?model=other-model")
    assert status == 200 and [v["version"] for v in body["versions"]] == ["o1"]
    assert request(api, "/aliases?model=other-model")[1] == {"champion": "o1"}
    assert request(api, "/models/o1?model=other-model")[0] == 200
    assert request(api, "/models/o1")[0] == 404
    # An unknown model is empty, not an error.
    assert request(api, "/models?model=nobody")[:2] == (
        200,
        {"model_name": "nobody", "versions": []},
    )


@pytest.mark.parametrize(
    "path", ["/models?model=bad%20name", "/aliases?model=a/b", "/models?model=a&model=b"]
)
def test_an_invalid_model_name_is_a_bad_request(api: RegistryApi, path: str) -> None:
    status, body, _ = request(api, path)
    assert status == 400 and body == {"error": "invalid model name"}


@pytest.mark.parametrize("version", ["a%20b", "x" * 65, "a%0A", "%3Cscript%3E", "a%2Fb"])
def test_an_invalid_version_is_a_bad_request(api: RegistryApi, version: str) -> None:
    status, body, headers = request(api, f"/models/{version}")
    assert status == 400 and body == {"error": "invalid version"}
    assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("path", ["/models/nope", "/", "/nope", "/models/v1/extra", "/aliases/x"])
def test_unknown_paths_and_versions_are_not_found(api: RegistryApi, path: str) -> None:
    status, body, headers = request(api, path)
    assert status == 404 and set(body) == {"error"}
    assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_not_allowed(api: RegistryApi, method: str) -> None:
    status, body, headers = request(api, "/models", method)
    assert status == 405 and body == {"error": "method not allowed"}
    assert headers["Allow"] == "GET"


def test_head_is_not_allowed_and_has_no_body(api: RegistryApi) -> None:
    status, body, _ = request(api, "/models", "HEAD")
    assert status == 405 and body is None


def test_methods_the_stdlib_does_not_know_are_not_allowed_either(api: RegistryApi) -> None:
    assert raw_request(api, b"BREW /models HTTP/1.0\r\n\r\n") == (
        405,
        {"error": "method not allowed"},
    )


def test_the_stdlib_own_errors_are_json_too(api: RegistryApi) -> None:
    headers = b"".join(b"X-H%d: 1\r\n" % i for i in range(150))
    status, body = raw_request(api, b"GET /models HTTP/1.0\r\n" + headers + b"\r\n")
    assert status == 431 and body == {"error": "Too many headers"}


def test_a_failing_store_is_unavailable(
    api: RegistryApi, store: MemoryRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    store.available = False
    with caplog.at_level(logging.ERROR, logger="streamloop.registry.http"):
        for path in ("/models", "/models/v1", "/aliases"):
            assert request(api, path)[:2] == (503, {"error": "registry unavailable"})
    assert len(caplog.records) == 3 and caplog.records[0].exc_info is not None
    # Health does not depend on the store.
    assert request(api, "/healthz")[0] == 200


def test_requests_are_logged_at_debug_not_on_stderr(
    api: RegistryApi, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="streamloop.registry.http"):
        request(api, "/healthz")
    assert capfd.readouterr().err == ""
    assert any("/healthz" in r.getMessage() for r in caplog.records)


def test_close_releases_the_port(store: MemoryRegistry) -> None:
    server = serve_api(store, MODEL)
    assert server.url == f"http://127.0.0.1:{server.port}"
    port = server.port
    server.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
