"""The faust workers SIGKILLed mid-stream and started again. Their tables come back from their
changelogs and their sources are read again from the last committed offsets, so a record may be
processed twice; what must hold is what the rest of the loop sees:

- labelling: every labelled frame becomes exactly one example *by key* (``examples`` is
  compacted by ``frame_id``, and a frame's first label wins), none is lost, and a repeated
  record is the same example;
- monitoring: the windows, taken together, count every labelled prediction exactly once with
  its verdict, numbered without a gap or a repeat."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest
from kafka import KafkaConsumer

from shared.bus import EventProducer
from shared.events import Example, decode
from tests.chaos.conftest import Infra, Pipeline, Tally, record
from tests.chaos.test_monitor_rebalance import (
    PER_WINDOW,
    _last_closed,
    _offline,
    _wait_for_windows,
)
from tests.integration.helpers import Proc, free_port, wait_for
from tests.integration.test_monitoring import Fleet

pytestmark = pytest.mark.timeout(600)

READY = "Worker ready"


class Examples:
    """Follows ``examples`` from its start for the whole test: the records per key."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.records: dict[str, list[str]] = defaultdict(list)
        self._consumer = KafkaConsumer(
            pipeline.prefix + "examples",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **pipeline.kafka.client_kwargs(),
        )

    def read(self) -> int:
        for batch in self._consumer.poll(timeout_ms=300).values():
            for r in batch:
                if r.value is not None:
                    ex = decode(r.value, Example)
                    self.records[ex.frame_id].append(ex.label)
        return len(self.records)

    def close(self) -> None:
        self._consumer.close()


def test_labelling_killed_mid_stream_loses_no_example_and_doubles_none_by_key(
    infra: Infra, pipeline: Pipeline
) -> None:
    pipeline.start("ingest")
    first = pipeline.start("labelling", ready=READY)
    examples = Examples(pipeline)
    tally = Tally()
    camera = pipeline.stream(tally, rate=20.0, seconds=60, label_every=2)
    try:
        wait_for(lambda: examples.read() >= 150 or None, 120, what="examples flowing")
        os.kill(first.p.pid, signal.SIGKILL)
        first.p.wait(10)
        killed_at, before = time.monotonic(), examples.read()
        second = pipeline.start("labelling", ready=READY)
        wait_for(lambda: examples.read() > before or None, 180, what="a new example")
        recovery = time.monotonic() - killed_at
        camera.join(120)
        labelled = {f for i, f in enumerate(tally.sent) if i % 2 == 0 and f in tally.acked}
        wait_for(
            lambda: labelled <= set(examples.records) or (examples.read() and None),
            180,
            what=f"examples of all {len(labelled)} labelled frames",
        )
        examples.read()
    finally:
        examples.close()
    keys = set(examples.records)
    repeated = sum(len(v) - 1 for v in examples.records.values())
    record(
        "labelling_killed",
        {
            "fault": "labelling killed",
            "injected": f"SIGKILL of the labelling worker (pid {first.p.pid}) at 20 frames/s, "
            f"a label for every second frame, restarted at once; {repeated} example records "
            "repeated with the same key and label (compaction keeps one)",
            "frames_in": len(tally.sent),
            "lost": len(labelled - keys),
            "duplicated": len(keys - labelled),
            "recovery_s": round(recovery, 1),
        },
    )
    assert labelled and keys == labelled, (len(labelled - keys), len(keys - labelled))
    # A record read again yields the same example: the first label of the frame, each time.
    assert all(len(set(v)) == 1 for v in examples.records.values())
    assert second.alive()


def test_monitoring_killed_mid_stream_counts_every_labelled_prediction_once(
    infra: Infra, pipeline: Pipeline
) -> None:
    env = {
        **infra.service_env(pipeline.prefix),
        "STREAMLOOP_TELEMETRY_TRACES_DIR": str(pipeline.root / "traces"),
        "STREAMLOOP_MONITORING_WINDOW__LABELLED_PER_WINDOW": str(PER_WINDOW),
        "STREAMLOOP_MONITORING_DASHBOARD_PORT": "0",
    }

    def worker(n: int) -> Proc:
        proc = Proc(
            ["-m", "services.monitoring"],
            {**env, "STREAMLOOP_MONITORING_METRICS_PORT": str(free_port())},
        )
        pipeline.procs[f"monitoring-{n}"] = proc
        wait_for(
            lambda: proc.alive() and any(READY in ln for ln in proc.lines),
            120,
            what="a monitoring worker ready",
        )
        return proc

    producer = EventProducer(pipeline.kafka)
    fleet = Fleet(producer, uuid.uuid4().hex[:6])
    first = worker(1)
    for _ in range(3):  # 300 frames, 150 labels, by day
        fleet.send(100, "day")
        time.sleep(1)
    fleet.send(100, "night")  # and the kill while these are being counted
    os.kill(first.p.pid, signal.SIGKILL)
    first.p.wait(10)
    killed_at = datetime.now(UTC).timestamp()
    second = worker(2)
    for _ in range(2):
        fleet.send(100, "night")
        time.sleep(1)
    producer.close()
    labelled, correct = _offline(pipeline)
    assert labelled == 300 and 0 < correct < labelled

    ws = _wait_for_windows(pipeline, labelled, [second])
    settled_s = _last_closed(ws) - killed_at
    ids = [str(w["window_id"]) for w in ws]
    in_windows = sum(int(w["labelled_count"]) for w in ws)  # type: ignore[call-overload]
    right = sum(round(float(w["accuracy"]) * int(w["labelled_count"])) for w in ws)  # type: ignore[arg-type, call-overload]
    record(
        "monitoring_killed",
        {
            "fault": "monitoring killed",
            "injected": f"SIGKILL of the only monitoring worker (pid {first.p.pid}) with 100 "
            "predictions in flight, restarted at once",
            "frames_in": fleet.i,
            "lost": labelled - in_windows,
            "duplicated": sum(n - 1 for n in Counter(ids).values()),
            "recovery_s": round(settled_s, 1),
        },
    )
    assert len(ids) == len(set(ids)) == labelled // PER_WINDOW, ids
    assert sorted(ids) == sorted(f"v1:live:{n}" for n in range(1, len(ids) + 1))
    assert (in_windows, right) == (labelled, correct)
    assert second.alive()
