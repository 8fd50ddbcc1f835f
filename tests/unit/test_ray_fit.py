"""The Ray fit's pure parts: how examples are sharded and batched, and the settings that
choose it. (The fit itself runs on a real Ray in tests/integration/test_ray_training.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from services.training.ray_fit import _epoch_order, shard_of, steps_per_epoch
from services.training.settings import TrainingSettings


def test_shards_cover_every_example_once_and_differ_in_size_by_one_at_most() -> None:
    for n, workers in [(10, 1), (10, 2), (11, 3), (1000, 4)]:
        shards = [shard_of(n, workers, r) for r in range(workers)]
        joined = np.sort(np.concatenate(shards))
        assert np.array_equal(joined, np.arange(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_every_worker_takes_the_same_steps_of_about_a_share_of_the_batch() -> None:
    # 1,001 examples, batch 64, 2 workers: shards of 501 and 500 in 16 steps of ~32 each.
    assert steps_per_epoch(1001, 2, 64) == 16
    assert steps_per_epoch(1001, 1, 64) == 16
    assert steps_per_epoch(3, 2, 64) == 1
    for size in (500, 501):
        parts = torch.tensor_split(torch.arange(size), steps_per_epoch(1001, 2, 64))
        assert len(parts) == 16 and {len(p) for p in parts} <= {31, 32}


def test_an_epochs_order_depends_on_the_seed_the_epoch_and_the_rank_only() -> None:
    a = _epoch_order(0, 3, 1, 50)
    assert torch.equal(a, _epoch_order(0, 3, 1, 50))
    assert not torch.equal(a, _epoch_order(0, 4, 1, 50))
    assert not torch.equal(a, _epoch_order(0, 3, 0, 50))
    assert not torch.equal(a, _epoch_order(1, 3, 1, 50))
    assert sorted(a.tolist()) == list(range(50))


def test_the_backend_and_its_workers_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TrainingSettings().backend == "local"
    monkeypatch.setenv("STREAMLOOP_TRAINING_BACKEND", "ray")
    monkeypatch.setenv("STREAMLOOP_TRAINING_RAY__WORKERS", "3")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    s = TrainingSettings()
    assert (s.backend, s.ray.workers, s.ray.gpu, s.ray_address) == (
        "ray",
        3,
        "auto",
        "10.0.0.5:6379",
    )
    monkeypatch.setenv("STREAMLOOP_TRAINING_BACKEND", "slurm")
    with pytest.raises(ValidationError):
        TrainingSettings()
