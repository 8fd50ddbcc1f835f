"""Redis with an ACL user: StreamLoop's stores work with the user's name and password from
settings, a client without them (or with a wrong password) is refused, and a service given no
password does not run against it. The Redis here is a second ``redis-server`` of the machine's
own, started by the test with the default user switched off."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.bus import EventProducer
from shared.redis_registry import RedisRegistry
from shared.redis_store import RedisClaims, RedisLeases, connect
from shared.settings import KafkaSettings, RedisSettings
from shared.topics import Topics
from tests.integration.helpers import Proc, free_port, read_all, wait_for
from tests.synthetic import trained_event

USER = "streamloop"


class AclRedis:
    def __init__(self, port: int, password: str) -> None:
        self.port, self.password = port, password
        self.url = f"redis://127.0.0.1:{port}/0"

    def settings(
        self, *, username: str | None = USER, password: str | None = None
    ) -> RedisSettings:
        return RedisSettings(url=self.url, username=username, password=password)

    def env(self, *, with_password: bool = True) -> dict[str, str]:
        env = {"STREAMLOOP_REDIS_URL": self.url, "STREAMLOOP_REDIS_USERNAME": USER}
        if with_password:
            env["STREAMLOOP_REDIS_PASSWORD"] = self.password
        return env


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (make setup installs it)")
    port, password = free_port(), secrets.token_urlsafe(24)
    workdir: Path = tmp_path_factory.mktemp("acl-redis")
    # The default user is off: every connection must name the StreamLoop user, which may use
    # only StreamLoop's keys and no administrative commands.
    proc = subprocess.Popen(
        [
            server,
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)),
            *("--save", "", "--appendonly", "no"),
            *("--user", "default", "off"),
            *("--user", USER, "on", f">{password}", "~streamloop:*", "&*", "+@all", "-@dangerous"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    acl = AclRedis(port, password)
    try:

        def answers() -> bool | None:
            try:
                return bool(connect(acl.settings(password=password)).ping())
            except redis.ConnectionError:
                return None

        wait_for(answers, 20, what="the ACL Redis to answer")
        yield acl
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_stores_work_with_the_acl_user_and_nobody_else_gets_in(acl_redis: AclRedis) -> None:
    with pytest.raises(redis.AuthenticationError):
        connect(acl_redis.settings(username=None)).ping()
    with pytest.raises(redis.AuthenticationError):
        connect(acl_redis.settings(password="not-" + acl_redis.password)).ping()

    client = connect(acl_redis.settings(password=acl_redis.password))
    claims = RedisClaims(client, "streamloop:ingest:frame")
    frame = uuid.uuid4().hex
    assert claims.claim([(frame, "a")], 60) == [None]
    assert claims.claim([(frame, "b")], 60) == ["a"]
    leases = RedisLeases(client, "streamloop:training:request")
    key = uuid.uuid4().hex
    assert leases.acquire(key, "me", 30).state == "acquired"  # Lua scripts are allowed
    assert leases.finish(key, "me", "v1", 60)
    assert leases.acquire(key, "other", 30).state == "done"
    # The user is confined to StreamLoop's keys and cannot administer the server.
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("elsewhere:key", "x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()


def test_the_registry_runs_with_the_password_and_refuses_to_run_without(
    acl_redis: AclRedis, prefix: str, tmp_path: Path
) -> None:
    model = f"acl-{uuid.uuid4().hex[:8]}"
    env = {
        "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
        "STREAMLOOP_REGISTRY_GROUP_ID": f"{prefix}registry",
        "STREAMLOOP_REGISTRY_MODEL_NAME": model,
        "STREAMLOOP_REGISTRY_API_PORT": "0",
        "STREAMLOOP_ARTIFACTS_ROOT": str(tmp_path / "artifacts"),
        "STREAMLOOP_TELEMETRY_TRACES_DIR": str(tmp_path / "traces"),
        "STREAMLOOP_TELEMETRY_SAMPLE_RATIO": "1.0",
    }
    # No password configured: the service stops at start-up, saying why, and does not loop.
    refused = Proc(["-m", "services.registry"], {**env, **acl_redis.env(with_password=False)})
    try:
        refused.p.wait(90)
    except subprocess.TimeoutExpired:
        refused.p.kill()
        pytest.fail("the registry kept running without Redis credentials")
    time.sleep(0.2)  # the reader thread drains the last lines
    assert refused.p.returncode != 0
    assert any("AuthenticationError" in line or "WRONGPASS" in line for line in refused.lines), (
        "\n".join(refused.lines[-20:])
    )

    proc = Proc(["-m", "services.registry"], {**env, **acl_redis.env()})
    try:
        proc.wait_line('{"ts"', 60)
        wait_for(lambda: any('"consumer started"' in ln for ln in proc.lines), 90, what="start")
        producer = EventProducer(KafkaSettings(topic_prefix=prefix))
        event = trained_event(model, "v1", "file:///nowhere/v1.pt", "0" * 64)
        producer.publish(Topics.MODELS_TRAINED, event, key=model).get(30)
        producer.close()
        registry = RedisRegistry(connect(acl_redis.settings(password=acl_redis.password)))
        version = wait_for(lambda: registry.get_version(model, "v1"), 60, what="v1 registered")
        assert version.version == "v1"
        # The password is in no log line, no span and no event.
        lifecycle = read_all(KafkaSettings(), prefix + Topics.MODELS_LIFECYCLE, 1, timeout_s=10)
        assert lifecycle, "the registry recorded the registration"
        proc.p.terminate()
        proc.p.wait(30)
        spans = "".join(p.read_text() for p in (tmp_path / "traces").rglob("*") if p.is_file())
        assert "models.trained process" in spans, "the registry's spans were written"
        for where, text in {
            "logs": "\n".join(proc.lines + refused.lines),
            "traces": spans,
            "events": b"".join(r.value or b"" for r in lifecycle).decode(),
        }.items():
            assert acl_redis.password not in text, f"the Redis password leaked into the {where}"
    finally:
        proc.p.terminate()
        proc.p.wait(30)
