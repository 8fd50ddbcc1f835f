"""One poison record on every topic every service consumes, with all seven consumers running:
each lands in its dead-letter topic with the headers that say where it came from and why,
every consumer group moves past it (lag back to 0), and no service restarts."""

from __future__ import annotations

import time

import pytest

from shared.bus import DlqHeaders
from shared.kafka_admin import KafkaAdmin
from shared.topics import Topics, dlq_for
from tests.chaos.conftest import Infra, Pipeline, record
from tests.integration.helpers import bare_producer, read_all, wait_for

pytestmark = pytest.mark.timeout(600)

POISON = b"\x00not json{"

# (service, how it says it is ready, the topics it consumes)
CONSUMERS = [
    ("ingest", '"consumer started"', [Topics.FRAMES_RAW]),
    ("serving", '"champion adopted"', [Topics.FRAMES_VALID]),
    ("labelling", "Worker ready", [Topics.FRAMES_VALID, Topics.LABELS]),
    (
        "monitoring",
        "Worker ready",
        [Topics.PREDICTIONS, Topics.PREDICTIONS_SHADOW, Topics.LABELS],
    ),
    ("training", '"consumer started"', [Topics.RETRAIN_REQUESTS]),
    ("evaluation", '"consumer started"', [Topics.MODELS_TRAINED]),
    (
        "registry",
        '"consumer started"',
        [Topics.MODELS_TRAINED, Topics.MODELS_EVALUATED, Topics.MODELS_LIFECYCLE, Topics.METRICS],
    ),
]


def test_every_consumer_dead_letters_a_poison_record_and_keeps_going(
    infra: Infra, pipeline: Pipeline
) -> None:
    pipeline.champion()
    extra = {
        "serving": {"STREAMLOOP_SERVING_BACKEND": "local"},
        "monitoring": {"STREAMLOOP_MONITORING_DASHBOARD_PORT": "0"},
        "training": {"STREAMLOOP_TRAINING_BOOTSTRAP": "false"},
        "registry": {"STREAMLOOP_REGISTRY_API_PORT": "0"},
    }
    for service, ready, _ in CONSUMERS:
        pipeline.start(service, ready=ready, **extra.get(service, {}))
    prefix = pipeline.prefix
    groups = {
        service: prefix
        + (f"streamloop-{service}" if service in ("labelling", "monitoring") else service)
        for service, _, _ in CONSUMERS
    }
    topics = sorted({t for _, _, ts in CONSUMERS for t in ts})
    producer = bare_producer(pipeline.kafka)
    for topic in topics:
        producer.send(prefix + topic, key=b"poison", value=POISON)
    producer.flush()
    producer.close()
    poisoned_at = time.monotonic()

    pairs = [(service, topic) for service, _, ts in CONSUMERS for topic in ts]

    def settled() -> dict[tuple[str, str], int] | None:
        with KafkaAdmin(pipeline.kafka) as admin:
            lag = {(s, t): admin.lag(groups[s], prefix + t) for s, t in pairs}
        return lag if not any(lag.values()) else None

    wait_for(settled, 180, what="every consumer group past the poison (lag 0)")
    settled_s = time.monotonic() - poisoned_at

    dead = []
    for dlq in sorted({dlq_for(t) for t in topics}):
        dead += read_all(pipeline.kafka, prefix + dlq, 1, timeout_s=10)
    seen = set()
    for rec in dead:
        h = {k: v.decode() for k, v in rec.headers or []}
        assert rec.value == POISON
        assert h[DlqHeaders.ERROR] == "not_json", h
        assert h[DlqHeaders.SOURCE_OFFSET].isdigit() and h[DlqHeaders.ERROR_MESSAGE]
        seen.add((h[DlqHeaders.GROUP], h[DlqHeaders.SOURCE_TOPIC]))
    expected = {(groups[s], prefix + t) for s, t in pairs}
    assert seen == expected, {"missing": expected - seen, "unexpected": seen - expected}
    for service, _, _ in CONSUMERS:
        assert pipeline.procs[service].alive(), f"{service} exited"
        assert pipeline.starts_of(service) == 1, f"{service} restarted"
    record(
        "poison",
        {
            "fault": "poison record per consumer",
            "injected": f"1 non-JSON record on each of {len(topics)} topics, {len(pairs)} "
            f"consumer-topic pairs in {len(CONSUMERS)} services",
            "frames_in": f"{len(topics)} poison records",
            "dead_lettered": len(dead),
            "lost": "0 (each in its DLQ)",
            "duplicated": "-",
            "recovery_s": round(settled_s, 1),
        },
    )
