"""Every kafka-python reader waits out a poll that cannot reach the broker: the topic reader
behind the services' replays and followers, and the SDK's prediction subscriber."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaConnectionError, NodeNotReadyError, TopicAuthorizationFailedError

import shared.errors
import shared.reader
import shared.sdk
from shared.errors import poll_through_outage
from shared.events import encode
from shared.reader import TopicReader
from shared.sdk import PredictionSubscriber
from shared.settings import KafkaSettings
from tests.unit.test_sdk_subscriber import prediction

TOPIC = "predictions"
TP = TopicPartition(TOPIC, 0)


class Rec:
    def __init__(self, offset: int, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.value = TOPIC, 0, offset, value
        self.timestamp, self.headers = offset, []


class ScriptedConsumer:
    """One partition of ``predictions``; each poll answers from ``script``: an exception is
    raised, a list of values is returned as records; once spent, polls come back empty."""

    def __init__(self, *script: Any, **_config: Any) -> None:
        self.script, self.polls, self.at = list(script), 0, 0

    def topics(self) -> set[str]:
        return {TOPIC}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = list(tps)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.at = 0

    def seek_to_end(self, *tps: TopicPartition) -> None:
        self.at = 0

    def position(self, tp: TopicPartition) -> int:
        return self.at

    def poll(self, timeout_ms: int, max_records: int | None = None) -> Any:
        self.polls += 1
        if not self.script:
            return {}
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        recs = [Rec(self.at + i, v) for i, v in enumerate(step)]
        self.at += len(recs)
        return {TP: recs}

    def close(self, autocommit: bool = True) -> None:
        pass


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    pauses: list[float] = []
    monkeypatch.setattr(shared.errors, "POLL_RETRY_S", 0.25)
    monkeypatch.setattr(shared.reader.time, "sleep", pauses.append)
    return pauses


def test_a_retriable_error_is_an_empty_poll_after_the_pause() -> None:
    pauses: list[float] = []
    consumer = ScriptedConsumer(NodeNotReadyError("0"), [b"a"])
    assert poll_through_outage(consumer, timeout_ms=100, pause=pauses.append) == {}
    assert pauses == [0.25]
    polled = poll_through_outage(consumer, timeout_ms=100, pause=pauses.append)
    assert [r.value for r in polled[TP]] == [b"a"]
    assert pauses == [0.25]  # no pause after a poll that worked


def test_an_error_that_waiting_cannot_fix_is_raised() -> None:
    consumer = ScriptedConsumer(TopicAuthorizationFailedError(TOPIC))
    with pytest.raises(TopicAuthorizationFailedError):
        poll_through_outage(consumer, timeout_ms=100, pause=lambda s: None)


def test_a_topic_reader_follows_on_through_refused_polls(
    monkeypatch: pytest.MonkeyPatch, no_pause: list[float]
) -> None:
    refused = KafkaConnectionError("111 ECONNREFUSED")
    consumer = ScriptedConsumer([b"1"], refused, refused, [b"2", b"3"])
    monkeypatch.setattr(shared.reader, "KafkaConsumer", lambda **kw: consumer)
    got: list[bytes] = []
    stop = threading.Event()
    with TopicReader(KafkaSettings(), [TOPIC]) as reader:
        for rec in reader.follow(stop=stop, timeout_s=10):
            if rec is not None:
                got.append(rec.value)
                if len(got) == 3:
                    stop.set()
    assert got == [b"1", b"2", b"3"]
    assert no_pause.count(0.25) == 2


def test_a_topic_reader_reads_to_its_end_through_a_refused_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer = ScriptedConsumer(KafkaConnectionError("refused"), [b"1", b"2"])
    monkeypatch.setattr(shared.reader, "KafkaConsumer", lambda **kw: consumer)
    with TopicReader(KafkaSettings(), [TOPIC]) as reader:
        got = [rec.value for rec in reader.until_end({TP: 2})]
    assert got == [b"1", b"2"]


def test_a_prediction_subscriber_delivers_on_through_refused_polls(
    monkeypatch: pytest.MonkeyPatch, no_pause: list[float]
) -> None:
    first, second = prediction(frame="f1"), prediction(frame="f2")
    refused = KafkaConnectionError("111 ECONNREFUSED")
    consumer = ScriptedConsumer([encode(first)], refused, refused, refused, [encode(second)])
    monkeypatch.setattr(shared.sdk, "KafkaConsumer", lambda **kw: consumer)
    monkeypatch.setattr(shared.sdk.time, "sleep", no_pause.append)
    with PredictionSubscriber(KafkaSettings(), max_records=2) as predictions:
        got = [p.frame_id for p in predictions]
    assert got == ["f1", "f2"]
    assert no_pause.count(0.25) == 3
