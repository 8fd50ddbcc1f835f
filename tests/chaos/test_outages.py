"""The broker, then Redis, stopped for 30 s under a steady stream: every service rides it out
without a restart of its own, and every frame Kafka acknowledged gets its prediction."""

from __future__ import annotations

import time

import pytest

from shared.redis_registry import RedisRegistry
from shared.redis_store import connect
from shared.settings import RedisSettings
from shared.topics import Topics
from tests.chaos.conftest import Infra, Pipeline, Tally, record
from tests.integration.helpers import wait_for
from tests.synthetic import trained_event

pytestmark = pytest.mark.timeout(600)

OUTAGE_S = 30.0
RATE = 20.0


def test_a_broker_stopped_for_30_s_loses_no_acknowledged_frame(
    infra: Infra, pipeline: Pipeline
) -> None:
    pipeline.serve_frames()
    tally = Tally()
    camera = pipeline.stream(tally, rate=RATE, seconds=15 + OUTAGE_S + 20)
    time.sleep(15)
    infra.kafka("stop")
    time.sleep(OUTAGE_S)
    infra.kafka("start")
    back_at, sent_at_return = time.monotonic(), len(tally.sent)
    recovery = pipeline.recovery_s(tally, back_at, sent_at_return)
    camera.join(120)
    pipeline.count_predictions(tally, timeout_s=180)

    row = {
        "fault": "broker stopped",
        "injected": f"single broker SIGTERM, {OUTAGE_S:.0f} s down, restarted",
        "frames_in": len(tally.sent),
        "acknowledged": len(tally.acked),
        "lost": len(tally.lost),
        "duplicated": tally.duplicated,
        "recovery_s": round(recovery, 1),
    }
    record("broker_stopped", row)
    assert tally.acked, "the camera's frames were acknowledged"
    assert tally.lost == set(), row
    # Nothing was restarted: each service started once and is still running.
    for name in ("ingest", "serving"):
        assert pipeline.procs[name].alive() and pipeline.starts_of(name) == 1, name


def test_redis_stopped_for_30_s_pauses_duplicate_drops_loses_nothing_and_the_registry_catches_up(
    infra: Infra, pipeline: Pipeline
) -> None:
    pipeline.serve_frames()
    registry_proc = pipeline.start("registry", STREAMLOOP_REGISTRY_API_PORT="0")
    tally = Tally()
    camera = pipeline.stream(tally, rate=RATE, seconds=15 + OUTAGE_S + 20)
    time.sleep(15)
    infra.redis("stop")
    # A model event while the read model cannot be written.
    candidate = trained_event(pipeline.model, "v-during-outage", "file:///x/v.pt", "0" * 64)
    pipeline.producer.publish(Topics.MODELS_TRAINED, candidate, key=pipeline.model).get(30)
    time.sleep(OUTAGE_S)
    infra.redis("start")
    back_at, sent_at_return = time.monotonic(), len(tally.sent)
    recovery = pipeline.recovery_s(tally, back_at, sent_at_return)
    camera.join(120)
    pipeline.count_predictions(tally, timeout_s=180)

    registry = RedisRegistry(connect(RedisSettings(url=infra.redis_url)))
    caught_up = wait_for(
        lambda: registry.get_version(pipeline.model, "v-during-outage"),
        120,
        what="the registry's read model to catch up",
    )
    row = {
        "fault": "Redis stopped",
        "injected": f"Redis SHUTDOWN, {OUTAGE_S:.0f} s down, restarted",
        "frames_in": len(tally.sent),
        "acknowledged": len(tally.acked),
        "lost": len(tally.lost),
        "duplicated": tally.duplicated,
        "recovery_s": round(recovery, 1),
    }
    record("redis_stopped", row)
    assert tally.lost == set(), row
    assert caught_up.version == "v-during-outage"
    ingest = pipeline.procs["ingest"]
    # Documented degradation: duplicate drops pause while Redis is away.
    assert any("without duplicate detection" in line for line in ingest.lines), "\n".join(
        ingest.lines[-20:]
    )
    for name in ("ingest", "serving", "registry"):
        assert pipeline.procs[name].alive() and pipeline.starts_of(name) == 1, name
    assert not any('"handler failed; giving up"' in line for line in registry_proc.lines)
