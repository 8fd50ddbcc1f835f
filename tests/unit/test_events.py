from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from shared.events import (
    EVENT_TYPES,
    FRAME_MAGIC,
    Alert,
    Event,
    FrameRaw,
    FrameValid,
    Label,
    NotJsonError,
    Prediction,
    SchemaError,
    TooLargeError,
    UnknownEventTypeError,
    decode,
    encode,
)


def frame(**kw: object) -> FrameRaw:
    base: dict[str, object] = dict(
        frame_id="f1",
        camera_id="cam-01",
        captured_at=datetime(2026, 1, 1, tzinfo=UTC),
        content_type="image/png",
        image_b64="aGVsbG8=",
    )
    base.update(kw)
    return FrameRaw(**base)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field() -> None:
    f = frame(condition="night", attributes={"lane": "2"})
    back = decode(encode(f), FrameRaw)
    assert back == f
    assert back.event_type == "frame.raw"
    assert back.schema_version == 1


def test_envelope_defaults_are_filled() -> None:
    a, b = (
        Alert(severity="info", kind="k", message="m"),
        Alert(severity="info", kind="k", message="m"),
    )
    assert a.event_id != b.event_id and len(a.event_id) == 32
    assert a.produced_at.tzinfo is not None


def test_generic_decode_picks_the_type_from_event_type() -> None:
    label = Label(frame_id="f1", label="car")
    got = decode(encode(label), Event)
    assert isinstance(got, Label) and got.label == "car"


def test_every_event_type_is_registered_once() -> None:
    assert len(EVENT_TYPES) == 14
    for name, cls in EVENT_TYPES.items():
        assert cls.model_fields["event_type"].default == name


@pytest.mark.parametrize("payload", [b"", b"{oops", b"\xff\xfe", b"[1, 2]", b"42"])
def test_not_json_is_a_typed_error(payload: bytes) -> None:
    with pytest.raises(NotJsonError) as err:
        decode(payload, Alert)
    assert err.value.reason == "not_json"


def test_wrong_schema_names_the_field() -> None:
    with pytest.raises(SchemaError) as err:
        decode(json.dumps({"event_type": "alert", "severity": "loud"}).encode(), Alert)
    assert err.value.reason == "schema"
    assert "severity" in err.value.message and "kind" in err.value.message


def test_a_different_event_type_is_a_schema_error() -> None:
    with pytest.raises(SchemaError):
        decode(encode(Label(frame_id="f", label="car")), Alert)


def test_unknown_event_type_in_generic_decode() -> None:
    with pytest.raises(UnknownEventTypeError):
        decode(b'{"event_type": "nope"}', Event)
    with pytest.raises(NotJsonError):
        decode(b"nope", Event)


def test_size_limit_is_checked_before_parsing() -> None:
    data = encode(Alert(severity="info", kind="k", message="x" * 1000))
    assert decode(data, Alert, max_bytes=len(data)).message == "x" * 1000
    with pytest.raises(TooLargeError):
        decode(data, Alert, max_bytes=len(data) - 1)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    raw = json.loads(encode(Label(frame_id="f", label="bus")))
    raw["added_in_v2"] = {"x": 1}
    assert decode(json.dumps(raw).encode(), Label).label == "bus"


def test_events_are_frozen() -> None:
    label = Label(frame_id="f", label="car")
    with pytest.raises(ValueError):
        label.label = "bus"  # type: ignore[misc]


def valid_frame(pixels: bytes = bytes(range(12)), **kw: object) -> FrameValid:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    base: dict[str, object] = dict(
        frame_id="f1",
        camera_id="cam-01",
        captured_at=at,
        ingested_at=at,
        width=2,
        height=2,
        pixels=pixels,
        content_sha256="0" * 64,
        condition="fog",
    )
    base.update(kw)
    return FrameValid(**base)  # type: ignore[arg-type]


def test_a_valid_frame_travels_binary_its_pixels_raw_after_a_json_header() -> None:
    f = valid_frame()
    data = encode(f)
    assert data.startswith(FRAME_MAGIC)
    size = int.from_bytes(data[4:8], "big")
    header = json.loads(data[8 : 8 + size])
    assert header["event_type"] == "frame.valid" and header["schema_version"] == 2
    assert "pixels" not in header and "pixels_b64" not in header
    assert data[8 + size :] == bytes(range(12))
    assert decode(data, FrameValid) == f
    assert decode(data, Event) == f


def test_the_source_size_travels_on_valid_frames_and_predictions_and_may_be_absent() -> None:
    sized = valid_frame(source_width=1920, source_height=1080)
    back = decode(encode(sized), FrameValid)
    assert back == sized and (back.source_width, back.source_height) == (1920, 1080)
    # A record written before the fields existed: its header has no source size.
    old = encode(valid_frame())
    header_size = int.from_bytes(old[4:8], "big")
    header = json.loads(old[8 : 8 + header_size])
    for name in ("source_width", "source_height"):
        header.pop(name)
    raw = json.dumps(header).encode()
    legacy = FRAME_MAGIC + len(raw).to_bytes(4, "big") + raw + old[8 + header_size :]
    got = decode(legacy, FrameValid)
    assert (got.source_width, got.source_height) == (None, None)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    prediction = Prediction(
        frame_id="f1",
        camera_id="cam-01",
        captured_at=at,
        model_name="m",
        model_version="v",
        predicted_class="car",
        probabilities={"car": 1.0},
        confidence=1.0,
        served_at=at,
        latency_from_capture_ms=0.0,
        latency_from_ingest_ms=0.0,
    )
    wire = json.loads(encode(prediction))
    del wire["source_width"], wire["source_height"]
    assert decode(json.dumps(wire).encode(), Prediction).source_width is None
    sized_prediction = prediction.model_copy(update={"source_width": 37, "source_height": 91})
    assert decode(encode(sized_prediction), Prediction) == sized_prediction
    with pytest.raises(SchemaError, match="source_width"):
        decode(json.dumps(wire | {"source_width": 0}).encode(), Prediction)


def test_a_version_1_valid_frame_with_base64_pixels_is_still_read() -> None:
    v1 = valid_frame().model_dump(mode="json")
    v1.update(schema_version=1, pixels_b64=base64.b64encode(bytes(range(12))).decode())
    data = json.dumps(v1).encode()
    for model in (FrameValid, Event):
        got = decode(data, model)
        assert isinstance(got, FrameValid) and got.pixels == bytes(range(12))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (FRAME_MAGIC + b"\x00\x00", "ends inside its header"),
        (FRAME_MAGIC + (40).to_bytes(4, "big") + b"{}", "ends inside its header"),
        (FRAME_MAGIC + (2).to_bytes(4, "big") + b"[]", "not a JSON object"),
        (FRAME_MAGIC + (3).to_bytes(4, "big") + b"{x}", "not JSON"),
    ],
)
def test_a_broken_binary_frame_is_a_schema_error(data: bytes, says: str) -> None:
    with pytest.raises(SchemaError, match=says):
        decode(data, Event)


def test_pixels_that_do_not_fill_the_frame_are_a_schema_error() -> None:
    whole = encode(valid_frame())
    with pytest.raises(SchemaError, match="11 pixel bytes do not make 2x2x3"):
        decode(whole[:-1], FrameValid)
    v1 = valid_frame().model_dump(mode="json") | {"pixels_b64": "not base64!"}
    with pytest.raises(SchemaError, match="pixels_b64 is not base64"):
        decode(json.dumps(v1).encode(), FrameValid)


def test_a_binary_frame_where_another_event_is_expected_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"binary frame\.valid"):
        decode(encode(valid_frame()), Label)


def test_the_pixels_stay_out_of_repr_and_json_dumps() -> None:
    f = valid_frame(pixels=b"\x01" * 12)
    assert "pixels" not in f.model_dump_json() and "x01" not in repr(f)


def test_a_record_without_event_type_is_its_topics_event() -> None:
    """The documented wire format of ``labels`` names no event_type: it is still a label,
    whatever reader decodes it, and a named but unknown type is still refused."""
    from shared.events import Event, Label, UnknownEventTypeError, decode
    from shared.topics import Topics, event_for

    payload = b'{"frame_id":"f-1","label":"car","camera_id":"cam-01","annotator":"me"}'
    event = decode(payload, Event, default=event_for(Topics.LABELS))
    assert isinstance(event, Label) and event.label == "car"
    with pytest.raises(UnknownEventTypeError):
        decode(payload, Event)
    with pytest.raises(UnknownEventTypeError):
        decode(b'{"event_type":"nope","frame_id":"f"}', Event, default=Label)
