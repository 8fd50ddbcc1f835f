"""PredictionSubscriber against the real broker, on topics of each test's own; and the plain
kafka-python client the README shows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from shared.bus import EventProducer
from shared.events import Prediction, utcnow
from shared.sdk import PredictionSubscriber
from shared.settings import KafkaSettings
from shared.topics import Topics
from tests.conftest import provision_prefixed
from tests.integration.helpers import bare_producer

pytestmark = pytest.mark.timeout(120)

CLASSES = ("car", "truck", "bus")


def prediction(frame: str, camera: str = "cam-1", *, shadow: bool = False) -> Prediction:
    now = utcnow()
    cls = CLASSES[sum(map(ord, frame)) % len(CLASSES)]
    return Prediction(
        frame_id=frame,
        camera_id=camera,
        captured_at=now - timedelta(milliseconds=30),
        model_name="vehicles",
        model_version="v7" if not shadow else "v8",
        predicted_class=cls,
        probabilities={c: (0.9 if c == cls else 0.05) for c in CLASSES},
        confidence=0.9,
        served_at=now,
        latency_from_capture_ms=30.0,
        latency_from_ingest_ms=10.0,
        shadow=shadow,
    )


@pytest.fixture
def settings(kafka_settings: KafkaSettings, prefix: str) -> KafkaSettings:
    provision_prefixed(kafka_settings, prefix, [Topics.PREDICTIONS, Topics.PREDICTIONS_SHADOW])
    return KafkaSettings(topic_prefix=prefix)


@pytest.fixture
def producer(settings: KafkaSettings) -> Iterator[EventProducer]:
    with EventProducer(settings) as p:
        yield p


def publish(producer: EventProducer, *predictions: Prediction) -> None:
    for p in predictions:
        topic = Topics.PREDICTIONS_SHADOW if p.shadow else Topics.PREDICTIONS
        producer.publish(topic, p, key=p.camera_id)
    producer.flush()


def frames(sub: PredictionSubscriber) -> list[str]:
    return [p.frame_id for p in sub]


def test_a_camera_filter_yields_that_camera_in_order_and_skips_what_is_not_a_prediction(
    settings: KafkaSettings, producer: EventProducer
) -> None:
    publish(producer, *(prediction(f"f{i}", f"cam-{i % 3}") for i in range(12)))
    raw = bare_producer(settings)
    raw.send(settings.topic_prefix + Topics.PREDICTIONS, b"not json", key=b"cam-1")
    raw.send(settings.topic_prefix + Topics.PREDICTIONS, b'{"event_type": "x"}', key=b"cam-1")
    raw.flush()
    raw.close()
    publish(producer, prediction("f12", "cam-1"))

    with PredictionSubscriber(
        settings, cameras=["cam-1"], from_beginning=True, idle_timeout_s=3
    ) as sub:
        got = list(sub)
    assert [p.frame_id for p in got] == ["f1", "f4", "f7", "f10", "f12"]
    assert all(isinstance(p, Prediction) and p.camera_id == "cam-1" for p in got)
    assert sub.skipped == 2
    assert sub.delivered == 5


def test_without_from_beginning_only_new_predictions_arrive(
    settings: KafkaSettings, producer: EventProducer
) -> None:
    publish(producer, prediction("old"))
    with PredictionSubscriber(settings, idle_timeout_s=3) as sub:
        publish(producer, prediction("new"))
        assert frames(sub) == ["new"]


def test_a_group_resumes_after_close_where_it_left_off(
    settings: KafkaSettings, producer: EventProducer, prefix: str
) -> None:
    sent = [prediction(f"f{i}", f"cam-{i % 4}") for i in range(10)]
    publish(producer, *sent)
    group = f"{prefix}dashboard"

    with PredictionSubscriber(settings, group_id=group, from_beginning=True, max_records=4) as a:
        first = frames(a)
    assert len(first) == 4

    with PredictionSubscriber(settings, group_id=group, from_beginning=True, idle_timeout_s=5) as b:
        rest = frames(b)
    assert sorted(first + rest) == sorted(p.frame_id for p in sent)
    assert not set(first) & set(rest)

    publish(producer, prediction("later"))
    with PredictionSubscriber(settings, group_id=group, idle_timeout_s=5) as c:
        assert frames(c) == ["later"]


def test_a_prediction_whose_handling_failed_is_delivered_again_to_the_group(
    settings: KafkaSettings, producer: EventProducer, prefix: str
) -> None:
    publish(producer, *(prediction(f"f{i}") for i in range(4)))  # one camera: one partition
    group = f"{prefix}worker"

    with (
        pytest.raises(RuntimeError),
        PredictionSubscriber(settings, group_id=group, from_beginning=True) as sub,
    ):
        for p in sub:
            if p.frame_id == "f2":
                raise RuntimeError("handler failed")

    with PredictionSubscriber(settings, group_id=group, idle_timeout_s=5) as again:
        assert frames(again) == ["f2", "f3"]

    # Leaving the block normally (a break) counts the prediction in hand as consumed.
    publish(producer, prediction("f4"), prediction("f5"))
    with PredictionSubscriber(settings, group_id=group, idle_timeout_s=5) as sub:
        for p in sub:
            if p.frame_id == "f4":
                break
    with PredictionSubscriber(settings, group_id=group, idle_timeout_s=5) as sub:
        assert frames(sub) == ["f5"]


@pytest.mark.parametrize("group", [False, True], ids=["no-group", "group"])
def test_from_time_starts_at_the_first_prediction_at_or_after_that_time(
    settings: KafkaSettings, producer: EventProducer, prefix: str, group: bool
) -> None:
    publish(producer, *(prediction(f"before{i}", f"cam-{i}") for i in range(4)))
    time.sleep(0.2)
    start = datetime.now(UTC)
    time.sleep(0.2)
    publish(producer, *(prediction(f"after{i}", f"cam-{i}") for i in range(4)))

    with PredictionSubscriber(
        settings,
        group_id=f"{prefix}replay" if group else None,
        from_time=start,
        idle_timeout_s=5 if group else 3,
    ) as sub:
        got = frames(sub)
    assert sorted(got) == [f"after{i}" for i in range(4)]


def test_from_offsets_starts_each_listed_partition_there(
    settings: KafkaSettings, producer: EventProducer
) -> None:
    publish(producer, *(prediction(f"f{i}") for i in range(5)))  # one camera: one partition
    partition = partition_holding(settings, Topics.PREDICTIONS)
    with PredictionSubscriber(settings, from_offsets={partition: 3}, idle_timeout_s=3) as sub:
        assert frames(sub) == ["f3", "f4"]


def partition_holding(settings: KafkaSettings, topic: str) -> int:
    """The one partition of ``topic`` that is not empty."""
    consumer = KafkaConsumer(enable_auto_commit=False, **settings.client_kwargs())
    try:
        name = settings.topic_prefix + topic
        tps = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name)]
        (partition,) = [tp.partition for tp, end in consumer.end_offsets(tps).items() if end]
        return int(partition)
    finally:
        consumer.close()


def test_the_shadow_stream_is_read_with_shadow_true(
    settings: KafkaSettings, producer: EventProducer
) -> None:
    publish(producer, prediction("live"), prediction("shadow", shadow=True))
    with PredictionSubscriber(settings, shadow=True, from_beginning=True, idle_timeout_s=3) as s:
        got = list(s)
    assert [(p.frame_id, p.shadow, p.model_version) for p in got] == [("shadow", True, "v8")]


def test_async_iteration_yields_predictions_without_blocking_the_event_loop(
    settings: KafkaSettings, producer: EventProducer
) -> None:
    async def main() -> tuple[list[str], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        got: list[str] = []
        async with PredictionSubscriber(settings, idle_timeout_s=2) as sub:
            # Publish once the subscriber waits: the loop must keep running meanwhile.
            loop = asyncio.get_running_loop()
            loop.call_later(0.5, publish, producer, prediction("a1"), prediction("a2"))
            async for p in sub:
                got.append(p.frame_id)
        tick_task.cancel()
        return got, ticks

    got, ticks = asyncio.run(main())
    assert got == ["a1", "a2"]
    # About 2.5 s of iterating: a blocked loop would have ticked a handful of times at most.
    assert ticks > 50


# The README shows this snippet as the way any client reads predictions; keep the two
# identical. The test runs it as written, with only the topic and group names replaced by
# this test's own.
README_SNIPPET = """
import json

from kafka import KafkaConsumer

consumer = KafkaConsumer(
    "predictions",
    bootstrap_servers="127.0.0.1:9092",
    group_id="my-dashboard",  # a group of your own: Kafka remembers where you stopped
    auto_offset_reset="earliest",  # the first time: from the oldest prediction kept
    isolation_level="read_committed",  # each prediction once, never one serving took back
)
for record in consumer:  # the record key is the camera id
    p = json.loads(record.value)
    print(p["frame_id"], p["camera_id"], p["predicted_class"], p["confidence"], p["model_version"])
"""


class _Enough(Exception):
    pass


def test_the_readme_plain_kafka_python_snippet_reads_predictions(
    settings: KafkaSettings, producer: EventProducer, prefix: str
) -> None:
    sent = [prediction(f"f{i}", f"cam-{i % 2}") for i in range(4)]
    publish(producer, *sent)
    code = README_SNIPPET.replace('"predictions"', f'"{prefix}predictions"').replace(
        '"my-dashboard"', f'"{prefix}my-dashboard"'
    )
    assert code.count(prefix) == 2

    printed: list[tuple[Any, ...]] = []

    def collect(*args: Any) -> None:
        printed.append(args)
        if len(printed) == len(sent):
            raise _Enough

    namespace: dict[str, Any] = {"print": collect}
    try:
        with pytest.raises(_Enough):
            exec(code, namespace)
    finally:
        if "consumer" in namespace:
            namespace["consumer"].close()
    want = {(p.frame_id, p.camera_id, p.predicted_class, p.confidence, "v7") for p in sent}
    assert set(printed) == want
