"""A consumer loop rides out a broker outage that surfaces as an error out of ``poll``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from kafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

import shared.errors
from shared.bus import ConsumerLoop
from shared.events import Alert
from shared.settings import KafkaSettings


class ScriptedConsumer:
    """Answers each poll from ``script``: an exception is raised, anything else returned;
    once the script is spent, ``then`` is called and the poll comes back empty."""

    def __init__(self, *script: Any) -> None:
        self.script, self.polls, self.closed = list(script), 0, False
        self.then: Any = lambda: None

    def poll(self, timeout_ms: int, max_records: int) -> Any:
        self.polls += 1
        if not self.script:
            self.then()
            return {}
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def metrics(self) -> dict[str, Any]:
        return {}

    def close(self, autocommit: bool) -> None:
        self.closed = True


def loop_over(consumer: ScriptedConsumer, monkeypatch: pytest.MonkeyPatch) -> ConsumerLoop[Alert]:
    monkeypatch.setattr(shared.errors, "POLL_RETRY_S", 0.0)
    producer = SimpleNamespace(transactional_id=None, flush=lambda timeout_s: None)
    made: ConsumerLoop[Alert] = ConsumerLoop(
        KafkaSettings(),
        group_id="g",
        topics=["alerts"],
        event_type=Alert,
        producer=producer,  # type: ignore[arg-type]
        handler=lambda m: None,
    )
    monkeypatch.setattr(made, "_new_consumer", lambda: consumer)
    return made


def test_a_poll_that_cannot_reach_kafka_is_an_empty_poll_and_the_loop_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refused = KafkaConnectionError("111 ECONNREFUSED")
    consumer = ScriptedConsumer(refused, refused)
    loop = loop_over(consumer, monkeypatch)
    consumer.then = loop.stop
    loop.run()
    assert consumer.polls == 3  # two failed polls, then the one that stops the loop
    assert consumer.closed


def test_an_error_that_waiting_cannot_fix_still_stops_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer = ScriptedConsumer(TopicAuthorizationFailedError("alerts"))
    with pytest.raises(TopicAuthorizationFailedError):
        loop_over(consumer, monkeypatch).run(max_idle_s=5.0)
    assert consumer.polls == 1
    assert consumer.closed
