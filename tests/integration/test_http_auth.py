"""The registry process's HTTP API with an operator token, against real Kafka and Redis:
reads open, actions refused without the token or with a wrong one, an accepted action
published as the CLI's command and answered by the registry, an oversized body refused,
and the token nowhere in the logs, the traces or the events."""

from __future__ import annotations

import http.client
import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from shared.events import ModelLifecycle, RetrainRequest, decode
from shared.redis_registry import RedisRegistry
from shared.redis_store import connect
from shared.settings import KafkaSettings, RedisSettings
from shared.topics import Topics
from tests.conftest import provision_prefixed
from tests.integration.helpers import Proc, read_all, wait_for

pytestmark = pytest.mark.timeout(180)

TOKEN = f"op-{uuid.uuid4().hex}{uuid.uuid4().hex}"
TOPICS = [
    Topics.MODELS_TRAINED,
    Topics.MODELS_EVALUATED,
    Topics.MODELS_LIFECYCLE,
    Topics.METRICS,
    Topics.RETRAIN_REQUESTS,
    Topics.ALERTS,
    Topics.EVENTS_DLQ,
]


class Registry:
    def __init__(self, proc: Proc, model: str, host: str, port: int) -> None:
        self.proc = proc
        self.model = model
        self.host = host
        self.port = port

    def call(
        self, method: str, path: str, body: bytes | None = None, token: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
        finally:
            conn.close()


@pytest.fixture
def registry(kafka_settings: KafkaSettings, prefix: str, tmp_path: Path) -> Iterator[Registry]:
    provision_prefixed(kafka_settings, prefix, TOPICS)
    model = f"m-{uuid.uuid4().hex[:8]}"
    proc = Proc(
        ["-m", "services.registry"],
        env={
            "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
            "STREAMLOOP_TELEMETRY_TRACES_DIR": str(tmp_path / "traces"),
            "STREAMLOOP_TELEMETRY_LOG_LEVEL": "DEBUG",
            "STREAMLOOP_ARTIFACTS_ROOT": str(tmp_path / "artifacts"),
            "STREAMLOOP_REGISTRY_PROVISION_TOPICS": "false",
            "STREAMLOOP_REGISTRY_MODEL_NAME": model,
            "STREAMLOOP_REGISTRY_GROUP_ID": f"{prefix}registry",
            "STREAMLOOP_REGISTRY_API_PORT": "0",
            "STREAMLOOP_REGISTRY_HTTP_AUTH__OPERATOR_TOKEN": TOKEN,
        },
    )
    store = RedisRegistry(connect(RedisSettings()))
    try:
        wait_for(
            lambda: any('"consumer started"' in ln for ln in proc.lines) or not proc.alive(),
            90,
            what="registry ready",
        )
        assert proc.alive(), "registry died at start-up"
        line = next(ln for ln in proc.lines if "registry api listening" in ln)
        listening = json.loads(line)
        assert listening["operator_actions"] is True and listening["reads_protected"] is False
        url = urlsplit(listening["url"])
        assert url.hostname is not None and url.port is not None
        yield Registry(proc, model, url.hostname, url.port)
    finally:
        proc.kill()
        for key in store._redis.scan_iter(f"streamloop:registry:{model}:*"):
            store._redis.delete(key)
        # Shown by pytest only when the test failed.
        print(*proc.lines[-60:], sep="\n")


def test_operator_actions_need_the_token_and_are_answered_by_the_registry(
    registry: Registry, kafka_settings: KafkaSettings, prefix: str, tmp_path: Path
) -> None:
    r = registry
    status, body = r.call("GET", "/models")
    assert status == 200 and body == {"model_name": r.model, "versions": []}

    assert r.call("POST", "/rollback", b'{"reason": "no token"}')[0] == 401
    assert r.call("POST", "/rollback", b'{"reason": "wrong"}', token="not-the-token")[0] == 403
    status, body = r.call("POST", "/rollback", b'{"reason": "too big"}' + b" " * 2_000_000, TOKEN)
    assert status == 413

    status, body = r.call("POST", "/rollback", b'{"reason": "integration test"}', TOKEN)
    assert status == 202 and body["topic"] == Topics.MODELS_LIFECYCLE
    command_id = body["event_id"]
    status, body = r.call("POST", "/retrain", b'{"reason": "test", "key": "it-1"}', TOKEN)
    assert status == 202 and body["idempotency_key"] == "it-1"

    # The command, then the registry's answer to it (nothing to roll back: rejected).
    lifecycle = prefix + Topics.MODELS_LIFECYCLE
    recs = read_all(kafka_settings, lifecycle, expect=2, timeout_s=60, alive=r.proc.alive)
    events = [decode(rec.value, ModelLifecycle) for rec in recs]
    (command,) = [e for e in events if e.event_id == command_id]
    assert command.action == "rollback_requested" and command.model_name == r.model
    assert command.source == "registry-api" and command.reason == "integration test"
    (answer,) = [e for e in events if e.cause_id == command_id]
    assert answer.action == "command_rejected" and answer.model_name == r.model

    (request,) = read_all(kafka_settings, prefix + Topics.RETRAIN_REQUESTS, expect=1)
    retrain = decode(request.value, RetrainRequest)
    assert retrain.idempotency_key == "it-1" and retrain.model_name == r.model

    # The token is nowhere: not in the logs, the traces or the records on the topics.
    r.proc.p.send_signal(signal.SIGTERM)
    r.proc.p.wait(60)
    logs = "\n".join(r.proc.lines)
    assert "operator action published" in logs and "POST /rollback" in logs
    assert TOKEN not in logs
    traces = "".join(p.read_text() for p in (tmp_path / "traces").rglob("*") if p.is_file())
    assert traces, "the registry wrote no traces"
    assert TOKEN not in traces
    for topic in (lifecycle, prefix + Topics.RETRAIN_REQUESTS, prefix + Topics.ALERTS):
        for rec in read_all(kafka_settings, topic, expect=10**6, timeout_s=3):
            assert TOKEN.encode() not in (rec.value or b"")
            assert all(TOKEN.encode() not in (v or b"") for _, v in rec.headers or [])
