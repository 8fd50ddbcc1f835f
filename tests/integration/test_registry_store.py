"""The registry read model in the real Redis: written whole, written in increments, read back."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.registry.state import RegistryState
from shared.events import DatasetSnapshot, ModelEvaluated, ModelLifecycle, ModelTrained
from shared.redis_registry import RedisRegistry
from shared.registry import RegistryUnavailableError, RegistryView

PREFIX = "streamloop:registry"


@pytest.fixture
def model(redis_client: redis.Redis) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    for key in redis_client.scan_iter(match=f"{PREFIX}:{name}:*"):
        redis_client.delete(key)


@pytest.fixture
def registry(redis_client: redis.Redis) -> RedisRegistry:
    return RedisRegistry(redis_client)


def trained(model: str, version: str) -> ModelTrained:
    return ModelTrained(
        model_name=model,
        model_version=version,
        idempotency_key=f"key-{version}",
        artifact_uri=f"file:///a/{version}",
        sha256="ab" * 32,
        dataset=DatasetSnapshot(
            snapshot_id="s",
            frame_ids_sha256="cd" * 32,
            size=10,
            per_class={"car": 10},
            per_condition={"day": 10},
            topic_offsets={"examples:0": 10},
            holdout_size=2,
        ),
        hyperparameters={"lr": 0.1, "layers": [8, 16]},
        metrics={"loss": 0.5},
        code_version="c0",
        seed=3,
        duration_s=1.5,
    )


class Loop:
    def __init__(self, model: str) -> None:
        self.state = RegistryState(model)
        self.offset = -1

    def publish(self, events: list[ModelLifecycle]) -> None:
        for event in events:
            self.offset += 1
            if self.state.apply(event, self.offset):
                self.publish(self.state.decide(event))

    def add(self, version: str, verdict: str = "blessed") -> None:
        model = self.state.model_name
        self.publish(self.state.on_trained(trained(model, version)))
        evaluation: dict[str, Any] = dict(
            model_name=model,
            model_version=version,
            champion_version=None,
            verdict=verdict,
            reasons=["ok"],
            metrics={"holdouts": {"fresh": {"candidate": {"accuracy": 0.5}}}},
        )
        self.publish(self.state.on_evaluated(ModelEvaluated(**evaluation)))


def test_an_unknown_model_reads_as_empty(registry: RedisRegistry, model: str) -> None:
    assert registry.is_empty(model)
    view = registry.view(model)
    assert view == RegistryView(model_name=model, versions=[], aliases={}, history=[])
    assert view.offset == -1 and view.updated_at is None
    assert registry.versions(model) == []
    assert registry.get_version(model, "nope") is None
    assert registry.aliases(model) == {}
    assert registry.champion(model) is None


def test_replace_then_read_back(registry: RedisRegistry, model: str) -> None:
    lp = Loop(model)
    lp.add("v1")
    lp.add("v2")
    lp.add("v3", "rejected")
    written = lp.state.view().model_copy(update={"updated_at": datetime(2026, 2, 3, tzinfo=UTC)})
    registry.replace(written)

    assert not registry.is_empty(model)
    assert registry.view(model) == written
    assert registry.versions(model) == written.versions
    assert registry.get_version(model, "v2") == written.version("v2")
    assert registry.aliases(model) == {"champion": "v1", "challenger": "v2"}
    champion = registry.champion(model)
    assert champion is not None and champion.version == "v1"
    assert champion.fresh_accuracy == 0.5


def test_replace_leaves_nothing_of_the_old_model(registry: RedisRegistry, model: str) -> None:
    old = Loop(model)
    for v in ("v1", "v2", "v3"):
        old.add(v)
    registry.replace(old.state.view())

    new = Loop(model)
    new.add("n1")
    registry.replace(new.state.view())
    got = registry.view(model)
    assert [v.version for v in got.versions] == ["n1"]
    assert registry.get_version(model, "v2") is None
    assert got.aliases == {"champion": "n1"}
    assert len(got.history) == len(new.state.view().history)
    assert got.offset == new.offset


def signature(view: RegistryView) -> tuple[Any, ...]:
    return (
        tuple(v.version for v in view.versions),
        tuple(sorted(view.aliases.items())),
        len(view.history),
        view.offset,
    )


def test_replace_is_atomic(
    registry: RedisRegistry,
    model: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big, small = Loop(model), Loop(model)
    for v in ("v1", "v2", "v3"):
        big.add(v)
    small.add("n1")
    views = [big.state.view(), small.state.view()]
    registry.replace(views[0])

    transactions: list[bool] = []
    real_pipeline = redis_client.pipeline

    def pipeline(transaction: bool = True, shard_hint: Any = None) -> Any:
        transactions.append(transaction)
        return real_pipeline(transaction=transaction, shard_hint=shard_hint)

    monkeypatch.setattr(redis_client, "pipeline", pipeline)

    # A reader on its own connection, reading while the model is replaced back and forth,
    # must only ever see one whole model or the other.
    reader = RedisRegistry(redis.Redis(connection_pool=redis_client.connection_pool))
    seen: set[tuple[Any, ...]] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(signature(reader.view(model)))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        for i in range(300):
            registry.replace(views[i % 2])
    finally:
        stop.set()
        thread.join(timeout=10)
    assert transactions == [True] * 300
    assert seen and seen <= {signature(v) for v in views}
    assert registry.view(model) == views[1].model_copy(
        update={"updated_at": registry.view(model).updated_at}
    )


def test_apply_changes_writes_increments(registry: RedisRegistry, model: str) -> None:
    lp = Loop(model)
    lp.add("v1")
    first = lp.state.drain_changes()
    registry.apply_changes(model, first.versions, first.aliases, first.history, first.offset)
    assert registry.view(model).model_dump(exclude={"updated_at"}) == lp.state.view().model_dump(
        exclude={"updated_at"}
    )

    lp.add("v2")
    lp.publish(
        [
            ModelLifecycle(
                model_name=model, action="promote_requested", model_version="v2", actor="bob"
            )
        ]
    )
    changes = lp.state.drain_changes()
    assert {v.version for v in changes.versions} == {"v1", "v2"}
    at = datetime(2026, 3, 4, 5, 6, tzinfo=UTC)
    registry.apply_changes(
        model, changes.versions, changes.aliases, changes.history, changes.offset, updated_at=at
    )
    got = registry.view(model)
    assert got == lp.state.view().model_copy(update={"updated_at": at})
    assert got.aliases == {"champion": "v2"}
    assert got.history[-1].actor == "bob" and got.history[-1].action == "alias_set"

    # The alias mapping is replaced, not merged.
    registry.apply_changes(model, [], {}, [], changes.offset + 1)
    assert registry.aliases(model) == {} and registry.champion(model) is None
    assert registry.view(model).offset == changes.offset + 1
    assert len(registry.view(model).versions) == 2


def test_apply_changes_refuses_versions_of_another_model(
    registry: RedisRegistry, model: str
) -> None:
    lp = Loop(f"{model}-other")
    lp.add("v1")
    with pytest.raises(ValueError, match="belongs to"):
        registry.apply_changes(model, lp.state.view().versions, {}, [], 0)
    assert registry.is_empty(model)


def test_an_unreachable_redis_is_unavailable() -> None:
    client = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    registry = RedisRegistry(client)
    with pytest.raises(RegistryUnavailableError):
        registry.view("anything")
    with pytest.raises(RegistryUnavailableError):
        registry.champion("anything")
