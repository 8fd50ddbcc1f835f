"""A 3-broker KRaft cluster (replication 3, ``min.insync.replicas`` 2): the leader of the
busiest ``frames.raw`` partition (with transactions off, then on), or the coordinator of
serving's consumer group, is SIGKILLed mid-stream and restarted 20 s later. Every frame Kafka
acknowledged is predicted; duplicates (none with transactions on) and the time until frames
flow again are reported."""

from __future__ import annotations

import time

import pytest
from kafka.admin import KafkaAdminClient

from shared.kafka_admin import KafkaAdmin
from shared.topics import Topics
from tests.chaos.conftest import Infra, Pipeline, Tally, record

pytestmark = pytest.mark.timeout(600)


def _leaders(pipeline: Pipeline, topic: str) -> dict[int, int]:
    """Partition -> node id of its leader."""
    admin = KafkaAdminClient(**pipeline.kafka.client_kwargs())
    try:
        [described] = admin.describe_topics([pipeline.prefix + topic])
        return {p["partition_index"]: p["leader_id"] for p in described["partitions"]}
    finally:
        admin.close()


@pytest.mark.parametrize("transactions", [False, True], ids=["at-least-once", "exactly-once"])
def test_killing_the_leader_of_the_busiest_partition_loses_no_acknowledged_frame(
    cluster: Infra, pipeline: Pipeline, transactions: bool
) -> None:
    if transactions:
        pipeline.settings.update(
            STREAMLOOP_INGEST_TRANSACTIONS__ENABLED="true",
            STREAMLOOP_SERVING_TRANSACTIONS__ENABLED="true",
        )
    pipeline.serve_frames()
    tally = Tally()
    camera = pipeline.stream(tally, rate=20.0, seconds=70)
    time.sleep(15)
    with KafkaAdmin(pipeline.kafka) as admin:
        ends = admin.end_offsets(pipeline.prefix + Topics.FRAMES_RAW)
    busiest = max(ends, key=lambda p: ends[p])
    victim = _leaders(pipeline, Topics.FRAMES_RAW)[busiest]
    killed_at, sent_at_kill = time.monotonic(), len(tally.sent)
    cluster.kafka("kill", victim)

    recovery = pipeline.recovery_s(tally, killed_at, sent_at_kill)
    new_leader = _leaders(pipeline, Topics.FRAMES_RAW)[busiest]
    time.sleep(max(0.0, 20 - (time.monotonic() - killed_at)))
    cluster.kafka("start", victim)
    camera.join(120)
    pipeline.count_predictions(tally, timeout_s=180)

    row = {
        "fault": "leader broker killed" + (", transactions on" if transactions else ""),
        "injected": f"SIGKILL of node {victim}, leader of frames.raw partition {busiest} "
        "(3 brokers, RF 3, min ISR 2), restarted after 20 s",
        "frames_in": len(tally.sent),
        "acknowledged": len(tally.acked),
        "lost": len(tally.lost),
        "duplicated": tally.duplicated,
        "recovery_s": round(recovery, 1),
    }
    record("leader_killed_transactions" if transactions else "leader_killed", row)
    assert new_leader != victim, "leadership moved to a live broker"
    assert tally.acked and tally.lost == set(), row
    if transactions:
        assert tally.duplicated == 0, row
    for name in ("ingest", "serving"):
        assert pipeline.procs[name].alive() and pipeline.starts_of(name) == 1, name


def _coordinator(pipeline: Pipeline, group: str) -> int:
    """Node id of the broker coordinating ``group`` (kafka-python's admin client finds it,
    though only through private methods)."""
    admin = KafkaAdminClient(**pipeline.kafka.client_kwargs())
    try:
        return int(admin._manager.run(admin._find_coordinator_id, group))
    finally:
        admin.close()


def test_killing_the_coordinator_of_servings_group_loses_no_acknowledged_frame(
    cluster: Infra, pipeline: Pipeline
) -> None:
    pipeline.serve_frames()
    tally = Tally()
    camera = pipeline.stream(tally, rate=20.0, seconds=70)
    time.sleep(15)
    group = f"{pipeline.prefix}serving"
    victim = _coordinator(pipeline, group)
    killed_at, sent_at_kill = time.monotonic(), len(tally.sent)
    cluster.kafka("kill", victim)

    recovery = pipeline.recovery_s(tally, killed_at, sent_at_kill)
    successor = _coordinator(pipeline, group)
    time.sleep(max(0.0, 20 - (time.monotonic() - killed_at)))
    cluster.kafka("start", victim)
    camera.join(120)
    pipeline.count_predictions(tally, timeout_s=180)
    reconnects = {
        name: sum("lost its group membership" in ln for ln in pipeline.procs[name].lines)
        for name in ("ingest", "serving")
    }
    row = {
        "fault": "coordinator broker killed",
        "injected": f"SIGKILL of node {victim}, coordinator of serving's consumer group "
        f"(3 brokers, RF 3, min ISR 2), restarted after 20 s; watchdog reconnects {reconnects}",
        "frames_in": len(tally.sent),
        "acknowledged": len(tally.acked),
        "lost": len(tally.lost),
        "duplicated": tally.duplicated,
        "recovery_s": round(recovery, 1),
    }
    record("coordinator_killed", row)
    assert successor != victim, "the group moved to a live coordinator"
    assert tally.acked and tally.lost == set(), row
    for name in ("ingest", "serving"):
        assert pipeline.procs[name].alive() and pipeline.starts_of(name) == 1, name
