"""The public SDK surface: ``from streamloop import FramePublisher, LabelPublisher,
PredictionSubscriber``, loaded on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_the_sdk_is_importable_from_streamloop_and_is_the_implementation() -> None:
    import shared.sdk
    import streamloop
    from streamloop import FramePublisher, LabelPublisher, PredictionSubscriber

    assert FramePublisher is shared.sdk.FramePublisher
    assert LabelPublisher is shared.sdk.LabelPublisher
    assert PredictionSubscriber is shared.sdk.PredictionSubscriber
    assert {"FramePublisher", "LabelPublisher", "PredictionSubscriber"} <= set(streamloop.__all__)
    assert set(streamloop.__all__) <= set(dir(streamloop))


def test_a_name_outside_the_surface_is_refused() -> None:
    import streamloop

    with pytest.raises(AttributeError, match="EventProducer"):
        streamloop.EventProducer


def test_importing_the_package_loads_no_kafka_client() -> None:
    """The command line imports the package first: it must not pay for the SDK's clients."""
    code = "import sys, streamloop; print('kafka' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_label_published_in_answer_to_a_request_says_so() -> None:
    from shared.events import Label
    from shared.sdk import LabelPublisher
    from shared.topics import Topics
    from tests.unit.test_serving import FakeProducer

    producer = FakeProducer()
    with LabelPublisher(producer=producer, annotator="alice") as labels:  # type: ignore[arg-type]
        labels.publish("f-1", "car")
        labels.publish("f-2", "bus", requested=True)
    sent = producer.of(Topics.LABELS)
    assert all(isinstance(e, Label) for e in sent)
    assert [(e.frame_id, e.requested, e.annotator) for e in sent] == [
        ("f-1", False, "alice"),
        ("f-2", True, "alice"),
    ]


def test_a_frame_publisher_lingers_20_ms_unless_told_and_a_label_publisher_keeps_the_bus_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shared.sdk
    from shared.bus import PRODUCER_DEFAULTS

    made: list[dict[str, object]] = []

    class Producer:
        def __init__(self, settings: object, **kwargs: object) -> None:
            made.append(kwargs)

    monkeypatch.setattr(shared.sdk, "EventProducer", Producer)
    shared.sdk.FramePublisher(camera_id="cam-1")
    shared.sdk.FramePublisher(camera_id="cam-1", linger_ms=0)
    shared.sdk.LabelPublisher()
    assert [m.get("linger_ms") for m in made] == [20, 0, None]
    assert PRODUCER_DEFAULTS["linger_ms"] == 5
