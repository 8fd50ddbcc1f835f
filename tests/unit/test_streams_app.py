"""The faust app that the labelling and monitoring workers run (``shared.streams.new_app``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import KafkaSettings
from shared.streams import METADATA_MAX_AGE_MS, new_app


def test_a_worker_refreshes_topic_metadata_within_seconds_not_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A first assignment that missed a just-created internal topic is corrected at the next
    # refresh: faust's default of five minutes left labelling joining nothing that long.
    monkeypatch.setenv("STREAMLOOP_VAR", str(tmp_path))
    app = new_app("unit-streams", KafkaSettings(), partitions=3)
    assert app.conf.consumer_metadata_max_age_ms == METADATA_MAX_AGE_MS <= 10_000
    assert app.conf.topic_partitions == 3
    assert (tmp_path / "faust").is_dir()
