"""The lease keeper: a run's lease outlives a step longer than the lease while the process
works, and is given up when it cannot be renewed or the run holds it too long."""

from __future__ import annotations

import time

import pytest

from services.training.lease import LeaseKeeper, LeaseLostError
from shared.ports import MemoryLeases


def test_a_step_longer_than_the_lease_keeps_it() -> None:
    leases = MemoryLeases()
    assert leases.acquire("k", "me", 1).state == "acquired"
    with LeaseKeeper(leases, "k", "me", 1, max_hold_s=60) as keeper:
        time.sleep(2.5)  # one "epoch" of two and a half leases
        keeper.check("during epoch 1")
    assert leases.acquire("k", "other", 1).state == "held"


def test_without_the_keeper_the_same_step_loses_it() -> None:
    leases = MemoryLeases()
    assert leases.acquire("k", "me", 1).state == "acquired"
    time.sleep(1.5)
    assert leases.renew("k", "me", 1) is False


def test_a_lease_taken_by_another_worker_is_lost_at_the_next_check() -> None:
    leases = MemoryLeases()
    assert leases.acquire("k", "me", 30).state == "acquired"
    with LeaseKeeper(leases, "k", "me", 30, max_hold_s=60) as keeper:
        leases.release("k", "me")
        assert leases.acquire("k", "other", 30).state == "acquired"
        with pytest.raises(LeaseLostError, match="while exporting onnx"):
            keeper.check("while exporting onnx")


def test_a_run_held_past_its_limit_stops_renewing_and_loses_the_lease() -> None:
    leases = MemoryLeases()
    assert leases.acquire("k", "me", 1).state == "acquired"
    with LeaseKeeper(leases, "k", "me", 1, max_hold_s=0.5) as keeper:
        time.sleep(2.5)
        with pytest.raises(LeaseLostError, match="longer than"):
            keeper.check("during epoch 3")
    assert leases.acquire("k", "other", 1).state == "acquired"


def test_a_store_that_fails_for_less_than_a_lease_is_not_a_loss() -> None:
    class Flaky(MemoryLeases):
        failures = 1

        def renew(self, key: str, owner: str, lease_s: int) -> bool:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("redis went away")
            return super().renew(key, owner, lease_s)

    leases = Flaky()
    assert leases.acquire("k", "me", 30).state == "acquired"
    with LeaseKeeper(leases, "k", "me", 30, max_hold_s=60) as keeper:
        keeper.check("during epoch 1")  # fails, but the lease was renewed just now
        keeper.check("during epoch 2")
