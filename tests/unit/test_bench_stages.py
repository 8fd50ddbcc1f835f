"""``bench_profile``'s consume stage: a group member that gets no record is replaced by
another (no broker: a stand-in loop whose consumers are scripted); its table's floor."""

from __future__ import annotations

from typing import Any

import pytest

from tests.bench.lib import stages
from tests.bench.lib.stages import IMAGE_DECODE, Meter, consume, markdown


class ScriptedConsumer:
    """A consumer whose polls return ``records`` once (none at all when empty)."""

    def __init__(self, records: list[int]) -> None:
        self.records = records
        self.closed = False

    def poll(self, timeout_ms: int, max_records: int) -> dict[str, list[int]]:
        out, self.records = self.records[:max_records], self.records[max_records:]
        return {"tp": out} if out else {}

    def assignment(self) -> set[str]:
        return set()

    def close(self, autocommit: bool) -> None:
        self.closed = True


class Loop:
    def __init__(self, *consumers: ScriptedConsumer) -> None:
        self.consumers = list(consumers)
        self.made: list[ScriptedConsumer] = []
        self.committed: list[int] = []

    def _new_consumer(self) -> ScriptedConsumer:
        self.made.append(self.consumers.pop(0))
        return self.made[-1]

    def _commit(self, consumer: Any, records: list[int]) -> None:
        self.committed += records


def meter() -> Meter:
    return Meter(None, None, lambda: None)


def test_a_member_that_gets_nothing_is_closed_and_another_reads_every_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stages, "REJOIN_S", 0.0)
    silent, reading = ScriptedConsumer([]), ScriptedConsumer(list(range(10)))
    loop = Loop(silent, reading)
    batches = consume(meter(), "stage", loop, 4, 10)  # type: ignore[arg-type]
    assert loop.made == [silent, reading]
    assert silent.closed and reading.closed
    assert [r for b in batches for r in b] == list(range(10))
    assert loop.committed == list(range(10))


def test_a_member_that_reads_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "REJOIN_S", 3600.0)
    loop = Loop(ScriptedConsumer(list(range(6))))
    batches = consume(meter(), "stage", loop, 4, 6)  # type: ignore[arg-type]
    assert [len(b) for b in batches] == [4, 2]
    assert len(loop.made) == 1


def test_the_floor_sums_the_model_the_image_decode_and_the_broker() -> None:
    rows = [
        ("MODEL: onnx, batch 128", "serving", 150.0),
        (f"validate: {IMAGE_DECODE}", "ingest", 200.0),
        ("validate: sha256 of the image", "ingest", 7.0),
        ("broker: frames.raw in", "broker", 40.0),
        ("broker: predictions in", "broker", 10.0),
        ("(not in total) model eager", "serving*", 900.0),
    ]
    table, summary = markdown(rows, "onnx")
    assert summary["floor_us_per_frame"] == 400.0
    assert summary["total_us_per_frame"] == 407.0
    assert "| **floor** (the model, the image decode, the broker) | all | 400.0 |" in table
