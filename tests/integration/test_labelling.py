"""The labelling service (faust) against the real broker: the join in every order."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from shared.bus import DlqHeaders, EventProducer
from shared.events import FrameValid, Label, encode
from shared.settings import KafkaSettings
from shared.telemetry import read_spans
from shared.topics import Topics
from tests.conftest import provision_prefixed
from tests.integration.helpers import Proc, bare_producer, free_port, metric, read_all, wait_for

pytestmark = pytest.mark.timeout(240)

TTL_S = 8


@pytest.fixture
def labelling(kafka_settings: KafkaSettings, prefix: str, tmp_path) -> Iterator[Proc]:  # type: ignore[no-untyped-def]
    provision_prefixed(
        kafka_settings,
        prefix,
        [Topics.FRAMES_VALID, Topics.LABELS, Topics.EXAMPLES, Topics.EVENTS_DLQ],
    )
    port = free_port()
    proc = Proc(
        ["-m", "services.labelling"],
        env={
            "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
            "STREAMLOOP_LABELLING_PROVISION_TOPICS": "false",
            "STREAMLOOP_LABELLING_METRICS_PORT": str(port),
            "STREAMLOOP_LABELLING_FRAME_TTL_S": str(TTL_S),
            "STREAMLOOP_LABELLING_LABEL_TTL_S": str(TTL_S),
            "STREAMLOOP_LABELLING_SWEEP_INTERVAL_S": "1",
            "STREAMLOOP_TELEMETRY_TRACES_DIR": str(tmp_path),
        },
    )
    proc.port = port  # type: ignore[attr-defined]
    yield proc
    proc.kill()
    if proc.p.returncode not in (0, -9):
        print("\n".join(proc.lines[-40:]))


def frame(frame_id: str, camera: str = "cam-1", condition: str = "night") -> FrameValid:
    px = np.full((64, 64, 3), 7, dtype=np.uint8)
    now = datetime.now(UTC)
    return FrameValid(
        frame_id=frame_id,
        camera_id=camera,
        captured_at=now,
        ingested_at=now,
        width=64,
        height=64,
        pixels=px.tobytes(),
        content_sha256="0" * 64,
        condition=condition,
    )


def test_frames_and_labels_join_in_any_order_and_unmatched_entries_expire(
    labelling: Proc, kafka_settings: KafkaSettings, prefix: str
) -> None:
    run = uuid.uuid4().hex[:6]
    ids = {k: f"{run}-{k}" for k in ("before", "after", "twice", "dup", "never", "late", "bad")}
    producer = EventProducer(KafkaSettings(topic_prefix=prefix))

    def send_frame(fid: str) -> None:
        producer.publish(Topics.FRAMES_VALID, frame(fid), key="cam-1")

    def send_label(fid: str, cls: str, event_id: str | None = None) -> Label:
        lab = Label(
            frame_id=fid,
            label=cls,
            annotator="test",
            **({"event_id": event_id} if event_id else {}),
        )
        producer.publish(Topics.LABELS, lab, key=fid)
        return lab

    send_label(ids["before"], "car")  # label first, frame later
    for k in ("before", "after", "twice", "dup", "never", "late", "bad"):
        send_frame(ids[k])
    send_label(ids["twice"], "bus")
    send_label(ids["dup"], "truck", event_id=f"{run}-same-event")
    send_label(ids["dup"], "truck", event_id=f"{run}-same-event")  # redelivered: one example
    send_label(ids["bad"], "spaceship")  # not a configured class
    producer.flush()
    time.sleep(3)
    send_label(ids["after"], "motorcycle")  # arrives well after its frame
    send_label(ids["twice"], "truck")  # a correction replaces "bus"
    producer.flush()

    examples = read_all(
        kafka_settings, prefix + Topics.EXAMPLES, 5, timeout_s=120, alive=labelling.alive
    )
    got = [json.loads(r.value) for r in examples]
    by_id: dict[str, list[str]] = {}
    for e in got:
        by_id.setdefault(e["frame_id"], []).append(e["label"])
    assert by_id == {
        ids["before"]: ["car"],
        ids["after"]: ["motorcycle"],
        ids["twice"]: ["bus", "truck"],
        ids["dup"]: ["truck"],
    }
    one = next(e for e in got if e["frame_id"] == ids["after"])
    assert one["camera_id"] == "cam-1" and one["condition"] == "night" and one["width"] == 64
    assert all(r.key.decode() == e["frame_id"] for r, e in zip(examples, got, strict=True))

    dlq = read_all(kafka_settings, prefix + Topics.EVENTS_DLQ, 1, timeout_s=30)
    headers = {k: v.decode() for k, v in dlq[0].headers}
    assert (
        headers[DlqHeaders.ERROR] == "unknown_class"
        and "spaceship" in headers[DlqHeaders.ERROR_MESSAGE]
    )
    assert json.loads(dlq[0].value)["frame_id"] == ids["bad"]

    # The unlabelled frames ("never", "late", "bad") expire; a label after that finds nothing.
    wait_for(
        lambda: (
            metric(labelling.port, 'streamloop_labelling_expired_total{kind="unlabelled_frame"}')
            >= 3
        ),
        TTL_S + 30,
        what="unlabelled frames to expire",
    )
    send_label(ids["late"], "car")
    producer.flush()
    wait_for(
        lambda: (
            metric(labelling.port, 'streamloop_labelling_expired_total{kind="orphan_label"}') >= 1
        ),
        TTL_S + 30,
        what="the late label to expire unmatched",
    )
    assert len(read_all(kafka_settings, prefix + Topics.EXAMPLES, 6, timeout_s=3)) == 5
    producer.close()


def test_a_restarted_worker_recovers_its_pending_entries_from_the_changelog(
    kafka_settings: KafkaSettings,
    prefix: str,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    provision_prefixed(
        kafka_settings,
        prefix,
        [Topics.FRAMES_VALID, Topics.LABELS, Topics.EXAMPLES, Topics.EVENTS_DLQ],
    )
    env = {
        "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
        "STREAMLOOP_LABELLING_PROVISION_TOPICS": "false",
        "STREAMLOOP_TELEMETRY_TRACES_DIR": str(tmp_path),
    }

    def start() -> Proc:
        proc = Proc(["-m", "services.labelling"], env=env)
        wait_for(
            lambda: proc.alive() and any("Worker ready" in ln for ln in proc.lines),
            120,
            what="labelling ready",
        )
        return proc

    run = uuid.uuid4().hex[:6]
    producer = EventProducer(KafkaSettings(topic_prefix=prefix))
    first = start()
    for i in range(5):
        producer.publish(Topics.FRAMES_VALID, frame(f"{run}-{i}"), key="cam-1")
    producer.flush()
    # Wait until the frames sit in the join table (its changelog), then stop the worker.
    changelog = f"{prefix}streamloop-labelling-pending-changelog"
    wait_for(
        lambda: len(read_all(kafka_settings, changelog, 5, timeout_s=2)) >= 5,
        60,
        what="pending frames in the changelog",
    )
    first.p.send_signal(signal.SIGTERM)
    first.p.wait(60)

    second = start()
    try:
        for i in range(5):
            producer.publish(
                Topics.LABELS, Label(frame_id=f"{run}-{i}", label="bus"), key=f"{run}-{i}"
            )
        producer.flush()
        examples = read_all(
            kafka_settings, prefix + Topics.EXAMPLES, 5, timeout_s=90, alive=second.alive
        )
        assert sorted(json.loads(r.value)["frame_id"] for r in examples) == [
            f"{run}-{i}" for i in range(5)
        ]
        assert not [ln for ln in second.lines if "Error in recovery" in ln]
    finally:
        second.kill()
        producer.close()


def test_a_label_published_without_event_type_becomes_an_example(
    labelling: Proc, kafka_settings: KafkaSettings, prefix: str
) -> None:
    """The documented wire format of ``labels`` names no event_type (nor event_id)."""
    fid = f"{uuid.uuid4().hex[:6]}-plain"
    producer = EventProducer(KafkaSettings(topic_prefix=prefix))
    producer.publish(Topics.FRAMES_VALID, frame(fid), key="cam-1")
    producer.flush()
    producer.close()
    raw = bare_producer(kafka_settings)
    payload = {"frame_id": fid, "label": "car", "camera_id": "cam-1", "annotator": "me"}
    raw.send(prefix + Topics.LABELS, key=fid.encode(), value=json.dumps(payload).encode())
    raw.flush()
    raw.close()

    examples = read_all(
        kafka_settings, prefix + Topics.EXAMPLES, 1, timeout_s=90, alive=labelling.alive
    )
    [example] = [json.loads(r.value) for r in examples]
    assert (example["event_type"], example["frame_id"], example["label"]) == (
        "example",
        fid,
        "car",
    )
    assert read_all(kafka_settings, prefix + Topics.EVENTS_DLQ, 1, timeout_s=3) == []


def _traceparent(trace_id: str, span_id: str) -> list[tuple[str, bytes]]:
    return [("traceparent", f"00-{trace_id}-{span_id}-01".encode())]


def test_frames_and_labels_are_traced_through_to_their_example(
    labelling: Proc, kafka_settings: KafkaSettings, prefix: str, tmp_path: Path
) -> None:
    """Each record gets a CONSUMER span continuing its producer's trace; the example carries
    the trace of the record that completed it, and its span links to the other half's."""
    fid = f"{uuid.uuid4().hex[:6]}-traced"
    frame_trace, frame_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    label_trace, label_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    raw = bare_producer(kafka_settings)
    raw.send(
        prefix + Topics.FRAMES_VALID,
        key=b"cam-1",
        value=encode(frame(fid)),
        headers=_traceparent(frame_trace, frame_span),
    )
    raw.flush()
    label = Label(frame_id=fid, label="car")
    raw.send(
        prefix + Topics.LABELS,
        key=fid.encode(),
        value=encode(label),
        headers=_traceparent(label_trace, label_span),
    )
    raw.flush()
    raw.close()

    [example] = read_all(
        kafka_settings, prefix + Topics.EXAMPLES, 1, timeout_s=90, alive=labelling.alive
    )
    carried = dict(example.headers)["traceparent"].decode().split("-")
    # The frame was sent first, but the two topics are fetched independently: whichever half
    # was joined last completed the example and lends it its trace.
    assert carried[1] in (frame_trace, label_trace)
    last, other = (
        (label_trace, frame_trace) if carried[1] == label_trace else (frame_trace, label_trace)
    )

    def spans() -> list[dict] | None:  # type: ignore[type-arg]
        got = read_spans(tmp_path)
        publish = [s for s in got if s["kind"] == "PRODUCER" and s["trace_id"] == last]
        return got if publish else None

    got = wait_for(spans, 30, what="labelling's spans in its trace file")
    assert {s["service"] for s in got} == {"labelling"}
    by_id = {s["span_id"]: s for s in got}
    for trace_id, parent in ((frame_trace, frame_span), (label_trace, label_span)):
        own = [s for s in got if s["trace_id"] == trace_id]
        consumers = [s for s in own if s["kind"] == "CONSUMER"]
        # One span where the record is read from its topic, one where the join handles it.
        assert len(consumers) == 2, own
        [first] = [s for s in consumers if s["parent_span_id"] == parent]
        assert first["attributes"]["messaging.destination.name"] in (
            prefix + Topics.FRAMES_VALID,
            prefix + Topics.LABELS,
        )
        [second] = [s for s in consumers if s is not first]
        assert second["parent_span_id"] == first["span_id"]
    [publish] = [s for s in got if s["kind"] == "PRODUCER" and s["trace_id"] == last]
    assert publish["span_id"] == carried[2]
    assert publish["attributes"]["messaging.destination.name"] == prefix + Topics.EXAMPLES
    assert by_id[publish["parent_span_id"]]["kind"] == "CONSUMER"
    # The other half's trace reaches the example through a link.
    assert [link["trace_id"] for link in publish["links"]] == [other]
