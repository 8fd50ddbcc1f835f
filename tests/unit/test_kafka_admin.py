from __future__ import annotations

from typing import Any

import pytest
from kafka.errors import UnknownBrokerIdError

from shared import kafka_admin
from shared.settings import KafkaSettings


class FlakyAdmin:
    """An admin client that, like one talking to a cluster still starting, does not yet know
    the controller's address for its first ``failures`` clients."""

    made: list[FlakyAdmin] = []
    failures = 2

    def __init__(self, **_: Any) -> None:
        self.created: list[str] = []
        self.closed = False
        FlakyAdmin.made.append(self)

    def create_topics(self, new: list[Any], timeout_ms: int) -> None:
        if len(FlakyAdmin.made) <= FlakyAdmin.failures:
            raise UnknownBrokerIdError(3)
        self.created += [t.name for t in new]

    def wait_for_topics(self, names: list[str], timeout_ms: int) -> None:
        assert names == self.created

    def close(self) -> None:
        self.closed = True


def test_topics_are_created_once_the_controller_is_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FlakyAdmin.made = []
    monkeypatch.setattr(kafka_admin, "KafkaAdminClient", FlakyAdmin)
    monkeypatch.setattr(kafka_admin.time, "sleep", lambda _s: None)
    with kafka_admin.KafkaAdmin(KafkaSettings()) as admin:
        admin.create_topics([("t", 3, {})], 1, timeout_s=30)
    assert len(FlakyAdmin.made) == 3 and FlakyAdmin.made[-1].created == ["t"]
    assert all(a.closed for a in FlakyAdmin.made)


def test_a_controller_that_stays_unknown_fails_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FlakyAdmin.made = []
    monkeypatch.setattr(FlakyAdmin, "failures", 10**6)
    monkeypatch.setattr(kafka_admin, "KafkaAdminClient", FlakyAdmin)
    monkeypatch.setattr(kafka_admin.time, "sleep", lambda _s: None)
    with kafka_admin.KafkaAdmin(KafkaSettings()) as admin, pytest.raises(UnknownBrokerIdError):
        admin.create_topics([("t", 3, {})], 1, timeout_s=0.0)
