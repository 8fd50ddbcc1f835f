"""The local Redis that infra/redis/redis.sh runs: reachable from settings, durable."""

from __future__ import annotations

import uuid

import pytest


def test_redis_answers_and_keeps_an_append_only_file(redis_client) -> None:  # type: ignore[no-untyped-def]
    key = f"test:{uuid.uuid4().hex}"
    assert redis_client.set(key, "v", ex=60)
    assert redis_client.get(key) == b"v"
    if redis_client.config_get("dir")["dir"].endswith("var/redis"):
        assert redis_client.config_get("appendonly")["appendonly"] == "yes"
        assert redis_client.config_get("bind")["bind"] == "127.0.0.1"
    else:
        pytest.skip("a Redis not started by StreamLoop answers on this port")
