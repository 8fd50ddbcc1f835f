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


@pytest.fixture
def prefix() -> str:
    """A namespace so each test has topics (and groups) of its own."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def memory_telemetry() -> TelemetrySettings:
    return TelemetrySettings(exporter="memory")


def provision_prefixed(settings: KafkaSettings, prefix: str, names: list[str]) -> list[TopicSpec]:
    from shared.topics import provision

    specs = [TOPICS[n] for n in names]
    provision(settings, specs, name_prefix=prefix)
    return specs


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tiers follow the folder: tests/unit, tests/integration, tests/e2e.
    for item in items:
        for tier in ("unit", "integration", "e2e"):
            if f"{os.sep}{tier}{os.sep}" in str(item.fspath):
                item.add_marker(getattr(pytest.mark, tier))
