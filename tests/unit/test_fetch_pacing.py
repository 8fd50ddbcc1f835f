"""A consumer loop fetches in batches while records flow (on the frame path) and waits at
rest (every loop; ``shared.fetch``); no broker."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from kafka import KafkaConsumer

from shared.fetch import AT_REST_POLL_MS, FetchPacing
from shared.settings import FetchSettings

BUSY = (FetchSettings().min_bytes, FetchSettings().max_wait_ms)
"""The batching settings of the frame path (256 KiB, 100 ms)."""


def fake_consumer() -> Any:
    config = {"fetch_min_bytes": BUSY[0], "fetch_max_wait_ms": BUSY[1]}
    return SimpleNamespace(_fetcher=SimpleNamespace(config=config))


def fetch(consumer: Any) -> tuple[int, int]:
    c = consumer._fetcher.config
    return c["fetch_min_bytes"], c["fetch_max_wait_ms"]


def test_quiet_polls_switch_to_waiting_at_rest_and_the_first_records_switch_back() -> None:
    pacing = FetchSettings(idle_after_s=5.0, idle_wait_ms=5000).pacing()
    consumer = fake_consumer()
    pacing.observe(consumer, 0, now=100.0)  # the first poll starts the clock
    pacing.observe(consumer, 0, now=104.9)
    assert fetch(consumer) == BUSY and not pacing.idle
    pacing.observe(consumer, 0, now=105.0)
    assert fetch(consumer) == (1, 5000) and pacing.idle
    pacing.observe(consumer, 3, now=200.0)
    assert fetch(consumer) == BUSY and not pacing.idle
    pacing.observe(consumer, 0, now=204.0)
    assert fetch(consumer) == BUSY, "records 4 s ago: still busy"


def test_zero_keeps_the_batching_settings_and_a_new_client_starts_busy() -> None:
    never = FetchSettings(idle_after_s=0).pacing()
    consumer = fake_consumer()
    never.observe(consumer, 0, now=0.0)
    never.observe(consumer, 0, now=1e6)
    assert fetch(consumer) == BUSY
    pacing = FetchSettings(idle_after_s=1.0).pacing()
    pacing.observe(consumer, 0, now=0.0)
    pacing.observe(consumer, 0, now=2.0)
    assert pacing.idle
    pacing.reset()
    assert not pacing.idle
    pacing.observe(consumer, 0, now=2.5)
    assert not pacing.idle, "the clock starts again with the new client"


def test_a_client_without_the_fetcher_settings_is_left_alone() -> None:
    pacing = FetchPacing(131_072, 100, 1.0, 5000)
    other = SimpleNamespace()
    pacing.observe(other, 0, now=0.0)
    pacing.observe(other, 0, now=10.0)
    assert not pacing.idle


def test_kafka_pythons_consumer_keeps_the_settings_where_pacing_changes_them() -> None:
    consumer = KafkaConsumer(
        bootstrap_servers="127.0.0.1:9", api_version=(2, 8), fetch_max_wait_ms=100
    )
    try:
        pacing = FetchPacing(1024, 100, 1.0, 5000)
        pacing.observe(consumer, 0, now=0.0)
        pacing.observe(consumer, 0, now=2.0)
        assert pacing.idle and fetch(consumer) == (1, 5000)
    finally:
        consumer.close()


def test_every_consumer_loop_waits_at_rest_and_keeps_its_own_settings_while_records_flow() -> None:
    from shared.bus import ConsumerLoop
    from shared.events import Alert
    from shared.fetch import AT_REST_AFTER_S, AT_REST_WAIT_MS
    from shared.settings import KafkaSettings

    def loop(**overrides: Any) -> Any:
        return ConsumerLoop(
            KafkaSettings(),
            group_id="g",
            topics=["alerts"],
            event_type=Alert,
            producer=SimpleNamespace(),  # type: ignore[arg-type]
            handler=lambda m: None,
            **overrides,
        )

    for made, busy in ((loop(), (1, 500)), (loop(fetch_max_wait_ms=50), (1, 50))):
        consumer = SimpleNamespace(_fetcher=SimpleNamespace(config=dict(made._consumer_config)))
        assert fetch(consumer) == busy
        made._pacing.observe(consumer, 0, now=0.0)
        made._pacing.observe(consumer, 0, now=AT_REST_AFTER_S)
        assert fetch(consumer) == (1, AT_REST_WAIT_MS)
        made._pacing.observe(consumer, 1, now=AT_REST_AFTER_S + 1)
        assert fetch(consumer) == busy


def test_at_rest_a_poll_waits_longer_and_never_shorter_than_the_loops_own_wait() -> None:
    pacing = FetchPacing(1, 500, 1.0, 5000)
    consumer = fake_consumer()
    assert pacing.poll_timeout_ms(200) == 200
    pacing.observe(consumer, 0, now=0.0)
    pacing.observe(consumer, 0, now=1.0)
    assert pacing.idle and pacing.poll_timeout_ms(200) == AT_REST_POLL_MS
    assert pacing.poll_timeout_ms(AT_REST_POLL_MS * 3) == AT_REST_POLL_MS * 3
    pacing.observe(consumer, 2, now=1.5)
    assert pacing.poll_timeout_ms(200) == 200, "records again: the loop's own wait"
