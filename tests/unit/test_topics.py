from __future__ import annotations

from shared.events import Example, FrameRaw
from shared.settings import KafkaSettings
from shared.topics import FRAME_DLQ_MAX_BYTES, FRAME_RECORD_MAX_BYTES, TOPICS, Topics, dlq_for


def test_table_matches_the_design() -> None:
    assert TOPICS[Topics.FRAMES_RAW].event is FrameRaw
    assert TOPICS[Topics.EXAMPLES].event is Example
    compacted = {n for n, s in TOPICS.items() if s.cleanup == "compact"}
    assert compacted == {Topics.EXAMPLES, Topics.MODELS_LIFECYCLE}
    assert TOPICS[Topics.LABELS].retention_ms == 30 * 86_400_000
    assert TOPICS[Topics.MODELS_TRAINED].retention_ms == 90 * 86_400_000


def test_every_topic_name_is_a_constant() -> None:
    constants = {v for k, v in vars(Topics).items() if k.isupper()}
    assert constants == set(TOPICS)


def test_frames_dead_letter_to_frames_dlq_and_the_rest_to_events_dlq() -> None:
    assert dlq_for(Topics.FRAMES_RAW) == Topics.FRAMES_DLQ
    assert dlq_for(Topics.FRAMES_VALID) == Topics.FRAMES_DLQ
    assert dlq_for(Topics.LABELS) == Topics.EVENTS_DLQ
    assert dlq_for("someone.elses") == Topics.EVENTS_DLQ


def test_configs_carry_cleanup_retention_and_min_isr() -> None:
    cfg = TOPICS[Topics.EXAMPLES].configs(
        KafkaSettings(replication_factor=3, min_insync_replicas=2)
    )
    assert cfg["cleanup.policy"] == "compact"
    assert cfg["retention.ms"] == "-1"
    assert cfg["min.insync.replicas"] == "2"
    assert TOPICS[Topics.FRAMES_RAW].configs(KafkaSettings())["retention.ms"] == "86400000"


def test_only_the_topics_of_published_images_take_large_records() -> None:
    from shared.bus import PRODUCER_DEFAULTS

    limits = {n: int(s.configs(KafkaSettings())["max.message.bytes"]) for n, s in TOPICS.items()}
    assert limits.pop(Topics.FRAMES_RAW) == FRAME_RECORD_MAX_BYTES == 12 * 1024 * 1024
    assert limits.pop(Topics.FRAMES_DLQ) == FRAME_DLQ_MAX_BYTES > FRAME_RECORD_MAX_BYTES
    assert set(limits.values()) == {2 * 1024 * 1024}
    assert PRODUCER_DEFAULTS["max_request_size"] >= FRAME_DLQ_MAX_BYTES
