"""``streamloop status`` against the real broker: a live consumer group is reported up with
the lag it really has, and down once it leaves."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.structs import OffsetAndMetadata

from shared.settings import KafkaSettings
from shared.topics import Topics
from streamloop.cli import cmd_status
from streamloop.status import (
    SERVICES,
    KafkaUnreachableError,
    ServiceSpec,
    ServiceStatus,
    collect,
)
from tests.conftest import provision_prefixed
from tests.integration.helpers import Proc, free_port, wait_for


def _produce(kafka: KafkaSettings, topic: str, n: int, partition: int = 0) -> None:
    producer = KafkaProducer(acks="all", **kafka.client_kwargs())
    try:
        for i in range(n):
            producer.send(topic, value=f"r{i}".encode(), partition=partition)
        producer.flush(10)
    finally:
        producer.close()


@pytest.mark.timeout(60)
def test_collector_reports_a_live_group_with_its_lag_then_down_after_it_leaves(
    prefix: str,
) -> None:
    kafka = KafkaSettings(topic_prefix=prefix)
    provision_prefixed(kafka, prefix, [Topics.ALERTS, Topics.METRICS])
    alerts, metrics = prefix + Topics.ALERTS, prefix + Topics.METRICS
    group = f"{prefix}status-probe"
    spec = ServiceSpec("probe", group, (Topics.ALERTS, Topics.METRICS))

    def status(threshold: int = 1000) -> ServiceStatus:
        [s] = collect(kafka, [spec], threshold=threshold, timeout_s=10)
        return s

    before = status()
    assert (before.state, before.members, before.health) == ("unknown", 0, "down")

    _produce(kafka, alerts, 10, partition=0)
    _produce(kafka, metrics, 3, partition=1)
    consumer = KafkaConsumer(
        group_id=group, enable_auto_commit=False, client_id="status-probe", **kafka.client_kwargs()
    )
    try:
        consumer.subscribe([alerts])
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
        assert len(consumer.assignment()) == 3
        consumer.commit(
            {
                TopicPartition(alerts, 0): OffsetAndMetadata(6, "", -1),
                TopicPartition(alerts, 1): OffsetAndMetadata(0, "", -1),
                TopicPartition(alerts, 2): OffsetAndMetadata(0, "", -1),
            }
        )
        _produce(kafka, alerts, 5, partition=0)

        up = status()
        assert up.group == group
        assert (up.state, up.members, up.health) == ("Stable", 1, "up")
        by_topic = {t.topic: t for t in up.topics}
        assert list(by_topic) == [Topics.ALERTS, Topics.METRICS]
        # 15 records on partition 0, committed up to 6; partitions 1 and 2 are empty.
        assert (by_topic[Topics.ALERTS].lag, by_topic[Topics.ALERTS].uncommitted) == (9, 0)
        # Never committed on: reported apart, its records count as pending.
        assert by_topic[Topics.METRICS].uncommitted == 3
        assert by_topic[Topics.METRICS].uncommitted_records == 3
        assert by_topic[Topics.METRICS].lag_text() == "no commits: 3"
        assert (up.lag, up.pending) == (9, 12)
        assert status(threshold=11).health == "lagging"
    finally:
        consumer.close()

    def left() -> ServiceStatus | None:
        s = status()
        return s if s.members == 0 else None

    down = wait_for(left, timeout_s=20, what="the group to lose its member")
    assert down is not None
    assert (down.state, down.health, down.lag) == ("Empty", "down", 9)

    admin = KafkaAdminClient(**kafka.client_kwargs())
    try:
        admin.delete_groups([group])
    finally:
        admin.close()


@pytest.mark.timeout(30)
def test_collector_fails_clearly_when_kafka_does_not_answer() -> None:
    nowhere = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    started = time.monotonic()
    with pytest.raises(KafkaUnreachableError, match=r"127\.0\.0\.1:1"):
        collect(nowhere, timeout_s=1.0)
    assert time.monotonic() - started < 10


@pytest.mark.timeout(180)
def test_status_reports_a_running_faust_service(
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A faust worker's group member carries a subscription the admin client does not
    decode: status reads it as it comes, as a table and as JSON."""
    kafka = KafkaSettings(topic_prefix=prefix)
    provision_prefixed(
        kafka, prefix, [Topics.FRAMES_VALID, Topics.LABELS, Topics.EXAMPLES, Topics.EVENTS_DLQ]
    )
    env = {
        "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
        "STREAMLOOP_LABELLING_PROVISION_TOPICS": "false",
        "STREAMLOOP_LABELLING_METRICS_PORT": str(free_port()),
        "STREAMLOOP_TELEMETRY_TRACES_DIR": str(tmp_path),
    }
    proc = Proc(["-m", "services.labelling"], env=env)
    try:
        wait_for(
            lambda: proc.alive() and any("Worker ready" in ln for ln in proc.lines),
            120,
            what="labelling ready",
        )
        [spec] = [s for s in SERVICES if s.service == "labelling"]
        [status] = collect(kafka, [spec], timeout_s=10)
        assert status.group == prefix + "streamloop-labelling"
        assert (status.members, status.health) == (1, "up")
        topics = [t.topic for t in status.topics]
        assert topics[:2] == [Topics.FRAMES_VALID, Topics.LABELS]
        assert "streamloop-labelling-join" in topics  # the worker's own subscription

        monkeypatch.setenv("STREAMLOOP_KAFKA_TOPIC_PREFIX", prefix)
        capsys.readouterr()
        args = argparse.Namespace(json=True, lag_threshold=1000, timeout=10.0)
        assert cmd_status(args) == 0
        doc = json.loads(capsys.readouterr().out)
        [labelling] = [s for s in doc["services"] if s["service"] == "labelling"]
        assert (labelling["members"], labelling["health"]) == (1, "up")
    finally:
        proc.kill()
