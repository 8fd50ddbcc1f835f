"""The topic table: every Kafka topic StreamLoop uses, written down once.

``provision`` creates missing topics and brings the configuration of existing ones in line
with the table. It is idempotent: a second run reports every topic unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from shared import events as ev
from shared.settings import KafkaSettings

__all__ = [
    "FRAME_DLQ_MAX_BYTES",
    "FRAME_RECORD_MAX_BYTES",
    "RECORD_MAX_BYTES",
    "TOPICS",
    "ProvisionReport",
    "TopicSpec",
    "Topics",
    "dlq_for",
    "event_for",
    "provision",
]

log = logging.getLogger(__name__)

DAY_MS = 24 * 60 * 60 * 1000

RECORD_MAX_BYTES = 2 * 1024 * 1024
"""``max.message.bytes`` of every topic but the two that carry camera images as published."""

FRAME_RECORD_MAX_BYTES = 12 * 1024 * 1024
"""``max.message.bytes`` of ``frames.raw``: an image of up to 9 MB
(``STREAMLOOP_INGEST_MAX_IMAGE_BYTES``) in base64 with its envelope. A topic-level setting
overrides the broker's ``message.max.bytes``, so the brokers need no change."""

FRAME_DLQ_MAX_BYTES = FRAME_RECORD_MAX_BYTES + 64 * 1024
"""``max.message.bytes`` of ``frames.dlq``: a refused ``frames.raw`` record, kept whole, plus
the dead-letter headers."""


class Topics:
    """Topic names. Code refers to these constants, never to string literals."""

    FRAMES_RAW = "frames.raw"
    FRAMES_VALID = "frames.valid"
    FRAMES_DLQ = "frames.dlq"
    PREDICTIONS = "predictions"
    PREDICTIONS_SHADOW = "predictions.shadow"
    LABELS = "labels"
    LABELS_REQUESTS = "labels.requests"
    EXAMPLES = "examples"
    METRICS = "metrics"
    RETRAIN_REQUESTS = "retrain.requests"
    MODELS_TRAINED = "models.trained"
    MODELS_EVALUATED = "models.evaluated"
    MODELS_LIFECYCLE = "models.lifecycle"
    ALERTS = "alerts"
    TRAINING_PROGRESS = "training.progress"
    EVENTS_DLQ = "events.dlq"


@dataclass(frozen=True)
class TopicSpec:
    """One row of the topic table."""

    name: str
    key: str
    """What the record key holds (documentation; partitioning follows it)."""
    cleanup: Literal["delete", "compact"]
    retention_ms: int | None
    """None: keep forever (compacted topics)."""
    event: type[ev.Event] | None
    """Payload type; None for DLQ topics, which carry the original bytes."""
    partitions: int | None = None
    """None: the cluster settings' ``default_partitions``."""
    dlq: str | None = Topics.EVENTS_DLQ
    """Where consumers of this topic dead-letter what they cannot handle."""
    extra: dict[str, str] = field(default_factory=dict)

    def configs(self, settings: KafkaSettings) -> dict[str, str]:
        """Topic-level configuration the broker should hold for this topic."""
        cfg = {
            "cleanup.policy": self.cleanup,
            "min.insync.replicas": str(settings.min_insync_replicas),
            "max.message.bytes": str(RECORD_MAX_BYTES),
        }
        if self.retention_ms is not None:
            cfg["retention.ms"] = str(self.retention_ms)
        else:
            cfg["retention.ms"] = "-1"
        cfg.update(self.extra)
        return cfg


def _spec(*args: object, **kw: object) -> TopicSpec:
    return TopicSpec(*args, **kw)  # type: ignore[arg-type]


TOPICS: dict[str, TopicSpec] = {
    s.name: s
    for s in (
        _spec(
            Topics.FRAMES_RAW,
            "camera_id",
            "delete",
            DAY_MS,
            ev.FrameRaw,
            dlq=Topics.FRAMES_DLQ,
            extra={"max.message.bytes": str(FRAME_RECORD_MAX_BYTES)},
        ),
        _spec(
            Topics.FRAMES_VALID, "camera_id", "delete", DAY_MS, ev.FrameValid, dlq=Topics.FRAMES_DLQ
        ),
        _spec(
            Topics.FRAMES_DLQ,
            "source key",
            "delete",
            7 * DAY_MS,
            None,
            dlq=None,
            extra={"max.message.bytes": str(FRAME_DLQ_MAX_BYTES)},
        ),
        _spec(Topics.PREDICTIONS, "camera_id", "delete", 7 * DAY_MS, ev.Prediction),
        _spec(Topics.PREDICTIONS_SHADOW, "camera_id", "delete", 7 * DAY_MS, ev.Prediction),
        _spec(Topics.LABELS, "frame_id", "delete", 30 * DAY_MS, ev.Label),
        _spec(Topics.LABELS_REQUESTS, "frame_id", "delete", DAY_MS, ev.LabelRequest),
        _spec(Topics.EXAMPLES, "frame_id", "compact", None, ev.Example),
        # Windows (WindowMetrics) and champion/challenger comparisons (LiveComparison).
        _spec(Topics.METRICS, "model version", "delete", 30 * DAY_MS, ev.Event),
        _spec(Topics.RETRAIN_REQUESTS, "model name", "delete", 30 * DAY_MS, ev.RetrainRequest),
        _spec(Topics.MODELS_TRAINED, "model version", "delete", 90 * DAY_MS, ev.ModelTrained),
        _spec(Topics.MODELS_EVALUATED, "model version", "delete", 90 * DAY_MS, ev.ModelEvaluated),
        _spec(
            # One partition: the registry folds the log in order. Keys name a fact, not the
            # model, so compaction drops only re-published facts and the history survives.
            Topics.MODELS_LIFECYCLE,
            "model/version/fact (shared.registry.lifecycle_key)",
            "compact",
            None,
            ev.ModelLifecycle,
            partitions=1,
        ),
        _spec(Topics.ALERTS, "none", "delete", 7 * DAY_MS, ev.Alert),
        _spec(Topics.TRAINING_PROGRESS, "none", "delete", 7 * DAY_MS, ev.TrainingProgress),
        _spec(Topics.EVENTS_DLQ, "source key", "delete", 7 * DAY_MS, None, dlq=None),
    )
}


def event_for(topic: str) -> type[ev.Event] | None:
    """The event type records of ``topic`` (StreamLoop's name) carry, None for a DLQ topic.

    Readers pass it to ``decode(..., default=...)``: a record published to a topic without an
    ``event_type`` is that topic's event."""
    spec = TOPICS.get(topic)
    return spec.event if spec is not None else None


def dlq_for(topic: str) -> str:
    """The dead-letter topic for records consumed from ``topic``."""
    spec = TOPICS.get(topic)
    if spec is None or spec.dlq is None:
        return Topics.EVENTS_DLQ
    return spec.dlq


@dataclass
class ProvisionReport:
    """What ``provision`` did, topic by topic."""

    created: list[str] = field(default_factory=list)
    updated: dict[str, dict[str, str]] = field(default_factory=dict)
    """topic -> the settings that were changed (name -> new value)."""
    partitions_added: dict[str, int] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.partitions_added)


def provision(
    settings: KafkaSettings,
    specs: Iterable[TopicSpec] | None = None,
    *,
    name_prefix: str | None = None,
    timeout_s: float = 30.0,
) -> ProvisionReport:
    """Create missing topics and align the configuration of existing ones.

    Partitions are only ever added (Kafka cannot remove them). ``name_prefix`` namespaces
    the topics (default: ``settings.topic_prefix``).
    """
    if name_prefix is None:
        name_prefix = settings.topic_prefix
    from shared.kafka_admin import KafkaAdmin

    wanted = list(TOPICS.values() if specs is None else specs)
    report = ProvisionReport()
    with KafkaAdmin(settings) as admin:
        existing = admin.describe_partition_counts()
        to_create = []
        for spec in wanted:
            name = name_prefix + spec.name
            parts = spec.partitions or settings.default_partitions
            if name not in existing:
                to_create.append((name, parts, spec.configs(settings)))
        if to_create:
            admin.create_topics(to_create, settings.replication_factor, timeout_s=timeout_s)
            report.created = [name for name, _, _ in to_create]
            log.info("created topics", extra={"topics": report.created})
        created = set(report.created)
        present = [s for s in wanted if name_prefix + s.name not in created]
        current = admin.describe_topic_configs([name_prefix + s.name for s in present])
        for spec in present:
            name = name_prefix + spec.name
            target = spec.configs(settings)
            have = current.get(name, {})
            diff = {k: v for k, v in target.items() if have.get(k) != v}
            parts = spec.partitions or settings.default_partitions
            if existing[name] < parts:
                admin.add_partitions(name, parts)
                report.partitions_added[name] = parts
            if diff:
                admin.alter_topic_configs(name, diff)
                report.updated[name] = diff
            if not diff and existing[name] >= parts:
                report.unchanged.append(name)
    return report
