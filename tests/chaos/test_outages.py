"""The broker, then Redis, stopped for 30 s under a steady stream: every service rides it out
without a restart of its own, and every frame Kafka acknowledged gets its prediction."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from shared.reader import TopicReader
from shared.redis_registry import RedisRegistry
from shared.redis_store import connect
from shared.sdk import PredictionSubscriber
from shared.settings import KafkaSettings, RedisSettings
from shared.topics import Topics
from tests.chaos.conftest import Infra, Pipeline, Tally, record
from tests.integration.helpers import wait_for
from tests.synthetic import trained_event

pytestmark = pytest.mark.timeout(600)

OUTAGE_S = 30.0
RATE = 20.0


class Follower(threading.Thread):
    """Follows ``predictions`` across the outage the way a user and a service do: with the
    SDK's subscriber and with a group-less topic reader. Each counts what it read after the
    broker came back; an error out of either ends it, kept in ``failed``."""

    def __init__(self, settings: KafkaSettings, how: str) -> None:
        super().__init__(name=f"follow-{how}", daemon=True)
        self.settings, self.how = settings, how
        self.stop, self.back = threading.Event(), threading.Event()
        self.after_back = 0
        self.failed: BaseException | None = None

    def run(self) -> None:
        try:
            # Each waits longer than the outage for its next record, so only an error ends
            # it before the test says stop.
            if self.how == "subscriber":
                with PredictionSubscriber(self.settings, idle_timeout_s=2 * OUTAGE_S) as got:
                    for _ in got:
                        if self._counted():
                            return
            else:
                with TopicReader(self.settings, [Topics.PREDICTIONS], start="end") as reader:
                    for rec in reader.follow(stop=self.stop, idle_timeout_s=2 * OUTAGE_S):
                        if rec is not None and self._counted():
                            return
        except BaseException as exc:  # noqa: BLE001 -- the test reports it
            self.failed = exc

    def _counted(self) -> bool:
        """Count one record; True once told to stop."""
        if self.back.is_set():
            self.after_back += 1
        return self.stop.is_set()


def _followers(settings: KafkaSettings) -> list[Follower]:
    made = [Follower(settings, "subscriber"), Follower(settings, "reader")]
    for f in made:
        f.start()
    return made


def test_a_broker_stopped_for_30_s_loses_no_acknowledged_frame(
    infra: Infra, pipeline: Pipeline
) -> None:
    pipeline.serve_frames()
    followers = _followers(pipeline.kafka)
    tally = Tally()
    camera = pipeline.stream(tally, rate=RATE, seconds=15 + OUTAGE_S + 20)
    time.sleep(15)
    infra.kafka("stop")
    time.sleep(OUTAGE_S)
    infra.kafka("start")
    back_at, sent_at_return = time.monotonic(), len(tally.sent)
    for f in followers:
        f.back.set()
    recovery = pipeline.recovery_s(tally, back_at, sent_at_return)
    camera.join(120)
    pipeline.count_predictions(tally, timeout_s=180)
    for f in followers:
        f.stop.set()

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
    # A user's subscriber and a service's topic reader waited the outage out and read on.
    read: dict[str, Any] = {f.how: (f.failed, f.after_back) for f in followers}
    assert all(failed is None and after > 0 for failed, after in read.values()), read
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
