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
