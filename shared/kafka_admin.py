"""A small adapter over kafka-python's admin client: the cluster operations StreamLoop needs.

It hides the client's response shapes (which change between kafka-python releases) behind
plain Python values, so provisioning, lag checks and the CLI share one place that knows them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from types import TracebackType

from kafka import TopicPartition
from kafka.admin import (
    ConfigResource,
    ConfigResourceType,
    KafkaAdminClient,
    NewPartitions,
    NewTopic,
    OffsetSpec,
)
from kafka.errors import (
    KafkaError,
    NodeNotReadyError,
    TopicAlreadyExistsError,
    UnknownBrokerIdError,
)

from shared.settings import KafkaSettings

__all__ = ["KafkaAdmin", "wait_for_kafka"]


def wait_for_kafka(settings: KafkaSettings, timeout_s: float = 60.0) -> None:
    """Block until the cluster answers a metadata request, with backoff.

    Raises:
        TimeoutError: nothing answered within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with KafkaAdmin(settings) as admin:
                admin.list_topics()
                return
        except (KafkaError, OSError) as exc:
            last = exc
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    raise TimeoutError(
        f"Kafka at {settings.bootstrap_servers} did not answer in {timeout_s}s: {last}"
    )


class KafkaAdmin:
    """Context-managed admin connection."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._admin = self._connect()

    def _connect(self) -> KafkaAdminClient:
        return KafkaAdminClient(client_id="streamloop-admin", **self._settings.client_kwargs())

    def __enter__(self) -> KafkaAdmin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._admin.close()

    # --- topics --------------------------------------------------------------------

    def list_topics(self) -> list[str]:
        return sorted(t for t in self._admin.list_topics() if not t.startswith("__"))

    def describe_partition_counts(self, topics: Iterable[str] | None = None) -> dict[str, int]:
        """topic -> number of partitions, for existing topics (all of them when None)."""
        names = list(topics) if topics is not None else self.list_topics()
        if not names:
            return {}
        existing = set(self._admin.list_topics())
        names = [n for n in names if n in existing]
        if not names:
            return {}
        return {t["name"]: len(t["partitions"]) for t in self._admin.describe_topics(names)}

    def create_topics(
        self,
        topics: list[tuple[str, int, dict[str, str]]],
        replication_factor: int,
        timeout_s: float,
    ) -> None:
        """Create ``(name, partitions, configs)`` topics and wait until they have leaders."""
        new = [NewTopic(n, p, replication_factor, topic_configs=c) for n, p, c in topics]
        deadline = time.monotonic() + timeout_s
        delay = 0.2
        while True:
            try:
                # Another process (a service starting at the same time) may have created some
                # of them; the broker still creates the rest of the request.
                with contextlib.suppress(TopicAlreadyExistsError):
                    self._admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
                break
            except (UnknownBrokerIdError, NodeNotReadyError):
                # A cluster still starting can name its controller before the client has
                # that broker's address: ask again with fresh metadata.
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                self._admin.close()
                self._admin = self._connect()
        self._admin.wait_for_topics([n for n, _, _ in topics], timeout_ms=int(timeout_s * 1000))

    def delete_topics(self, topics: list[str]) -> None:
        existing = set(self._admin.list_topics())
        doomed = [t for t in topics if t in existing]
        if doomed:
            self._admin.delete_topics(doomed)

    def add_partitions(self, topic: str, total: int) -> None:
        self._admin.create_partitions({topic: NewPartitions(total)})

    def describe_topic_configs(self, topics: list[str]) -> dict[str, dict[str, str]]:
        """topic -> every config value the broker reports for it."""
        if not topics:
            return {}
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        raw = self._admin.describe_configs(resources, config_filter="all")
        return {
            name: {k: v["value"] for k, v in cfg.items()}
            for name, cfg in raw.get("topic", {}).items()
        }

    def alter_topic_configs(self, topic: str, configs: dict[str, str]) -> None:
        """Set the given keys (incrementally: other keys keep their values)."""
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)
        self._admin.alter_configs([resource], incremental=True)

    # --- offsets and lag -----------------------------------------------------------

    def end_offsets(self, topic: str) -> dict[int, int]:
        """partition -> log end offset."""
        count = self.describe_partition_counts([topic]).get(topic, 0)
        specs = {TopicPartition(topic, p): OffsetSpec.LATEST for p in range(count)}
        if not specs:
            return {}
        res = self._admin.list_partition_offsets(specs)
        return {tp.partition: o.offset for tp, o in res.items()}

    def committed_offsets(self, group_id: str, topic: str) -> dict[int, int]:
        """partition -> committed offset of ``group_id`` (partitions never committed are absent)."""
        res = self._admin.list_group_offsets({group_id: None}).get(group_id, {})
        return {
            tp.partition: om.offset
            for tp, om in res.items()
            if tp.topic == topic and om.offset >= 0
        }

    def lag(self, group_id: str, topic: str) -> int:
        """Records of ``topic`` not yet committed by ``group_id`` (summed over partitions)."""
        ends = self.end_offsets(topic)
        committed = self.committed_offsets(group_id, topic)
        return sum(max(0, end - committed.get(p, 0)) for p, end in ends.items())
