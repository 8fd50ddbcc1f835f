"""The fit on a Ray cluster: Ray Train's ``TorchTrainer``, data-parallel workers, a checkpoint
per epoch, and the same result as ``services.training.trainer.fit``.

The training service stays the one Kafka consumer: it reads the snapshot once and hands this
module its pixels and labels. They are cut into one shard per worker (example ``i`` to worker
``i % workers``) and put in Ray's object store once; each worker reads only its shard. Every
worker builds the network from ``seed`` (DistributedDataParallel also broadcasts rank 0's
weights), and per epoch shuffles its shard with a generator seeded by ``(seed, epoch, rank)``
into the same number of batches as every other worker, about ``batch_size / workers`` images
each, so one step averages the gradients of ``batch_size`` images as a local fit does.
Gradients are all-reduced by gloo on CPU and nccl on GPU.

After each epoch rank 0 reports the epoch's loss and accuracy (summed over the workers) and a
checkpoint: the weights, the optimiser's state and the history so far. A worker that dies
makes Ray Train restart the group (``FailureConfig(max_failures)``); the new workers resume
from the last checkpoint, and because an epoch's order depends only on its number, the
weights come out as if nothing had happened. The time budget counts from the start of the
first epoch (not the worker group's start-up, which takes minutes on a busy cluster), across
restarts, and is decided by rank 0 between epochs (an epoch is run whole or not started) and
broadcast.

Progress goes to the caller's ``on_epoch`` from rank 0 only, through a Ray queue; an
exception ``on_epoch`` raises asks the workers to stop after the epoch they are in, and is
raised again when they have.

Batch-norm running statistics are recomputed afterwards in this process over the whole
snapshot (``trainer.recalibrate_norms``), as the local fit does: a worker holds one shard.

What is reproducible: the same snapshot, seed and worker count on CPU give the same weights,
with or without a worker lost on the way. Another worker count shards and batches
differently, so its weights differ (its accuracy is what the gate judges). On GPU, cuDNN and
nccl's reductions are not bit-stable: the weights agree to rounding, not to the byte.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from services.training.settings import Hyperparameters, RayTrainSettings
from services.training.trainer import EpochStats, FitResult, recalibrate_norms
from shared.imports import starting_state
from shared.model import ModelSpec, build_model, preprocess

__all__ = ["RayFitter", "shard_of"]

log = logging.getLogger("streamloop.training")

STATE_FILE = "state.pt"


def shard_of(n: int, workers: int, rank: int) -> npt.NDArray[np.int64]:
    """Indices of worker ``rank``'s shard of ``n`` examples: every ``workers``-th from
    ``rank``."""
    return np.arange(rank, n, workers, dtype=np.int64)


def steps_per_epoch(n: int, workers: int, batch_size: int) -> int:
    """Steps every worker takes per epoch: the smallest shard in batches of about
    ``batch_size / workers``."""
    smallest = n // workers
    per_worker = max(1, batch_size // workers)
    return max(1, math.ceil(smallest / per_worker))


def _epoch_order(seed: int, epoch: int, rank: int, n: int) -> torch.Tensor:
    """Worker ``rank``'s order of its ``n`` examples in ``epoch``: from the epoch's number
    alone, so a resumed run shuffles as an uninterrupted one."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7_919 + rank)
    return torch.randperm(n, generator=g)


def _train_worker(config: dict[str, Any]) -> None:
    """The loop each Ray Train worker runs (see the module docstring)."""
    import ray
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(config["threads"])
    spec: ModelSpec = config["spec"]
    hp: Hyperparameters = config["hp"]
    seed: int = config["seed"]
    pixels, labels = ray.get(config["shards"][rank])
    x, y = torch.from_numpy(pixels), torch.from_numpy(labels)
    torch.manual_seed(seed)
    model = build_model(spec)
    start_from = ray.get(config["start_from"]) if config["start_from"] is not None else None
    if start_from is not None:
        model.load_state_dict(starting_state(model, start_from, keep_head=config["keep_head"]))
    optimiser = torch.optim.Adam(
        model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay
    )
    history: list[dict[str, Any]] = []
    resumed: list[int] = []
    # The budget counts from the first epoch's start: starting a worker group takes seconds
    # on an idle cluster and minutes on a busy one, and that wait must not cost epochs.
    # Rank 0's clock decides; a resumed group keeps the first start.
    started = time.time()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        history = state["history"]
        resumed = [*state["resumed"], len(history)]
        started = state["started_at"]
    device = ray.train.torch.get_device()
    ddp = ray.train.torch.prepare_model(model)
    loss_fn = nn.CrossEntropyLoss()
    steps = config["steps"]
    control = config["control"]
    progress = config["progress"]
    ddp.train()
    for epoch in range(len(history) + 1, hp.epochs + 1):
        elapsed = time.time() - started
        stop = bool(history) and elapsed + elapsed / len(history) > config["time_budget_s"]
        stop = stop or (rank == 0 and not control.empty())
        flag = torch.tensor([int(stop)], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(flag, src=0)
        if int(flag.item()):
            break
        order = _epoch_order(seed, epoch, rank, len(y))
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        for idx in torch.tensor_split(order, steps):
            if len(idx) == 0:
                continue
            optimiser.zero_grad()
            batch_x = preprocess(x[idx].numpy()).to(device)
            batch_y = y[idx].to(device)
            logits = ddp(batch_x)
            loss = loss_fn(logits, batch_y)
            loss.backward()
            optimiser.step()
            sums[0] += float(loss.detach()) * len(idx)
            sums[1] += int((logits.detach().argmax(dim=1) == batch_y).sum())
            sums[2] += len(idx)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        stats = EpochStats(
            epoch=epoch,
            epochs=hp.epochs,
            loss=float(sums[0] / sums[2]),
            accuracy=float(sums[1] / sums[2]),
            elapsed_s=time.time() - started,
        )
        history.append(asdict(stats))
        metrics = {"epoch": epoch, "loss": stats.loss, "accuracy": stats.accuracy}
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(
                    {
                        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                        "optimiser": optimiser.state_dict(),
                        "history": history,
                        "resumed": resumed,
                        "started_at": started,
                    },
                    Path(tmp) / STATE_FILE,
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            progress.put(asdict(stats))
        else:
            ray.train.report(metrics)


class RayFitter:
    """``fit`` on Ray Train (see the module docstring); the training service calls it in place
    of the local ``fit`` when ``STREAMLOOP_TRAINING_BACKEND=ray``."""

    def __init__(self, settings: RayTrainSettings, storage: str) -> None:
        self.settings = settings
        self.storage = storage

    def use_gpu(self) -> bool:
        """Whether the workers get a GPU each: ``on``, ``off``, or ``auto`` (when the cluster
        has one per worker)."""
        import ray

        if self.settings.gpu != "auto":
            return self.settings.gpu == "on"
        gpus = float(ray.cluster_resources().get("GPU", 0.0))  # type: ignore[no-untyped-call]
        return gpus >= self.settings.workers

    def __call__(
        self,
        spec: ModelSpec,
        pixels: npt.NDArray[np.uint8],
        labels: npt.NDArray[np.int64],
        hp: Hyperparameters,
        *,
        seed: int,
        time_budget_s: float,
        threads: int,
        on_epoch: Callable[[EpochStats], None] | None = None,
        start_from: Mapping[str, torch.Tensor] | None = None,
        keep_head: bool = True,
    ) -> FitResult:
        """As ``services.training.trainer.fit``; ``threads`` is each worker's torch threads
        (at most its CPUs)."""
        import ray
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
        from ray.util.queue import Empty, Queue

        if len(pixels) == 0 or len(pixels) != len(labels):
            raise ValueError(
                f"need as many labels as images, and some: {len(pixels)}/{len(labels)}"
            )
        workers = self.settings.workers
        if len(pixels) < workers:
            raise ValueError(f"{len(pixels)} examples cannot feed {workers} workers")
        started = time.time()
        shards = [
            ray.put((np.ascontiguousarray(pixels[i]), np.ascontiguousarray(labels[i])))
            for i in (shard_of(len(pixels), workers, r) for r in range(workers))
        ]
        # Queues are actors; with no CPU of their own they never wait for the workers' CPUs.
        progress, control = (Queue(actor_options={"num_cpus": 0}) for _ in range(2))
        gpu = self.use_gpu()
        name = f"fit-{uuid.uuid4().hex[:12]}"
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={
                "spec": spec,
                "hp": hp,
                "seed": seed,
                "threads": max(1, min(threads, int(self.settings.cpus_per_worker) or 1)),
                "shards": shards,
                "start_from": ray.put(dict(start_from)) if start_from is not None else None,
                "keep_head": keep_head,
                "steps": steps_per_epoch(len(pixels), workers, hp.batch_size),
                "time_budget_s": time_budget_s,
                "progress": progress,
                "control": control,
            },
            scaling_config=ScalingConfig(
                num_workers=workers,
                use_gpu=gpu,
                resources_per_worker={"CPU": self.settings.cpus_per_worker},
            ),
            run_config=RunConfig(
                name=name,
                storage_path=self.storage,
                failure_config=FailureConfig(max_failures=self.settings.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        log.info(
            "ray fit",
            extra={"run": name, "workers": workers, "gpu": gpu, "examples": len(pixels)},
        )
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = trainer.fit()
            except BaseException as exc:  # noqa: BLE001 -- raised again in the caller's thread
                outcome["error"] = exc

        thread = threading.Thread(target=run, name=f"ray-fit-{name}", daemon=True)
        thread.start()
        failed: BaseException | None = None
        told = 0
        while thread.is_alive() or not progress.empty():
            try:
                stats = EpochStats(**progress.get(timeout=0.5))
            except Empty:
                continue
            # A worker lost before Ray Train registered an epoch's checkpoint makes the
            # group redo that epoch, identically: it is told once.
            if stats.epoch <= told:
                continue
            told = stats.epoch
            if on_epoch is not None and failed is None:
                try:
                    on_epoch(stats)
                except Exception as exc:  # noqa: BLE001 -- stops the workers, raised below
                    failed = exc
                    control.put("stop")
        thread.join()
        for q in (progress, control):
            q.shutdown()
        del shards
        try:
            if failed is not None:
                raise failed
            if "error" in outcome:
                raise outcome["error"]
            checkpoint = outcome["result"].checkpoint
            if checkpoint is None:
                raise RuntimeError(f"ray fit {name} ended without a checkpoint")
            with checkpoint.as_directory() as d:
                state = torch.load(Path(d) / STATE_FILE, weights_only=False)
        finally:
            # The run's checkpoints, a fit's that failed too: a retry starts a run of its own.
            if Path(self.storage).is_dir():
                shutil.rmtree(Path(self.storage) / name, ignore_errors=True)
        model = build_model(spec)
        model.load_state_dict(state["model"])
        history = [EpochStats(**h) for h in state["history"]]
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if norms:
            torch.set_num_threads(threads)
            recalibrate_norms(model, norms, torch.from_numpy(pixels), hp.batch_size)
        model.eval()
        if state["resumed"]:
            log.warning("ray fit resumed", extra={"run": name, "after_epochs": state["resumed"]})
        return FitResult(
            {k: v.detach().clone() for k, v in model.state_dict().items()},
            history,
            time.time() - started,
            stopped_by_budget=len(history) < hp.epochs,
            resumed_after=tuple(state["resumed"]),
        )
