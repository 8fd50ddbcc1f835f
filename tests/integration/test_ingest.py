"""The ingest service as a process against the real Kafka and Redis."""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest

from shared.bus import DlqHeaders
from shared.events import FRAME_MAGIC, FrameValid, decode
from shared.images import encode_image
from shared.sdk import FramePublisher
from shared.settings import KafkaSettings
from shared.topics import Topics
from tests.bombs import png_declaring
from tests.conftest import provision_prefixed
from tests.integration.helpers import Proc, bare_producer, free_port, read_all, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def ingest(kafka_settings: KafkaSettings, prefix: str, tmp_path) -> Iterator[tuple[Proc, int]]:  # type: ignore[no-untyped-def]
    provision_prefixed(
        kafka_settings, prefix, [Topics.FRAMES_RAW, Topics.FRAMES_VALID, Topics.FRAMES_DLQ]
    )
    port = free_port()
    proc = Proc(
        ["-m", "services.ingest"],
        env={
            "STREAMLOOP_KAFKA_TOPIC_PREFIX": prefix,
            "STREAMLOOP_INGEST_PROVISION_TOPICS": "false",
            "STREAMLOOP_INGEST_METRICS_PORT": str(port),
            "STREAMLOOP_INGEST_GROUP_ID": f"{prefix}ingest",
            "STREAMLOOP_TELEMETRY_TRACES_DIR": str(tmp_path),
            # The 1.1 MB image below is too large without an 11 MB record on the broker.
            "STREAMLOOP_INGEST_MAX_IMAGE_BYTES": "1000000",
        },
    )
    yield proc, port
    proc.kill()


def wire(frame_id: str, data: bytes, *, content_type: str = "image/png", **over: object) -> bytes:
    """A frames.raw record exactly as the README documents it (no SDK)."""
    body: dict[str, object] = {
        "frame_id": frame_id,
        "camera_id": "cam-1",
        "captured_at": datetime.now(UTC).isoformat(),
        "content_type": content_type,
        "image_b64": base64.b64encode(data).decode(),
    }
    body.update(over)
    return json.dumps(body).encode()


def test_good_frames_pass_and_each_kind_of_bad_input_lands_in_the_dlq_with_its_reason(
    ingest: tuple[Proc, int], kafka_settings: KafkaSettings, prefix: str
) -> None:
    proc, port = ingest
    run = uuid.uuid4().hex[:8]
    px = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png, jpeg = encode_image(px), encode_image(px, "image/jpeg")
    good = {f"{run}-good-{i}" for i in range(3)}
    g1, g2, g3 = sorted(good)
    bad: dict[str, bytes | None] = {
        "not_json": b"\x00not json{",
        "schema": json.dumps({"frame_id": f"{run}-missing", "camera_id": "c"}).encode(),
        "bad_base64": wire(f"{run}-b64", b"", image_b64="@@@not-base64@@@"),
        "not_image": wire(f"{run}-notimg", b"hello, I am text"),
        "truncated_image": wire(f"{run}-trunc", png[: len(png) // 2]),
        "too_many_pixels": wire(f"{run}-bomb", png_declaring(20_000, 20_000)),
        "too_large": wire(f"{run}-big", b"\x89PNG\r\n\x1a\n" + bytes(1_100_000)),
        "bad_camera_id": wire(f"{run}-cam", png, camera_id="no spaces allowed"),
        "duplicate_frame_id": wire(g2, encode_image(px[::-1])),  # g2 again, another image
    }
    producer = bare_producer(kafka_settings)
    raw = prefix + Topics.FRAMES_RAW
    # Good frames interleaved with the bad ones, and an exact duplicate of g1.
    producer.send(raw, wire(g1, png), key=b"cam-1")
    producer.send(raw, wire(g2, jpeg, content_type="image/jpeg"), key=b"cam-1")
    for value in bad.values():
        producer.send(raw, value, key=b"cam-1")
    producer.send(raw, wire(g1, png), key=b"cam-1")  # exact duplicate: dropped
    producer.flush()
    producer.close()
    # ...and one through the SDK.
    with FramePublisher(KafkaSettings(topic_prefix=prefix), camera_id="cam-2") as frames:
        sdk_id = frames.publish(px, frame_id=g3)
    assert sdk_id == g3

    dlq = read_all(kafka_settings, prefix + Topics.FRAMES_DLQ, len(bad), timeout_s=90)
    reasons = {dict(r.headers)[DlqHeaders.ERROR].decode(): r for r in dlq}
    assert set(reasons) == set(bad), [dict(r.headers) for r in dlq]
    for reason, rec in reasons.items():
        assert rec.value == bad[reason], f"{reason}: original bytes are kept"
        h = {k: v.decode() for k, v in rec.headers}
        assert h[DlqHeaders.SOURCE_TOPIC] == raw and h[DlqHeaders.ERROR_MESSAGE]

    valid = read_all(kafka_settings, prefix + Topics.FRAMES_VALID, 4, timeout_s=10)
    assert all(r.value.startswith(FRAME_MAGIC) for r in valid), "frames.valid is binary (v2)"
    events = [decode(r.value, FrameValid) for r in valid]
    assert sorted(e.frame_id for e in events) == sorted(good), "one each, no duplicates"
    first = next(e for e in events if e.frame_id == g1)
    assert np.array_equal(np.frombuffer(first.pixels, np.uint8).reshape(64, 64, 3), px)
    assert first.schema_version == 2 and first.source == "ingest"

    def scraped() -> str | None:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        body = text.decode()
        return body if 'outcome="duplicate"' in body else None

    metrics = wait_for(scraped, 20, what="ingest metrics")
    assert 'streamloop_ingest_frames_total{outcome="valid",reason=""} 3.0' in metrics
    assert (
        'streamloop_ingest_frames_total{outcome="rejected",reason="too_many_pixels"} 1.0' in metrics
    )
    assert proc.p.poll() is None, "ingest keeps running"
