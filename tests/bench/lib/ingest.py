"""``bench_ingest``'s two sides: a bare consume-and-produce loop and the ingest service's own
consumer loop and handler, over the same ``frames.raw``; the simulator's top rate; its table."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from rich.console import Console
from rich.table import Table

from services.ingest.handler import make_handler
from services.ingest.logic import Ingestor, Policy
from services.simulator.fleet import Annotators, Fleet
from services.simulator.runner import Simulator
from services.simulator.scenario import load
from services.simulator.sink import KafkaSink
from shared.bus import PRODUCER_DEFAULTS, ConsumerLoop, EventProducer, Message
from shared.events import FrameRaw
from shared.redis_store import RedisClaims, connect
from shared.settings import KafkaSettings, RedisSettings
from shared.topics import Topics
from tests.bench.lib.bus import CONSUMER_CONFIG as BUS_CONSUMER_CONFIG

TARGET_RATIO = 0.7
CLASSES = ("car", "truck", "bus", "motorcycle")
MAX_POLL_RECORDS = 256
CONSUMER_CONFIG: dict[str, Any] = {**BUS_CONSUMER_CONFIG, "max_poll_records": MAX_POLL_RECORDS}


def fill(settings: KafkaSettings, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(**PRODUCER_DEFAULTS, **settings.client_kwargs())
    for i, value in enumerate(values):
        producer.send(topic, value=value, key=f"cam-{i % 4 + 1}".encode())
    producer.flush()
    producer.close()


def run_bare(settings: KafkaSettings, src: str, dst: str, group: str, expected: int) -> float:
    """Seconds from the first polled record to the last flush."""
    client = settings.client_kwargs()
    producer = KafkaProducer(client_id=group, **PRODUCER_DEFAULTS, **client)
    consumer = KafkaConsumer(src, group_id=group, **CONSUMER_CONFIG, **client)
    seen, start, end = 0, 0.0, 0.0
    try:
        deadline = time.monotonic() + 120
        while seen < expected and time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=200, max_records=MAX_POLL_RECORDS)
            if not polled:
                continue
            if not start:
                start = time.perf_counter()
            for batch in polled.values():
                for rec in batch:
                    producer.send(dst, value=rec.value, key=rec.key)
                seen += len(batch)
            producer.flush()
            end = time.perf_counter()
            consumer.commit()
    finally:
        producer.close()
        consumer.close(autocommit=False)
    if seen < expected:
        raise TimeoutError(f"bare loop saw {seen}/{expected}")
    return end - start


def run_ingest(
    settings: KafkaSettings,
    group: str,
    expected: int,
    claims_ns: str,
    tracer: Any,
) -> tuple[float, int]:
    """Seconds from the first handled batch to the last acknowledged output; outputs."""
    producer = EventProducer(settings, client_id=group, tracer=tracer)
    claims = RedisClaims(connect(RedisSettings()), claims_ns)
    handle = make_handler(Ingestor(Policy(), claims), producer)
    state = {"start": 0.0, "end": 0.0, "seen": 0, "out": 0}
    done = threading.Event()
    loop: ConsumerLoop[FrameRaw]

    def timed(batch: list[Message[FrameRaw]]) -> Any:
        if not state["start"]:
            state["start"] = time.perf_counter()
        refused = handle(batch)
        producer.flush()
        state["end"] = time.perf_counter()
        state["seen"] += len(batch)
        state["out"] += len(batch) - len(refused)
        if state["seen"] >= expected:
            done.set()
            loop.stop()
        return refused

    loop = ConsumerLoop(
        settings,
        group_id=group,
        topics=[Topics.FRAMES_RAW],
        event_type=FrameRaw,
        producer=producer,
        batch_handler=timed,
        tracer=tracer,
        max_poll_records=MAX_POLL_RECORDS,
    )
    thread = threading.Thread(target=loop.run, kwargs={"max_idle_s": 60}, daemon=True)
    thread.start()
    done.wait(180)
    loop.stop()
    thread.join(30)
    producer.close()
    if state["seen"] < expected:
        raise TimeoutError(f"ingest saw {state['seen']}/{expected}")
    return state["end"] - state["start"], int(state["out"])


def simulator_rate(settings: KafkaSettings, frames: int, tracer: Any) -> float:
    producer = EventProducer(settings, client_id="bench-simulator", tracer=tracer)
    scenario = load("day-to-night")
    fleet = Fleet(scenario, CLASSES, run_id=f"bench{os.getpid()}", rate=scenario.rate)
    labels = scenario.labels.model_copy(update={"delay_s": 0.0, "jitter_s": 0.0})
    annotators = Annotators(labels, CLASSES, 1)
    sim = Simulator(fleet, annotators, KafkaSink(producer, scenario, "bench"), rate=0)
    start = time.perf_counter()
    sim.run(max_frames=frames)
    elapsed = time.perf_counter() - start
    producer.close()
    return frames / elapsed


def print_table(
    console: Console, results: dict[str, Any], frames: int, rounds: int, ratio: float
) -> None:
    table = Table(
        title=f"ingest vs bare loop ({frames} frames, median of {rounds}, sample ratio {ratio})"
    )
    for col in ("format", "KiB/frame", "bare frames/s", "ingest frames/s", "ratio"):
        table.add_column(col, justify="right")
    for fmt in ("jpeg", "png"):
        r = results[fmt]
        table.add_row(
            fmt,
            f"{r['bytes_per_frame'] / 1024:.1f}",
            f"{r['bare_frames_per_s']:,.0f}",
            f"{r['ingest_frames_per_s']:,.0f}",
            f"[bold]{r['ratio']:.2f}[/]",
        )
    console.print(table)
    console.print(
        f"simulator, render + encode + publish (JPEG, with labels): "
        f"[bold]{results['simulator_frames_per_s']:,.0f}[/] frames/s"
    )
    console.print(f"target: ingest >= {TARGET_RATIO} of the bare loop")
