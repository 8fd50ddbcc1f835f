from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from shared.events import (
    EVENT_TYPES,
    Alert,
    Event,
    FrameRaw,
    Label,
    NotJsonError,
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
