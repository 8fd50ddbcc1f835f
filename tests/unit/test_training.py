"""Training logic on in-memory ports: snapshots, determinism, idempotency, crash safety."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from services.training.dataset import build_snapshot
from services.training.service import LeaseLostError, RequestBusyError, Trainer
from services.training.settings import Hyperparameters, SamplingPolicy, TrainingSettings
from shared.artifacts import ArtifactStore
from shared.datasets import ExampleTable, split_of
from shared.events import (
    Alert,
    Event,
    ModelTrained,
    RetrainRequest,
    TrainingProgress,
    utcnow,
)
from shared.model import load_model
from shared.ports import MemoryLeases
from shared.registry import MemoryRegistry
from shared.topics import Topics
from tests.synthetic import CLASSES, render_examples, table_of

POLICY = SamplingPolicy(recent_examples=300, older_per_class=25, min_train_examples=50)


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Event, str | None]] = []
        self.flushes = 0

    def publish(self, topic: str, event: Event, *, key: str | None = None) -> object:
        self.sent.append((topic, event, key))
        return None

    def flush(self, timeout_s: float | None = None) -> None:
        self.flushes += 1

    def of(self, topic: str) -> list[Any]:
        return [e for t, e, _ in self.sent if t == topic]


@pytest.fixture(scope="module")
def table() -> ExampleTable:
    # 200 older day frames, then 300 recent night frames.
    return table_of(render_examples(500, seed=3, condition=lambda i: "day" if i < 200 else "night"))


def settings(tmp_path: Path, **kw: Any) -> TrainingSettings:
    return TrainingSettings(
        policy=POLICY,
        hyperparameters=Hyperparameters(epochs=2, batch_size=32),
        var_dir=tmp_path,
        lease_s=30,
        **kw,
    )


def make_trainer(
    tmp_path: Path, table: ExampleTable, leases: MemoryLeases | None = None, **kw: Any
) -> tuple[Trainer, FakePublisher, ArtifactStore]:
    pub = FakePublisher()
    store = ArtifactStore(tmp_path / "artifacts")
    now = [0.0]  # a wait for a held key passes at once

    def sleep(seconds: float) -> None:
        now[0] += seconds

    trainer = Trainer(
        settings(tmp_path, **kw),
        load_examples=lambda: table,
        store=store,
        leases=leases or MemoryLeases(),
        registry=MemoryRegistry(),
        publisher=pub,
        owner="w1",
        code_version="test",
        clock=lambda: now[0],
        sleep=sleep,
    )
    return trainer, pub, store


def request(key: str = "k1") -> RetrainRequest:
    return RetrainRequest(
        model_name="vehicle-classifier", idempotency_key=key, reason="test", trigger="operator"
    )


def test_snapshot_keeps_recent_samples_older_and_never_trains_on_holdouts(
    table: ExampleTable,
) -> None:
    snap = build_snapshot(table, POLICY, seed=0)
    recent = {r.frame_id for r in sorted(table.records, key=lambda r: r.captured_at)[-300:]}
    train_ids = {r.frame_id for r in snap.train}
    assert all(
        split_of(f, POLICY.holdout_share, POLICY.reference_share) == "train" for f in train_ids
    )
    assert {r.frame_id for r in snap.holdout} <= recent
    assert not train_ids & {r.frame_id for r in snap.holdout}
    older = [r for r in snap.train if r.frame_id not in recent]
    assert 0 < len(older) <= 4 * POLICY.older_per_class
    assert snap.per_condition()["night"] > snap.per_condition()["day"]
    again = build_snapshot(table, POLICY, seed=0)
    assert [r.frame_id for r in again.train] == [r.frame_id for r in snap.train]
    other = build_snapshot(table, POLICY, seed=1)
    assert {r.frame_id for r in other.train} != train_ids


def test_each_epoch_sees_the_newest_examples_several_times(table: ExampleTable) -> None:
    policy = POLICY.model_copy(update={"newest_examples": 50, "newest_repeat": 3})
    snap = build_snapshot(table, policy, seed=0)
    seen = snap.epoch_examples()
    newest = snap.train[-50:]
    assert len(seen) == len(snap.train) + 2 * 50
    counts = Counter(r.frame_id for r in seen)
    assert all(counts[r.frame_id] == 3 for r in newest)
    assert all(counts[r.frame_id] == 1 for r in snap.train[:-50])
    # Newest by capture time: nothing repeated is older than what is not.
    assert min(r.captured_at for r in newest) >= max(r.captured_at for r in snap.train[:-50])
    assert list(snap.labels(CLASSES, seen)[-50:]) == [CLASSES.index(r.label) for r in newest]
    plain = build_snapshot(table, POLICY.model_copy(update={"newest_repeat": 1}), seed=0)
    assert plain.epoch_examples() == plain.train


def test_a_request_trains_once_with_progress_and_full_lineage(
    tmp_path: Path, table: ExampleTable
) -> None:
    trainer, pub, store = make_trainer(tmp_path, table)
    started = utcnow()
    outcome = trainer.handle(request())
    assert outcome.status == "trained"
    progress = pub.of(Topics.TRAINING_PROGRESS)
    assert [p.epoch for p in progress] == [1, 2]
    assert all(isinstance(p, TrainingProgress) and p.idempotency_key == "k1" for p in progress)
    (trained,) = pub.of(Topics.MODELS_TRAINED)
    assert isinstance(trained, ModelTrained)
    assert trained.model_version == trained.sha256[:12] == outcome.version
    assert trained.seed == 0 and trained.code_version == "test"
    manifest = store.load_json(trained.dataset.manifest_uri, trained.dataset.manifest_sha256)
    assert len(manifest["train"]) == trained.dataset.size
    assert len(manifest["holdout"]) == trained.dataset.holdout_size > 0
    assert sum(trained.dataset.per_class.values()) == trained.dataset.size
    assert trained.dataset.topic_offsets == {"examples:0": 500}
    # When the examples were read: serving's shadow replay scores frames from then on.
    assert trained.dataset.taken_at is not None
    assert started <= trained.dataset.taken_at <= trained.produced_at
    assert "holdout_accuracy" in trained.metrics
    _model, spec = load_model(store, trained.artifact_uri, trained.sha256)
    assert spec.classes == ("car", "truck", "bus", "motorcycle")

    assert trainer.handle(request()).status == "duplicate"
    assert len(pub.of(Topics.MODELS_TRAINED)) == 1


def test_same_snapshot_and_seed_give_the_same_weights(tmp_path: Path, table: ExampleTable) -> None:
    a, _pub_a, _ = make_trainer(tmp_path / "a", table)
    b, _pub_b, _ = make_trainer(tmp_path / "b", table)
    va = a.handle(request("x")).version
    vb = b.handle(request("y")).version
    assert va is not None and va == vb
    c, _, _ = make_trainer(tmp_path / "c", table, seed=5)
    assert c.handle(request("z")).version != va


def test_a_key_held_by_a_live_worker_is_not_trained_twice(
    tmp_path: Path, table: ExampleTable
) -> None:
    leases = MemoryLeases()
    assert leases.acquire("vehicle-classifier/k1", "other", 600).state == "acquired"
    trainer, pub, _ = make_trainer(tmp_path, table, leases=leases)
    with pytest.raises(RequestBusyError):
        trainer.handle(request())
    assert pub.of(Topics.MODELS_TRAINED) == []


def test_a_run_that_loses_its_lease_publishes_no_model(tmp_path: Path, table: ExampleTable) -> None:
    class Losing(MemoryLeases):
        def renew(self, key: str, owner: str, lease_s: int) -> bool:
            return False

    leases = Losing()
    trainer, pub, _ = make_trainer(tmp_path, table, leases=leases)
    with pytest.raises(LeaseLostError):
        trainer.handle(request())
    assert pub.of(Topics.MODELS_TRAINED) == []
    # Released, not done: a redelivery may train.
    assert leases.acquire("vehicle-classifier/k1", "w2", 30).state == "acquired"


def test_too_few_examples_skips_with_an_alert_and_frees_the_key(tmp_path: Path) -> None:
    small = table_of(render_examples(40, seed=4))
    leases = MemoryLeases()
    trainer, pub, _ = make_trainer(tmp_path, small, leases=leases)
    outcome = trainer.handle(request())
    assert outcome.status == "skipped"
    (alert,) = pub.of(Topics.ALERTS)
    assert isinstance(alert, Alert) and alert.kind == "training_skipped"
    assert pub.of(Topics.MODELS_TRAINED) == []
    assert leases.acquire("vehicle-classifier/k1", "w2", 30).state == "acquired"


def test_requests_for_another_model_are_ignored(tmp_path: Path, table: ExampleTable) -> None:
    trainer, pub, _ = make_trainer(tmp_path, table)
    other = request().model_copy(update={"model_name": "other"})
    assert trainer.handle(other).status == "ignored"
    assert pub.sent == []


def test_bootstrap_asks_once_per_registry_state_and_never_while_a_version_awaits_its_crown(
    tmp_path: Path,
) -> None:
    from services.registry.state import RegistryState
    from services.training.bootstrap import Bootstrapper
    from shared.events import ModelEvaluated
    from tests.synthetic import trained_event

    registry = MemoryRegistry()
    pub = FakePublisher()
    count = {"n": 10}
    boot = Bootstrapper(
        settings(tmp_path, bootstrap_min_examples=100),
        registry,
        pub,
        count_examples=lambda: count["n"],
    )

    def registered(*versions: tuple[str, str | None]) -> None:
        """The registry holding ``versions`` (name, verdict or None), and no champion."""
        state = RegistryState("vehicle-classifier")
        for version, verdict in versions:
            for lc in state.on_trained(trained_event("vehicle-classifier", version, "u", "0")):
                state.apply(lc)
            if verdict is not None:
                evaluated = ModelEvaluated(
                    model_name="vehicle-classifier",
                    model_version=version,
                    champion_version=None,
                    verdict=verdict,  # type: ignore[arg-type]
                    reasons=[],
                    metrics={},
                )
                for lc in state.on_evaluated(evaluated):
                    state.apply(lc)
        registry.replace(state.view())

    registered()
    assert boot.check() is None  # too few examples
    count["n"] = 500
    assert boot.check() is None  # enough, but still arriving
    assert boot.check() == "bootstrap:vehicle-classifier:0"  # settled: all of them train
    assert boot.check() is None  # the same state asks once
    registered(("v1", None))
    assert boot.check() is None  # v1 awaits its verdict
    registered(("v1", "blessed"))
    assert boot.check() is None  # blessed, about to be crowned: no second model
    registered(("v1", "rejected"))
    assert boot.check() == "bootstrap:vehicle-classifier:1"  # every version rejected: retry
    assert [r.idempotency_key for r in pub.of(Topics.RETRAIN_REQUESTS)] == [
        "bootstrap:vehicle-classifier:0",
        "bootstrap:vehicle-classifier:1",
    ]


def test_bootstrap_trains_on_a_whole_set_and_says_when_it_is_too_small(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A labelled set being published is not cut at the minimum: the request waits one
    interval after the count reaches it (no longer, or a live stream would never get a
    model). A set below the minimum that stopped growing is named in a warning that says how
    to train on it anyway, once."""
    from services.training.bootstrap import Bootstrapper

    pub = FakePublisher()
    count = {"n": 0}
    boot = Bootstrapper(
        settings(tmp_path, bootstrap_min_examples=2000),
        MemoryRegistry(),
        pub,
        count_examples=lambda: count["n"],
    )
    for n in (400, 1400, 1400, 1400):
        count["n"] = n
        assert boot.check() is None
    waiting = [r for r in caplog.records if "bootstrap waits" in r.getMessage()]
    assert len(waiting) == 1
    assert "streamloop retrain" in waiting[0].getMessage()
    assert waiting[0].__dict__["examples"] == 1400
    count["n"] = 2100  # over the minimum, still arriving: one interval to land
    assert boot.check() is None
    assert pub.of(Topics.RETRAIN_REQUESTS) == []
    count["n"] = 4200  # still growing (a live stream): asked for now, on all of it
    assert boot.check() == "bootstrap:vehicle-classifier:0"
    (request,) = pub.of(Topics.RETRAIN_REQUESTS)
    assert "4200 examples" in request.reason
