"""The topic reader against the real broker: where it starts, the cut it reads, following,
and topics that appear later."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from shared.bus import EventProducer
from shared.events import Label
from shared.fetch import AT_REST_AFTER_S, AT_REST_POLL_MS, AT_REST_WAIT_MS
from shared.reader import RecordCounter, TopicReader
from shared.settings import KafkaSettings
from shared.topics import Topics
from tests.conftest import provision_prefixed


def _labels(kafka: KafkaSettings, ids: list[str]) -> None:
    with EventProducer(kafka, client_id="reader-test") as producer:
        for frame_id in ids:
            producer.publish(Topics.LABELS, Label(frame_id=frame_id, label="car"), key=frame_id)


def _ids(records: list[object]) -> list[str]:
    from shared.events import decode

    return [decode(r.value, Label).frame_id for r in records]  # type: ignore[attr-defined]


@pytest.fixture
def kafka(kafka_settings: KafkaSettings, prefix: str) -> KafkaSettings:
    settings = kafka_settings.model_copy(update={"topic_prefix": prefix})
    provision_prefixed(settings, prefix, [Topics.LABELS])
    return settings


def test_start_policies_and_the_cut_until_the_end(kafka: KafkaSettings) -> None:
    _labels(kafka, [f"f{i}" for i in range(30)])
    with TopicReader(kafka, [Topics.LABELS]) as reader:
        ends = reader.end_offsets()
        _labels(kafka, ["late"])  # after the cut: not part of it
        cut = list(reader.until_end(ends, timeout_s=30))
    assert sorted(_ids(cut)) == sorted(f"f{i}" for i in range(30))
    assert all(reader.logical(r.topic) == Topics.LABELS for r in cut)

    with TopicReader(kafka, [Topics.LABELS], start=2) as reader:
        last = list(reader.until_end(timeout_s=30))
        partitions = len(reader.partitions)
    # The last two of every partition that holds that many: "late" is among them.
    assert "late" in _ids(last)
    assert len(last) <= 2 * partitions < 31

    with TopicReader(kafka, [Topics.LABELS], start="end") as reader:
        assert list(reader.until_end(timeout_s=10)) == []
        assert reader.count() == 31
        assert reader.count(Topics.LABELS) == 31 and reader.count(Topics.EXAMPLES) == 0


def test_the_last_n_of_a_topic_written_in_transactions_are_n_committed_records(
    kafka: KafkaSettings,
) -> None:
    # One record per transaction and key: every record is followed by a commit marker that
    # takes an offset, and an aborted transaction's records are never read.
    with EventProducer(kafka, transactional_id=f"{kafka.topic_prefix}reader") as producer:
        for i in range(12):
            producer.begin()
            producer.publish(Topics.LABELS, Label(frame_id=f"t{i}", label="car"), key="k")
            if i == 10:
                producer.abort()
            else:
                producer.commit({}, None)
    with TopicReader(kafka, [Topics.LABELS], start=4) as reader:
        last = list(reader.until_end(timeout_s=30))
    # The last four records begin ten offsets before the end, markers and t10 between them.
    assert _ids(last) == ["t7", "t8", "t9", "t11"]


def test_seek_to_time_reads_from_the_first_record_at_or_after_it(kafka: KafkaSettings) -> None:
    _labels(kafka, [f"before{i}" for i in range(20)])
    time.sleep(0.05)
    cut = datetime.now(UTC)
    time.sleep(0.05)
    _labels(kafka, [f"after{i}" for i in range(20)])
    for at in (cut, cut.replace(tzinfo=None)):  # naive means UTC
        with TopicReader(kafka, [Topics.LABELS]) as reader:
            reader.seek_to_time(at)
            assert sorted(_ids(list(reader.until_end(timeout_s=30)))) == sorted(
                f"after{i}" for i in range(20)
            )
    # Later than every record: each partition is read from its end, so nothing.
    with TopicReader(kafka, [Topics.LABELS]) as reader:
        reader.seek_to_time(datetime.now(UTC) + timedelta(minutes=1))
        assert list(reader.until_end(timeout_s=10)) == []


def test_follow_reads_what_comes_and_stops_when_asked(kafka: KafkaSettings) -> None:
    _labels(kafka, ["old"])
    stop = threading.Event()
    got: list[str] = []
    with TopicReader(kafka, [Topics.LABELS], start="end") as reader:
        _labels(kafka, ["new1", "new2"])
        for rec in reader.follow(stop=stop, timeout_s=30, poll_ms=100):
            if rec is not None:
                got += _ids([rec])
            if len(got) == 2:
                stop.set()
    assert sorted(got) == ["new1", "new2"]

    with (
        TopicReader(kafka, [Topics.LABELS], start="end") as reader,
        pytest.raises(TimeoutError),
    ):
        for _ in reader.follow(timeout_s=1, poll_ms=100):
            pass


def test_a_reader_at_rest_waits_longer_and_still_returns_a_record_at_once(
    kafka: KafkaSettings,
) -> None:
    with TopicReader(kafka, [Topics.LABELS], start="end") as reader:
        fetcher = reader._consumer._fetcher.config  # type: ignore[attr-defined]
        assert fetcher["fetch_max_wait_ms"] == 500  # kafka-python's, while records may flow
        quiet_until = time.monotonic() + AT_REST_AFTER_S + 0.5
        while time.monotonic() < quiet_until:
            assert reader.poll(100) == []
        # At rest: the broker holds an empty fetch for 5 s, a poll waits up to a second.
        assert fetcher["fetch_max_wait_ms"] == AT_REST_WAIT_MS
        started = time.monotonic()
        assert reader.poll(100) == []
        assert time.monotonic() - started >= 0.8 * AT_REST_POLL_MS / 1000

        def publish_later() -> None:
            time.sleep(0.3)
            _labels(kafka, ["woken"])

        threading.Thread(target=publish_later).start()
        started = time.monotonic()
        got: list[str] = []
        while not got and time.monotonic() - started < 10:
            got = _ids(reader.poll(100))
        # The held fetch returns with the record, not at the end of its 5 s.
        assert got == ["woken"] and time.monotonic() - started < 3
        assert fetcher["fetch_max_wait_ms"] == 500  # busy again


def test_a_topic_that_appears_later_is_read_after_refresh(
    kafka: KafkaSettings,
) -> None:
    counter = RecordCounter(kafka, Topics.EXAMPLES)
    try:
        assert counter() == 0  # the topic does not exist yet
        with TopicReader(kafka, [Topics.LABELS, Topics.EXAMPLES]) as reader:
            assert {reader.logical(tp.topic) for tp in reader.partitions} == {Topics.LABELS}
            provision_prefixed(kafka, kafka.topic_prefix, [Topics.EXAMPLES])
            deadline = time.monotonic() + 30
            while not any(Topics.EXAMPLES in tp.topic for tp in reader.partitions):
                assert time.monotonic() < deadline, "the new topic was never assigned"
                reader.refresh()
                time.sleep(0.5)
        with EventProducer(kafka, client_id="reader-test") as producer:
            producer.publish(Topics.EXAMPLES, Label(frame_id="x", label="car"), key="x")
        assert counter() == 1
    finally:
        counter.close()


def test_the_example_log_reads_only_what_was_appended_and_equals_a_fresh_read(
    kafka_settings: KafkaSettings, prefix: str
) -> None:
    """An ``ExampleLog`` read twice, with examples, a corrected label and a tombstone appended
    in between: the second read decodes only the new records and returns exactly the table
    a fresh ``read_examples`` returns."""
    from shared.example_log import ExampleLog, read_examples
    from tests.synthetic import render_examples

    kafka = kafka_settings.model_copy(update={"topic_prefix": prefix})
    provision_prefixed(kafka, prefix, [Topics.EXAMPLES])
    first, more = render_examples(40, seed=1), render_examples(10, seed=2)
    corrected = first[3].model_copy(update={"label": "bus" if first[3].label != "bus" else "car"})
    shape = (64, 64, 3)
    with EventProducer(kafka, client_id="example-log-test") as producer:
        for ex in first:
            producer.publish(Topics.EXAMPLES, ex, key=ex.frame_id)
        producer.flush()
        progress: list[tuple[int, int]] = []
        with ExampleLog(
            kafka, shape=shape, on_progress=lambda r, t: progress.append((r, t))
        ) as log:
            assert len(log()) == 40
            for ex in [*more, corrected]:
                producer.publish(Topics.EXAMPLES, ex, key=ex.frame_id)
            producer.publish_raw(Topics.EXAMPLES, None, key=first[5].frame_id.encode(), headers=[])
            producer.flush()
            progress.clear()
            again = log.read()
            assert progress[-1] == (12, 12)  # the ten new, the correction, the tombstone
            fresh = read_examples(kafka, shape=shape)
    assert [r.frame_id for r in again.records] == [r.frame_id for r in fresh.records]
    assert [r.label for r in again.records] == [r.label for r in fresh.records]
    assert (again.pixels == fresh.pixels).all() and again.end_offsets == fresh.end_offsets
    ids = {r.frame_id for r in again.records}
    assert len(again) == 49 and first[5].frame_id not in ids
    assert (
        next(r.label for r in again.records if r.frame_id == first[3].frame_id) == corrected.label
    )
