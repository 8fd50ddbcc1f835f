"""Topic provisioning against the real broker."""

from __future__ import annotations

from dataclasses import replace

from shared.kafka_admin import KafkaAdmin
from shared.settings import KafkaSettings
from shared.topics import TOPICS, Topics, provision

NAMES = [Topics.FRAMES_RAW, Topics.EXAMPLES, Topics.MODELS_LIFECYCLE, Topics.FRAMES_DLQ]


def test_provisioning_twice_changes_nothing_the_second_time(
    kafka_settings: KafkaSettings, prefix: str
) -> None:
    specs = [TOPICS[n] for n in NAMES]
    first = provision(kafka_settings, specs, name_prefix=prefix)
    assert sorted(first.created) == sorted(prefix + n for n in NAMES)
    second = provision(kafka_settings, specs, name_prefix=prefix)
    assert not second.changed
    assert sorted(second.unchanged) == sorted(prefix + n for n in NAMES)

    with KafkaAdmin(kafka_settings) as admin:
        counts = admin.describe_partition_counts([prefix + n for n in NAMES])
        configs = admin.describe_topic_configs(
            [prefix + Topics.EXAMPLES, prefix + Topics.FRAMES_RAW]
        )
    assert counts[prefix + Topics.MODELS_LIFECYCLE] == 1
    assert counts[prefix + Topics.FRAMES_RAW] == kafka_settings.default_partitions
    assert configs[prefix + Topics.EXAMPLES]["cleanup.policy"] == "compact"
    assert configs[prefix + Topics.FRAMES_RAW]["retention.ms"] == "86400000"


def test_drifted_config_and_partitions_are_brought_back_in_line(
    kafka_settings: KafkaSettings, prefix: str
) -> None:
    spec = TOPICS[Topics.LABELS]
    provision(kafka_settings, [spec], name_prefix=prefix)
    name = prefix + Topics.LABELS
    with KafkaAdmin(kafka_settings) as admin:
        admin.alter_topic_configs(name, {"retention.ms": "1000"})
    grown = replace(spec, partitions=kafka_settings.default_partitions + 2)
    report = provision(kafka_settings, [grown], name_prefix=prefix)
    assert report.updated == {name: {"retention.ms": str(spec.retention_ms)}}
    assert report.partitions_added == {name: kafka_settings.default_partitions + 2}
    with KafkaAdmin(kafka_settings) as admin:
        assert admin.describe_topic_configs([name])[name]["retention.ms"] == str(spec.retention_ms)
        assert (
            admin.describe_partition_counts([name])[name] == kafka_settings.default_partitions + 2
        )
    assert not provision(kafka_settings, [grown], name_prefix=prefix).changed


def test_services_provisioning_at_the_same_time_do_not_trip_over_each_other(
    kafka_settings: KafkaSettings, prefix: str
) -> None:
    import threading

    errors: list[Exception] = []

    def go() -> None:
        try:
            provision(kafka_settings, list(TOPICS.values()), name_prefix=prefix)
        except Exception as exc:  # noqa: BLE001  (collected for the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with KafkaAdmin(kafka_settings) as admin:
        names = set(admin.list_topics())
    assert {prefix + name for name in TOPICS} <= names
