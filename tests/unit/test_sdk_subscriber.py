"""The pure parts of reading predictions: decoding, the camera filter, the tail's rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.events import Label, Prediction, encode
from shared.sdk import PredictionFilter, PredictionSubscriber
from streamloop.tail import PREDICTION_COLUMNS, prediction_row, prediction_table

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def prediction(camera: str = "cam-1", frame: str = "f1", confidence: float = 0.87) -> Prediction:
    return Prediction(
        frame_id=frame,
        camera_id=camera,
        captured_at=T0,
        model_name="vehicles",
        model_version="v3",
        predicted_class="truck",
        probabilities={"truck": confidence, "car": 1 - confidence},
        confidence=confidence,
        served_at=T0 + timedelta(milliseconds=42),
        latency_from_capture_ms=42.4,
        latency_from_ingest_ms=12.0,
    )


def test_a_prediction_passes_through_unchanged() -> None:
    p = prediction()
    assert PredictionFilter()(encode(p)) == p


def test_the_camera_filter_keeps_only_the_named_cameras() -> None:
    sieve = PredictionFilter(["cam-1", "cam-3"])
    got = [sieve(encode(prediction(camera=c))) for c in ("cam-1", "cam-2", "cam-3")]
    assert [p.camera_id if p else None for p in got] == ["cam-1", None, "cam-3"]
    assert sieve.skipped == 0  # filtered out is not skipped


def test_a_single_camera_string_is_one_camera_not_its_letters() -> None:
    sieve = PredictionFilter("cam-1")
    assert sieve.cameras == frozenset({"cam-1"})
    assert sieve(encode(prediction(camera="c"))) is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"event_type": "prediction", "frame_id": "f1"}',
        encode(Label(frame_id="f1", label="car")),
        encode(prediction()).replace(b'"confidence":0.87', b'"confidence":1.5'),
    ],
    ids=["none", "empty", "text", "binary", "array", "incomplete", "other-event", "invalid"],
)
def test_bad_payloads_are_skipped_and_counted_never_raised(value: bytes | None) -> None:
    sieve = PredictionFilter()
    assert sieve(value) is None
    assert sieve.skipped == 1


def test_skipped_counts_bad_payloads_of_any_camera() -> None:
    sieve = PredictionFilter(["cam-1"])
    for value in (b"x", encode(prediction(camera="cam-2")), b"{}", encode(prediction())):
        sieve(value)
    assert sieve.skipped == 2


def test_unknown_fields_from_a_newer_producer_are_ignored() -> None:
    value = encode(prediction())[:-1] + b',"new_field":{"a":1}}'
    got = PredictionFilter()(value)
    assert got is not None and got.frame_id == "f1"


def test_conflicting_start_positions_are_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="at most one"):
        PredictionSubscriber(from_beginning=True, from_offsets={0: 5})
    with pytest.raises(ValueError, match="at most one"):
        PredictionSubscriber(from_time=T0, from_beginning=True)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        PredictionSubscriber(idle_timeout_s=0)


def test_a_tail_row_shows_time_camera_frame_class_confidence_model_and_latency() -> None:
    row = prediction_row(prediction())
    assert len(row) == len(PREDICTION_COLUMNS)
    assert row == ("12:00:00.042", "cam-1", "f1", "truck", "87.0%", "v3", "42")


def test_the_tail_table_counts_skipped_records_in_its_caption() -> None:
    table = prediction_table([prediction(frame=f"f{i}") for i in range(3)], skipped=2)
    assert table.row_count == 3
    assert table.caption == "2 undecodable records skipped"
    assert prediction_table([], title="shadow predictions").caption is None
