"""The bus against the real broker and Redis: tracing across processes, dead letters,
redelivery after SIGKILL, graceful SIGTERM, batch handlers."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from shared.bus import ConsumerLoop, DlqHeaders, EventProducer, RetryPolicy
from shared.events import Alert, encode
from shared.fetch import AT_REST_POLL_MS, AT_REST_WAIT_MS, FetchPacing
from shared.kafka_admin import KafkaAdmin
from shared.ports import ClaimsUnavailableError, Message
from shared.settings import KafkaSettings, TelemetrySettings
from shared.telemetry import read_spans, setup_telemetry
from shared.topics import Topics
from tests.conftest import provision_prefixed
from tests.integration.helpers import Proc, bare_producer, read_all, running, wait_for

pytestmark = pytest.mark.timeout(180)


def alert(msg: str) -> Alert:
    return Alert(severity="info", kind="test", message=msg, source="tests")


@pytest.fixture
def topics(kafka_settings: KafkaSettings, prefix: str) -> tuple[str, str]:
    provision_prefixed(kafka_settings, prefix, [Topics.ALERTS, Topics.EVENTS_DLQ])
    return prefix + Topics.ALERTS, prefix + Topics.EVENTS_DLQ


def worker(topic: str, dlq: str, group: str, tmp: Path, key: str, *extra: str) -> Proc:
    return Proc(
        [
            "-m",
            "tests.integration.bus_worker",
            "--topic",
            topic,
            "--dlq",
            dlq,
            "--group",
            group,
            "--traces-dir",
            str(tmp),
            "--redis-key",
            key,
            *extra,
        ]
    )


def headers_of(rec) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {k: v.decode() for k, v in rec.headers}


def test_event_is_handled_in_another_process_inside_a_child_span_of_the_producer(
    kafka_settings: KafkaSettings,
    topics: tuple[str, str],
    tmp_path: Path,
    redis_client,
    prefix: str,
) -> None:
    topic, dlq = topics
    key = f"test:{uuid.uuid4().hex}"
    proc = worker(topic, dlq, prefix + "g", tmp_path, key)
    try:
        proc.wait_line("READY")
        tel = setup_telemetry(
            "test-producer", TelemetrySettings(exporter="memory"), set_global=False
        )
        producer = EventProducer(kafka_settings, tracer=tel.tracer)
        event = alert("hello")
        producer.publish(topic, event, key="k").get(timeout=10)
        producer.close()
        proc.wait_line(f"HANDLED {event.event_id}")
    finally:
        proc.p.send_signal(signal.SIGTERM)
        proc.p.wait(30)
    assert proc.p.returncode == 0, proc.lines[-20:]
    [pub] = [s for s in tel.memory.get_finished_spans() if s.name == f"{topic} publish"]
    spans = read_spans(tmp_path)
    consumer_spans = [s for s in spans if s["name"] == f"{topic} process"]
    assert len(consumer_spans) == 1, spans
    span = consumer_spans[0]
    assert span["kind"] == "CONSUMER"
    assert span["service"] == "bus-worker"
    assert span["trace_id"] == format(pub.context.trace_id, "032x")
    assert span["parent_span_id"] == format(pub.context.span_id, "016x")


def test_malformed_records_go_to_the_dlq_and_the_consumer_keeps_going(
    kafka_settings: KafkaSettings, topics: tuple[str, str], prefix: str
) -> None:
    topic, dlq = topics
    raw = bare_producer(kafka_settings)
    good = [alert(f"good-{i}") for i in range(3)]
    wrong_schema = json.dumps({"event_type": "alert", "severity": "loud"}).encode()
    too_big = encode(alert("x" * 1_600_000))
    payloads = [
        encode(good[0]),
        b"{not json",
        encode(good[1]),
        wrong_schema,
        too_big,
        encode(good[2]),
    ]
    for p in payloads:
        raw.send(topic, value=p, key=b"same-partition")
    raw.flush()
    raw.close()

    handled: list[str] = []
    producer = EventProducer(kafka_settings)
    group = prefix + "dlq-group"
    loop = ConsumerLoop(
        kafka_settings,
        group_id=group,
        topics=[topic],
        event_type=Alert,
        producer=producer,
        handler=lambda m: handled.append(m.event.message),
        dlq_topic_for=lambda _t: dlq,
    )
    with running(loop):
        wait_for(lambda: len(handled) == 3, what="three good events")
        with KafkaAdmin(kafka_settings) as admin:
            wait_for(lambda: admin.lag(group, topic) == 0, what="lag 0")
    producer.close()
    assert handled == ["good-0", "good-1", "good-2"]

    dead = read_all(kafka_settings, dlq, expect=3)
    assert len(dead) == 3
    by_reason = {headers_of(r)[DlqHeaders.ERROR]: r for r in dead}
    assert set(by_reason) == {"not_json", "schema", "too_large"}
    assert by_reason["not_json"].value == b"{not json"
    assert by_reason["too_large"].value == too_big
    assert by_reason["schema"].value == wrong_schema
    offsets = sorted(int(headers_of(r)[DlqHeaders.SOURCE_OFFSET]) for r in dead)
    assert offsets == [1, 3, 4]
    for r in dead:
        h = headers_of(r)
        assert h[DlqHeaders.SOURCE_TOPIC] == topic
        assert h[DlqHeaders.SOURCE_PARTITION].isdigit()
        assert h[DlqHeaders.ATTEMPTS] == "1"
        assert h[DlqHeaders.GROUP] == group
        assert h[DlqHeaders.ERROR_MESSAGE]
        assert r.key == b"same-partition"
    assert "severity" in headers_of(by_reason["schema"])[DlqHeaders.ERROR_MESSAGE]


def test_a_failing_handler_is_retried_then_dead_lettered_and_the_next_record_is_handled(
    kafka_settings: KafkaSettings, topics: tuple[str, str], prefix: str
) -> None:
    topic, dlq = topics
    producer = EventProducer(kafka_settings)
    poison, fine = alert("poison"), alert("fine")
    for e in (poison, fine):
        producer.publish(topic, e, key="one-partition")
    producer.flush()
    calls: list[str] = []
    handled: list[str] = []

    def handle(m: Message[Alert]) -> None:
        calls.append(m.event.message)
        if m.event.message == "poison":
            raise RuntimeError("cannot handle poison")
        handled.append(m.event.message)

    loop = ConsumerLoop(
        kafka_settings,
        group_id=prefix + "g",
        topics=[topic],
        event_type=Alert,
        producer=producer,
        handler=handle,
        retry=RetryPolicy(max_attempts=3, backoff_s=0.01),
        dlq_topic_for=lambda _t: dlq,
    )
    with running(loop):
        wait_for(lambda: handled == ["fine"], what="the record after the poison one")
    producer.close()
    assert calls == ["poison", "poison", "poison", "fine"]
    [dead] = read_all(kafka_settings, dlq, expect=1)
    h = headers_of(dead)
    assert h[DlqHeaders.ERROR] == "handler_error"
    assert h[DlqHeaders.ATTEMPTS] == "3"
    assert "cannot handle poison" in h[DlqHeaders.ERROR_MESSAGE]
    assert dead.value == encode(poison)


def test_a_dependency_outage_delays_a_record_past_its_attempts_and_never_dead_letters_it(
    kafka_settings: KafkaSettings, topics: tuple[str, str], prefix: str
) -> None:
    topic, dlq = topics
    producer = EventProducer(kafka_settings)
    producer.publish(topic, alert("needs redis"), key="k").get(timeout=10)
    outage = {"left": 6}  # twice the attempts a failing record gets
    handled: list[str] = []

    def handle(m: Message[Alert]) -> None:
        if outage["left"] > 0:
            outage["left"] -= 1
            raise ClaimsUnavailableError("Error 111 connecting to 127.0.0.1:6379")
        handled.append(m.event.message)

    loop = ConsumerLoop(
        kafka_settings,
        group_id=prefix + "outage",
        topics=[topic],
        event_type=Alert,
        producer=producer,
        handler=handle,
        retry=RetryPolicy(max_attempts=3, backoff_s=0.01, max_backoff_s=0.05),
        dlq_topic_for=lambda _t: dlq,
    )
    with running(loop):
        wait_for(lambda: handled == ["needs redis"], what="the record once Redis is back")
    producer.close()
    assert read_all(kafka_settings, dlq, expect=1, timeout_s=2) == []


def test_sigkill_after_handling_before_commit_redelivers_and_the_effect_stays_single(
    kafka_settings: KafkaSettings,
    topics: tuple[str, str],
    tmp_path: Path,
    redis_client,
    prefix: str,
) -> None:
    topic, dlq = topics
    key = f"test:{uuid.uuid4().hex}"
    group = prefix + "kill-group"
    producer = EventProducer(kafka_settings)
    event = alert("survive a crash")
    producer.publish(topic, event, key="k").get(timeout=10)
    producer.close()

    first = worker(topic, dlq, group, tmp_path, key, "--hang-on-first")
    first.wait_line("HANGING")
    first.kill()  # SIGKILL: handled, not committed
    assert redis_client.get(f"{key}:calls") == b"1"
    with KafkaAdmin(kafka_settings) as admin:
        assert admin.lag(group, topic) == 1

    second = worker(topic, dlq, group, tmp_path, key)
    try:
        second.wait_line(f"HANDLED {event.event_id}")
        with KafkaAdmin(kafka_settings) as admin:
            wait_for(lambda: admin.lag(group, topic) == 0, what="commit after redelivery")
    finally:
        second.p.send_signal(signal.SIGTERM)
        second.p.wait(30)
    assert redis_client.get(f"{key}:calls") == b"2"  # delivered twice
    assert redis_client.smembers(f"{key}:ids") == {event.event_id.encode()}  # one effect


def test_sigterm_finishes_the_record_in_hand_commits_and_exits_cleanly(
    kafka_settings: KafkaSettings,
    topics: tuple[str, str],
    tmp_path: Path,
    redis_client,
    prefix: str,
) -> None:
    topic, dlq = topics
    key = f"test:{uuid.uuid4().hex}"
    group = prefix + "term-group"
    producer = EventProducer(kafka_settings)
    events = [alert(f"slow-{i}") for i in range(5)]
    for e in events:
        producer.publish(topic, e, key="one-partition")
    producer.close()

    proc = worker(topic, dlq, group, tmp_path, key, "--slow-s", "1.0")
    proc.wait_line("HANDLED")
    proc.p.send_signal(signal.SIGTERM)
    assert proc.p.wait(30) == 0
    assert proc.saw("EXITED")
    handled = len(proc.saw("HANDLED"))
    assert 1 <= handled < len(events)
    with KafkaAdmin(kafka_settings) as admin:
        # Exactly what was handled is committed: nothing lost, nothing handled twice.
        assert admin.lag(group, topic) == len(events) - handled


def test_batch_handler_gets_whole_polls_and_a_poison_record_is_isolated(
    kafka_settings: KafkaSettings, topics: tuple[str, str], prefix: str
) -> None:
    topic, dlq = topics
    producer = EventProducer(kafka_settings)
    for i in range(20):
        producer.publish(topic, alert("poison" if i == 7 else f"ok-{i}"), key="p")
    producer.flush()
    batches: list[int] = []
    handled: list[str] = []

    def handle(batch: list[Message[Alert]]) -> None:
        if any(m.event.message == "poison" for m in batch):
            raise ValueError("poison in batch")
        batches.append(len(batch))
        handled.extend(m.event.message for m in batch)

    loop = ConsumerLoop(
        kafka_settings,
        group_id=prefix + "batch",
        topics=[topic],
        event_type=Alert,
        producer=producer,
        batch_handler=handle,
        retry=RetryPolicy(max_attempts=2, backoff_s=0.01),
        dlq_topic_for=lambda _t: dlq,
    )
    with running(loop):
        wait_for(lambda: len(handled) == 19, what="19 good records")
    producer.close()
    assert sorted(handled) == sorted(f"ok-{i}" for i in range(20) if i != 7)
    [dead] = read_all(kafka_settings, dlq, expect=1)
    assert headers_of(dead)[DlqHeaders.ERROR] == "handler_error"
    assert b"poison" in dead.value


def test_a_loop_at_rest_takes_the_first_record_at_once_and_stops_within_its_poll_wait(
    kafka_settings: KafkaSettings, topics: tuple[str, str], prefix: str
) -> None:
    """At rest the broker holds an empty fetch up to AT_REST_WAIT_MS and a poll waits up to
    AT_REST_POLL_MS: a record that arrives is handled without waiting for either, and stop()
    returns after the poll in progress."""
    topic, dlq = topics
    producer = EventProducer(kafka_settings)
    handled: dict[str, float] = {}
    pacing = FetchPacing(1, 500, 0.5, AT_REST_WAIT_MS)
    loop = ConsumerLoop(
        kafka_settings,
        group_id=prefix + "rest",
        topics=[topic],
        event_type=Alert,
        producer=producer,
        handler=lambda m: handled.setdefault(m.event.message, time.monotonic()),
        dlq_topic_for=lambda _t: dlq,
        pacing=pacing,
    )
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        producer.publish(topic, alert("joined"), key="k").get(timeout=10)
        wait_for(lambda: "joined" in handled, what="the first record (the group joined)")
        wait_for(lambda: pacing.idle, what="the loop at rest")
        time.sleep(1.5)  # the fetch in flight is now one the broker holds AT_REST_WAIT_MS
        sent = time.monotonic()
        producer.publish(topic, alert("at rest"), key="k").get(timeout=10)
        wait_for(lambda: "at rest" in handled, what="the record sent at rest")
        assert handled["at rest"] - sent < AT_REST_WAIT_MS / 1000 / 2
        wait_for(lambda: pacing.idle, what="the loop at rest again")
        time.sleep(1.5)
        asked = time.monotonic()
        loop.stop()
        thread.join(30)
        assert not thread.is_alive()
        assert time.monotonic() - asked < AT_REST_POLL_MS / 1000 + 2.0
    finally:
        loop.stop()
        thread.join(30)
        producer.close()


def test_on_a_frame_path_topic_only_the_kept_frames_are_traced_and_every_dead_letter_is(
    kafka_settings: KafkaSettings, topics: tuple[str, str], prefix: str
) -> None:
    """A frame's trace is kept at the frames ratio, decided where it starts; the batch span
    links only kept traces, the handler's publishes continue each record's own; a dead
    letter is recorded whatever its record's sampling, linked to the record's trace."""
    _, dlq = topics
    provision_prefixed(kafka_settings, prefix, [Topics.FRAMES_VALID])
    topic = prefix + Topics.FRAMES_VALID
    out = topics[0]

    def telemetry(name: str, frames: float):  # type: ignore[no-untyped-def]
        settings = TelemetrySettings(exporter="memory", frames_sample_ratio=frames)
        return setup_telemetry(name, settings, set_global=False)

    kept_camera, dropped_camera = telemetry("kept", 1.0), telemetry("dropped", 0.0)
    kept = [alert(f"kept-{i}") for i in range(5)]
    dropped = [alert(f"dropped-{i}") for i in range(5)]
    for tel, events in ((kept_camera, kept), (dropped_camera, dropped)):
        camera = EventProducer(kafka_settings, tracer=tel.tracer)
        for e in events:
            camera.publish(topic, e, key="cam")
        camera.close()
    raw = bare_producer(kafka_settings)
    raw.send(topic, value=b"{not json", key=b"cam")
    raw.flush()
    raw.close()

    service = telemetry("service", 1.0)  # batch spans kept, to see what they link
    producer = EventProducer(kafka_settings, tracer=service.tracer)
    handled: list[str] = []

    def handle(batch: list[Message[Alert]]) -> None:
        for m in batch:
            producer.publish(out, m.event, context=m.trace_context())
            handled.append(m.event.message)

    loop = ConsumerLoop(
        kafka_settings,
        group_id=prefix + "sampled",
        topics=[topic],
        event_type=Alert,
        producer=producer,
        batch_handler=handle,
        tracer=service.tracer,
        dlq_topic_for=lambda _t: dlq,
    )
    with running(loop):
        wait_for(lambda: len(handled) == 10, what="ten records handled")
    [dead] = read_all(kafka_settings, dlq, expect=1)
    producer.close()

    def trace_ids(tel, name: str) -> set[int]:  # type: ignore[no-untyped-def]
        return {s.context.trace_id for s in tel.memory.get_finished_spans() if s.name == name}

    kept_traces = trace_ids(kept_camera, f"{topic} publish")
    dropped_traces = trace_ids(dropped_camera, f"{topic} publish")
    assert len(kept_traces) == 5 and not dropped_traces  # the cameras' decisions
    spans = service.memory.get_finished_spans()
    batches = [s for s in spans if s.name == f"{topic} process batch"]
    assert batches
    assert {link.context.trace_id for b in batches for link in b.links} == kept_traces
    # Outputs: only the kept frames' publishes are recorded, each in its frame's trace.
    assert {s.context.trace_id for s in spans if s.name == f"{out} publish"} == kept_traces
    [letter] = [s for s in spans if s.name.endswith("dead letter")]
    assert letter.attributes["streamloop.dlq.reason"] == "not_json"
    assert letter.attributes["messaging.destination.name"] == dlq
    carried = headers_of(dead)["traceparent"].split("-")
    assert int(carried[1], 16) == letter.context.trace_id and int(carried[3], 16) & 1  # sampled
    for tel in (kept_camera, dropped_camera, service):
        tel.shutdown()
