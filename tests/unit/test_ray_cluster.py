"""Serving on a Ray cluster it does not own: which cluster it joins, when it falls back to a
Ray of its own, and the fingerprint that decides whether a restarted ingress may reuse the
application it finds running (Ray itself is replaced by a recorder here; the real head is
``tests/chaos/test_ray_head.py``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.serving import ray_app
from services.serving.settings import ServingSettings
from shared.ray_cluster import AUTH_MODE_ENV

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _auth_mode_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Joining sets ``RAY_AUTH_MODE`` in the process; these tests leave it as they found it."""
    # Set, then removed: monkeypatch's undo then removes the value a test's join leaves.
    monkeypatch.setenv(AUTH_MODE_ENV, "unset")
    monkeypatch.delenv(AUTH_MODE_ENV)


def settings(**env: str) -> ServingSettings:
    return ServingSettings.model_validate(env)


def test_the_fingerprint_follows_the_settings_a_replica_is_built_from() -> None:
    base = ray_app.app_fingerprint(settings())
    assert ray_app.app_fingerprint(settings()) == base
    # Settings only the ingress reads leave it alone: the replicas need no redeploy.
    assert ray_app.app_fingerprint(settings(max_poll_records="256", call_size="32")) == base
    for changed in (
        {"runtime": "eager"},
        {"replica_cpus": "1.0"},
        {"max_replicas": "3"},
        {"torch_threads": "2"},
        {"model_name": "another"},
    ):
        assert ray_app.app_fingerprint(settings(**changed)) != base, changed


def test_the_http_proxy_listens_where_the_settings_say_or_is_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    on = ray_app.serve_options(settings(http_host="0.0.0.0", http_port="8123"))
    assert on == {"http_options": {"host": "0.0.0.0", "port": 8123}}
    assert ray_app.serve_options(settings(http_proxy="false")) == {"proxy_location": "Disabled"}
    # The proxy is the ingress's concern, not the replicas': no redeploy.
    without = ray_app.app_fingerprint(settings(http_proxy="false"))
    assert without == ray_app.app_fingerprint(settings(http_proxy="true"))
    monkeypatch.setenv("STREAMLOOP_SERVING_HTTP_PROXY", "false")
    assert not ServingSettings().http_proxy  # the environment variable users set


def test_a_changed_token_changes_the_fingerprint_without_showing_in_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMLOOP_HTTP_READ_TOKEN", "first-secret-token")
    first = ray_app.app_fingerprint(ServingSettings())
    monkeypatch.setenv("STREAMLOOP_HTTP_READ_TOKEN", "second-secret-token")
    second = ray_app.app_fingerprint(ServingSettings())
    assert first != second
    assert "secret" not in first + second and len(first) == 64


class Recorder:
    """``ray.init`` as far as ``_init_ray`` uses it: records each call; an address in
    ``down`` raises as Ray does when nothing answers there."""

    def __init__(self, down: set[str]) -> None:
        self.calls: list[dict[str, Any]] = []
        self.down = down

    def __call__(self, address: str | None = None, **kwargs: Any) -> None:
        self.calls.append({"address": address, "auth": os.environ.get(AUTH_MODE_ENV), **kwargs})
        if address in self.down:
            raise ConnectionError(f"Could not find any running Ray instance at {address}")


def test_an_address_is_joined_and_no_address_starts_a_ray_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    init = Recorder(down=set())
    monkeypatch.setattr(ray_app.ray, "init", init)
    assert ray_app._init_ray(settings(RAY_ADDRESS="127.0.0.1:6380")) is True
    assert init.calls[-1]["address"] == "127.0.0.1:6380"
    assert "object_store_memory" not in init.calls[-1]  # a joined cluster has its own store
    assert ray_app._init_ray(settings()) is False
    # "local", never None: Ray would otherwise join whatever cluster ran last on the machine.
    assert init.calls[-1]["address"] == "local"
    assert init.calls[-1]["object_store_memory"] == 256 * 2**20


def test_joining_runs_with_authentication_as_set_and_off_when_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unset, Ray would switch token authentication on in the joining process whenever a token
    file exists, and refuse the replies of the head's workers."""
    init = Recorder(down=set())
    monkeypatch.setattr(ray_app.ray, "init", init)
    ray_app._init_ray(settings())
    assert init.calls[-1]["auth"] is None  # a Ray of its own keeps Ray's default
    ray_app._init_ray(settings(RAY_ADDRESS="127.0.0.1:6380"))
    assert init.calls[-1]["auth"] == "disabled"
    monkeypatch.setenv(AUTH_MODE_ENV, "token")
    ray_app._init_ray(settings(RAY_ADDRESS="127.0.0.1:6380"))
    assert init.calls[-1]["auth"] == "token"


def test_with_no_cluster_answering_it_falls_back_or_fails_as_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    init = Recorder(down={"127.0.0.1:6380"})
    monkeypatch.setattr(ray_app.ray, "init", init)
    assert ray_app._init_ray(settings(RAY_ADDRESS="127.0.0.1:6380")) is False
    assert [c["address"] for c in init.calls] == ["127.0.0.1:6380", "local"]
    with pytest.raises(ConnectionError):
        ray_app._init_ray(settings(RAY_ADDRESS="127.0.0.1:6380", ray_fallback_local="false"))


def test_compose_runs_the_replicas_on_the_head_and_the_ingress_joins_it() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    head, serving = services["ray-head"], services["serving"]
    assert "--head" in head["command"] and "--port=6379" in head["command"]
    assert "ray-head" in serving["depends_on"]
    start = serving["command"][0]
    assert "ray start --address=ray-head:6379 --num-cpus=0" in start
    assert start.endswith("exec streamloop serve serving")
    assert serving["environment"]["RAY_ADDRESS"] == "auto"
    assert serving["environment"]["STREAMLOOP_SERVING_RAY_FALLBACK_LOCAL"] == "false"
