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


@pytest.fixture
def prefix() -> str:
    """A namespace so each test has topics (and groups) of its own."""
    return new_prefix()


@pytest.fixture(scope="session", autouse=True)
def _delete_test_topics() -> Iterator[None]:
    """Tests create topics under prefixes of their own; delete them at the end, so that a
    developer's broker does not pile up thousands of partitions (and start slowly) over runs."""
    yield
    if not _PREFIXES:
        return
    from kafka.errors import KafkaError

    from shared.kafka_admin import KafkaAdmin

    try:
        with KafkaAdmin(KafkaSettings()) as admin:
            ours = [t for t in admin.list_topics() if any(t.startswith(p) for p in _PREFIXES)]
            for i in range(0, len(ours), 100):
                admin.delete_topics(ours[i : i + 100])
    except (KafkaError, OSError):
        pass  # the broker is already gone: nothing to tidy


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
