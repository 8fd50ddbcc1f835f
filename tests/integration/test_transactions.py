"""Exactly once through a consumer loop with a transactional producer, on the real broker:
a failed attempt publishes nothing, a dead letter commits with the batch, and a member that
fell out of its group while holding a batch (a zombie) is fenced: what it wrote is never
read by a ``read_committed`` reader, though it is in the log."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from kafka import KafkaConsumer

from shared.bus import ConsumerLoop, EventProducer, RetryPolicy
from shared.events import Alert, decode
from shared.metrics import BUS_METRICS
from shared.ports import Message, Rejection
from shared.settings import KafkaSettings
from shared.topics import Topics
from tests.conftest import provision_prefixed
from tests.integration.helpers import read_all, wait_for

pytestmark = pytest.mark.timeout(240)

SOURCE, OUTPUT, DLQ = Topics.ALERTS, Topics.LABELS_REQUESTS, Topics.EVENTS_DLQ


@pytest.fixture
def settings(kafka_settings: KafkaSettings, prefix: str) -> KafkaSettings:
    provision_prefixed(kafka_settings, prefix, [SOURCE, OUTPUT, DLQ])
    return KafkaSettings(topic_prefix=prefix)


def publish_inputs(settings: KafkaSettings, n: int) -> list[str]:
    ids = []
    with EventProducer(settings) as producer:
        for i in range(n):
            ev = Alert(severity="info", kind="test", message=f"m{i}", source="tests")
            producer.publish(SOURCE, ev, key=f"k{i % 7}")
            ids.append(ev.event_id)
        producer.flush()
    return ids


def outputs(settings: KafkaSettings, expect: int, *, committed: bool = True) -> list[str]:
    """The ``message`` of every output record (the input's event id), duplicates kept."""
    if committed:
        records = read_all(settings, settings.topic_prefix + OUTPUT, expect, timeout_s=10)
    else:
        consumer = KafkaConsumer(
            settings.topic_prefix + OUTPUT,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_uncommitted",
            **settings.client_kwargs(),
        )
        records, deadline = [], time.monotonic() + 10
        while len(records) < expect and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        consumer.close()
    return [decode(r.value, Alert).message for r in records]


def loop(
    settings: KafkaSettings,
    group: str,
    tid: str,
    handler: Any,
    **options: Any,
) -> tuple[ConsumerLoop[Alert], EventProducer, threading.Thread]:
    producer = EventProducer(settings, transactional_id=tid)
    consumer_loop = ConsumerLoop(
        settings,
        group_id=group,
        topics=[SOURCE],
        event_type=Alert,
        producer=producer,
        batch_handler=handler(producer),
        retry=RetryPolicy(max_attempts=3, backoff_s=0.05),
        **options,
    )
    thread = threading.Thread(target=consumer_loop.run, daemon=True)
    thread.start()
    return consumer_loop, producer, thread


def echo(producer: EventProducer, *, poison: str = "", fail_first: bool = False) -> Any:
    """A batch handler that publishes one output per input (its event id as the message);
    ``poison``: that input is refused; ``fail_first``: the first call raises after it has
    published its outputs."""
    calls = [0]

    def handle(batch: list[Message[Alert]]) -> list[Rejection[Alert]]:
        calls[0] += 1
        refused = []
        for msg in batch:
            if msg.event.event_id == poison:
                refused.append(Rejection(msg, "poison", "refused by the test"))
                continue
            out = Alert(severity="info", kind="out", message=msg.event.event_id, source="t")
            producer.publish(OUTPUT, out, key=msg.key)
        if fail_first and calls[0] == 1:
            raise RuntimeError("fails after publishing")
        return refused

    return handle


def test_a_failed_attempt_publishes_nothing_and_each_record_comes_out_once(
    settings: KafkaSettings,
) -> None:
    ids = publish_inputs(settings, 60)
    group = f"{settings.topic_prefix}eos"
    committed_before = BUS_METRICS.transactions.labels(group, "committed")._value.get()
    consumer_loop, producer, thread = loop(
        settings,
        group,
        f"{group}-a",
        lambda p: echo(p, poison=ids[17], fail_first=True),
    )
    try:
        wait_for(lambda: len(outputs(settings, 59)) >= 59, 60, what="59 outputs")
    finally:
        consumer_loop.stop()
        thread.join(30)
        producer.close()
    # Read committed or not: the failed attempt's outputs were never sent.
    for committed in (True, False):
        got = Counter(outputs(settings, 10**6, committed=committed))
        assert set(got) == set(ids) - {ids[17]} and max(got.values()) == 1, committed
    dead = read_all(settings, settings.topic_prefix + DLQ, 1, timeout_s=10)
    assert [decode(r.value, Alert).event_id for r in dead] == [ids[17]]
    assert BUS_METRICS.transactions.labels(group, "committed")._value.get() > committed_before


def test_a_member_that_fell_out_of_its_group_is_fenced_and_its_outputs_never_show(
    settings: KafkaSettings,
) -> None:
    ids = publish_inputs(settings, 40)
    group = f"{settings.topic_prefix}eos-zombie"
    holding, woke = threading.Event(), threading.Event()

    def slow(producer: EventProducer) -> Any:
        inner = echo(producer)

        def handle(batch: list[Message[Alert]]) -> list[Rejection[Alert]]:
            if not holding.is_set():
                # Past max_poll_interval_ms: the client leaves the group and another member
                # takes the partitions, while this one still holds the batch.
                holding.set()
                time.sleep(9)
                woke.set()
            return inner(batch)

        return handle

    aborted_before = BUS_METRICS.transactions.labels(group, "aborted")._value.get()
    zombie, zp, zt = loop(
        settings, group, f"{group}-{uuid.uuid4().hex[:4]}", slow, max_poll_interval_ms=3000
    )
    assert holding.wait(60), "the first member never got a batch"
    other, op, ot = loop(settings, group, f"{group}-{uuid.uuid4().hex[:4]}", echo)
    try:
        wait_for(lambda: len(outputs(settings, 40)) >= 40, 90, what="40 committed outputs")
        assert woke.wait(30)
        wait_for(
            lambda: BUS_METRICS.transactions.labels(group, "aborted")._value.get() > aborted_before,
            30,
            what="the zombie's transaction aborted",
        )
    finally:
        for lp in (zombie, other):
            lp.stop()
        for t in (zt, ot):
            t.join(30)
        zp.close()
        op.close()
    committed = Counter(outputs(settings, 10**6))
    assert set(committed) == set(ids) and max(committed.values()) == 1
    # The zombie did write: its records are in the log, aborted.
    everything = Counter(outputs(settings, 10**6, committed=False))
    assert sum(everything.values()) > sum(committed.values())
