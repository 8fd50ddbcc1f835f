"""Shared fixtures. Integration and e2e tests talk to the real Kafka and Redis that
``make test`` starts (see infra/with-infra.sh); they never mock the clients."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from shared.settings import KafkaSettings, RedisSettings, TelemetrySettings
from shared.topics import TOPICS, TopicSpec


@pytest.fixture(scope="session")
def kafka_settings() -> KafkaSettings:
    return KafkaSettings()


@pytest.fixture(scope="session")
def redis_settings() -> RedisSettings:
    return RedisSettings()


@pytest.fixture
def redis_client(redis_settings: RedisSettings) -> Iterator[object]:
    from shared.redis_store import connect

    client = connect(redis_settings)
    yield client
    client.close()


_PREFIXES: set[str] = set()


def new_prefix() -> str:
    """A fresh topic namespace; its topics are deleted when the test session ends."""
    name = f"t{uuid.uuid4().hex[:10]}."
    _PREFIXES.add(name)
    return name


def delete_topics_under(prefixes: set[str]) -> None:
    """Delete every topic whose name starts with one of ``prefixes`` (the broker may be gone:
    then there is nothing to tidy)."""
    if not prefixes:
        return
    from kafka.errors import KafkaError

    from shared.kafka_admin import KafkaAdmin

    try:
        with KafkaAdmin(KafkaSettings()) as admin:
            ours = [t for t in admin.list_topics() if t.startswith(tuple(prefixes))]
            for i in range(0, len(ours), 100):
                admin.delete_topics(ours[i : i + 100])
    except (KafkaError, OSError):
        pass


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace so each test has topics (and groups) of its own, deleted after the test
    (after every fixture that uses it has stopped): a broker holding every earlier test's
    partitions answers later tests ever more slowly."""
    name = new_prefix()
    yield name
    if any(request.node.get_closest_marker(m) for m in ("integration", "e2e")):
        delete_topics_under({name})
        _PREFIXES.discard(name)


@pytest.fixture(scope="session", autouse=True)
def _delete_test_topics() -> Iterator[None]:
    """What is left under the session's prefixes goes at the end, so that a developer's
    broker does not pile up partitions (and start slowly) over runs."""
    yield
    delete_topics_under(_PREFIXES)


@pytest.fixture
def memory_telemetry() -> TelemetrySettings:
    return TelemetrySettings(exporter="memory")


def provision_prefixed(settings: KafkaSettings, prefix: str, names: list[str]) -> list[TopicSpec]:
    from shared.topics import provision

    specs = [TOPICS[n] for n in names]
    provision(settings, specs, name_prefix=prefix)
    return specs


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tiers follow the folder: tests/unit, tests/integration, tests/e2e, tests/chaos.
    for item in items:
        for tier in ("unit", "integration", "e2e", "chaos"):
            if f"{os.sep}{tier}{os.sep}" in str(item.fspath):
                item.add_marker(getattr(pytest.mark, tier))
