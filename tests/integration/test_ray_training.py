"""The fit on Ray Train (``services.training.ray_fit``) with a real local Ray of two CPUs and
two workers: reproducible, resumed from its checkpoint when a worker is killed mid-epoch,
and behind the training service the same candidate and lineage as a local fit."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from services.training.ray_fit import RayFitter
from services.training.settings import Hyperparameters, RayTrainSettings
from services.training.trainer import EpochStats, FitResult, fit
from shared.model import ModelSpec, build_model, predict_proba
from tests.synthetic import CLASSES, render_examples, table_of

ray = pytest.importorskip("ray")

# A fit on Ray starts a worker group first (30 to 45 s on two cores); a test runs up to three.
pytestmark = pytest.mark.timeout(600)

SPEC = ModelSpec(classes=CLASSES, image_height=64, image_width=64)
HP = Hyperparameters(epochs=3, batch_size=32)


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    from shared.ray_cluster import init_ray

    # A local Ray sets variables in this process for its workers (RAY_AUTH_MODE=token among
    # them); left after the shutdown, every service a later test starts would inherit them.
    before = dict(os.environ)
    init_ray(None, num_cpus=2, object_store_mb=256)
    yield
    ray.shutdown()
    os.environ.clear()
    os.environ.update(before)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    table = table_of(render_examples(480, seed=5, condition=lambda i: "day" if i % 3 else "night"))
    labels = np.asarray([CLASSES.index(r.label) for r in table.records], dtype=np.int64)
    return table.pixels, labels


def ray_fit(
    tmp_path: Path,
    data: tuple[np.ndarray, np.ndarray],
    on_epoch: object = None,
) -> FitResult:
    fitter = RayFitter(RayTrainSettings(workers=2, gpu="off"), str(tmp_path / "ray-train"))
    return fitter(
        SPEC,
        *data,
        HP,
        seed=3,
        time_budget_s=600,
        threads=1,
        on_epoch=on_epoch,  # type: ignore[arg-type]
    )


def same_weights(a: FitResult, b: FitResult) -> bool:
    return a.state_dict.keys() == b.state_dict.keys() and all(
        torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict
    )


@pytest.fixture(scope="module")
def reference(
    cluster: None, data: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[FitResult, list[EpochStats], Path]:
    """Two workers, seed 3, uninterrupted: the fit the other runs are compared with; its
    epochs as rank 0 told them and its checkpoint folder."""
    root = tmp_path_factory.mktemp("reference")
    seen: list[EpochStats] = []
    return ray_fit(root, data, on_epoch=seen.append), seen, root / "ray-train"


def test_two_workers_learn_and_a_rerun_gives_the_same_weights(
    reference: tuple[FitResult, list[EpochStats], Path],
    data: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    first, seen, checkpoints = reference
    assert [s.epoch for s in seen] == [1, 2, 3]  # rank 0 only: one event per epoch
    assert [s.epoch for s in first.history] == [1, 2, 3] and not first.stopped_by_budget
    assert first.final.accuracy > seen[0].accuracy
    assert first.resumed_after == ()
    assert not checkpoints.exists() or not any(checkpoints.iterdir())
    second = ray_fit(tmp_path / "b", data)
    assert same_weights(first, second)
    # The local fit shards and batches otherwise (so the comparison above could fail).
    local = fit(SPEC, *data, HP, seed=3, time_budget_s=600, threads=1)
    assert not same_weights(first, local)
    assert abs(local.final.accuracy - first.final.accuracy) < 0.25


def train_workers() -> list[int]:
    """Pids of Ray Train's worker processes."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "RayTrainWorker" in line]


def test_a_worker_killed_mid_epoch_resumes_from_its_checkpoint_to_the_same_weights(
    reference: tuple[FitResult, list[EpochStats], Path],
    data: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    killed: list[int] = []

    def kill_in_the_third_epoch(stats: EpochStats) -> None:
        if stats.epoch == 2 and not killed:
            pids = train_workers()
            assert len(pids) == 2, pids
            time.sleep(0.3)
            os.kill(pids[-1], signal.SIGKILL)
            killed.append(pids[-1])

    seen: list[EpochStats] = []

    def on_epoch(stats: EpochStats) -> None:
        seen.append(stats)
        kill_in_the_third_epoch(stats)

    resumed = ray_fit(tmp_path / "kill", data, on_epoch=on_epoch)
    assert killed and killed[0] not in train_workers()
    # Resumed from the checkpoint of epoch 1 or 2 (whichever Ray Train had registered when
    # the worker died), not from scratch; every epoch told once.
    assert resumed.resumed_after in ((1,), (2,))
    assert [s.epoch for s in resumed.history] == [s.epoch for s in seen] == [1, 2, 3]
    assert same_weights(reference[0], resumed)


def test_an_exception_in_on_epoch_stops_the_workers_and_is_raised(
    cluster: None, data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    class Lost(Exception):
        pass

    def lose(stats: EpochStats) -> None:
        raise Lost(f"lease lost in epoch {stats.epoch}")

    started = time.monotonic()
    with pytest.raises(Lost, match="epoch 1"):
        ray_fit(tmp_path, data, on_epoch=lose)
    assert time.monotonic() - started < 120
    # The failed run's checkpoints are gone with it.
    runs = tmp_path / "ray-train"
    assert not runs.exists() or [p.name for p in runs.iterdir()] == []


def test_a_zoo_network_warm_starts_on_ray_and_its_batch_norm_is_recomputed(
    cluster: None, data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    spec = ModelSpec.for_architecture("mobilenet_v3_small", CLASSES, 64, 64)
    hp = Hyperparameters(epochs=1, batch_size=32)
    start = fit(spec, *data, hp, seed=1, time_budget_s=600, threads=1)
    fitter = RayFitter(RayTrainSettings(workers=2, gpu="off"), str(tmp_path / "ray-train"))
    warm = fitter(
        spec, *data, hp, seed=1, time_budget_s=600, threads=1, start_from=start.state_dict
    )
    assert [s.epoch for s in warm.history] == [1]
    # Fine-tuned from the starting weights, not from the seed's.
    moved = [
        k for k in start.state_dict if not torch.equal(start.state_dict[k], warm.state_dict[k])
    ]
    assert moved and warm.history[0].accuracy > 0.0
    means = [k for k in warm.state_dict if k.endswith("running_mean")]
    assert means and all(torch.isfinite(warm.state_dict[k]).all() for k in means)
    model = build_model(spec)
    model.load_state_dict(warm.state_dict)
    model.eval()
    probs = predict_proba(model, data[0][:16])
    assert probs.shape == (16, len(CLASSES)) and np.isfinite(probs).all()


def test_the_budget_stops_between_epochs_and_not_before_the_first(
    cluster: None, data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    fitter = RayFitter(RayTrainSettings(workers=2, gpu="off"), str(tmp_path / "ray-train"))
    result = fitter(SPEC, *data, HP, seed=3, time_budget_s=0.01, threads=1)
    assert [s.epoch for s in result.history] == [1] and result.stopped_by_budget
