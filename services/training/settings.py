"""Settings of the training service (``STREAMLOOP_TRAINING_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from shared.registry import DEFAULT_MODEL_NAME
from shared.runtimes import ExportFormat
from shared.settings import ModelSettings, ServiceSettings, service_config
from shared.zoo import check_input_size

__all__ = ["Hyperparameters", "RayTrainSettings", "SamplingPolicy", "TrainingSettings"]


class SamplingPolicy(BaseModel):
    """Which examples a training run uses, so that a drift is learned without forgetting.

    Every frame id is assigned once, by hash, to train, the fresh holdout or the reference
    holdout (``shared.datasets.split_of``). A run trains on all train-split examples among the
    ``recent_examples`` newest (by capture time) plus a class-balanced random sample of at most
    ``older_per_class`` older ones per class; the holdout-split frames among the newest form
    the fresh holdout that evaluation scores on."""

    model_config = ConfigDict(frozen=True)

    recent_examples: int = Field(default=3000, gt=0)
    """Size of the recency window (newest examples by capture time)."""

    older_per_class: int = Field(default=400, ge=0)
    """Older examples sampled per class, so earlier conditions are not forgotten."""

    holdout_share: float = Field(default=0.15, ge=0.0, lt=1.0)
    """Share of frame ids in the fresh-holdout split."""

    reference_share: float = Field(default=0.10, ge=0.0, lt=1.0)
    """Share of frame ids in the fixed reference split (never trained on)."""

    min_train_examples: int = Field(default=200, gt=0)
    """Fewer training examples than this and the run is skipped with an alert."""

    newest_examples: int = Field(default=600, ge=0)
    """The newest examples (by capture time, of the recency window) that each epoch sees
    ``newest_repeat`` times: right after a drift they are the only ones of the new world, a
    few hundred among thousands, and a rare class in them may be a few dozen frames."""

    newest_repeat: int = Field(default=3, ge=1)
    """How often each of the ``newest_examples`` is seen per epoch (1: no emphasis)."""

    min_drift_examples: int = Field(default=100, ge=0)
    """Training examples of the drifted slices a run waits for (at most
    ``TrainingSettings.drift_wait_s``) before it snapshots: a request confirmed on the first
    twenty labels of a night comes before most of the night's labels have reached the
    examples log, and a fit on two dozen night examples learned the night to 0.6-0.7 in
    the demo; a hundred take about 20 s more of labels there. 0: never wait."""

    replay_ratio: float = Field(default=2.0, ge=0.0)
    """A run that fine-tunes earlier weights (a warm start) sees, per epoch, the emphasised
    examples (of the drifted slices, or the newest) ``drift_repeat`` (``newest_repeat``) times
    and a seeded sample of the other training examples this many times as many, instead of
    every example: the earlier weights know the rest already, and the replay keeps it
    (``python -m tests.bench.bench_warm``; docs/model-lifecycle.md). At 1.0 the demo's CNN
    fine-tuned on 70 night examples lost a point or two of the day, enough for the gate's
    0.02 to refuse it; at 2.0 it kept the day."""

    drift_repeat: int = Field(default=4, ge=1)
    """How often each training example of a drifted slice is seen per epoch, when the
    retrain request names the slices whose live accuracy dropped (``RetrainRequest.slices``:
    ``camera=ID``, ``condition=NAME``); every other example is still seen once. It replaces
    the ``newest_repeat`` emphasis for that run; a request without slices, or whose slices
    cover every training example, keeps the newest emphasis."""

    drift_max_share: float = Field(default=0.5, gt=0.0, le=1.0)
    """The drifted slices are weighted up only when their examples are at most this share of
    the training examples; past it (day and night both named after a dusk: 2,679 of 2,803
    examples), repeating them changes the mix little and multiplies the epoch (a six-epoch
    retrain took 106 s instead of about 30), and the newest emphasis applies instead."""


class Hyperparameters(BaseModel):
    """How the network is fitted."""

    model_config = ConfigDict(frozen=True)

    epochs: int = Field(default=8, gt=0)
    batch_size: int = Field(default=64, gt=0)
    learning_rate: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)


class RayTrainSettings(BaseModel):
    """How a fit runs on Ray (``STREAMLOOP_TRAINING_BACKEND=ray``;
    ``services.training.ray_fit``)."""

    model_config = ConfigDict(frozen=True)

    workers: int = Field(default=2, gt=0)
    """Data-parallel workers (Ray Train's ``num_workers``)."""

    cpus_per_worker: float = Field(default=1.0, gt=0)
    """CPUs each worker reserves; its torch threads are at most this many."""

    gpu: Literal["auto", "on", "off"] = "auto"
    """A GPU per worker: ``auto`` when the cluster has one for each worker."""

    max_failures: int = Field(default=3, ge=-1)
    """Worker losses a fit recovers from, each time from its last checkpoint (-1: any)."""

    fallback_local: bool = True
    """When no cluster answers at ``RAY_ADDRESS``, start a local Ray in the training process
    instead of failing."""

    storage: str | None = None
    """Where checkpoints go: a folder every node of the cluster sees (NFS) or a URI that
    pyarrow opens (``s3://bucket/path``); unset, ``<var>/ray-train`` on this machine, which
    is enough for a one-machine cluster only. A fit's checkpoints in a folder are deleted
    when it ends, whether it succeeded or failed."""


class TrainingSettings(ServiceSettings):
    model_config = service_config("training")

    group_id: str = "streamloop-training"
    """Consumer group of ``retrain.requests``."""

    model_name: str = DEFAULT_MODEL_NAME
    """The model this service trains (requests for other names are ignored)."""

    model: ModelSettings = Field(default_factory=ModelSettings)
    """The architecture of the models it trains (shared ``STREAMLOOP_MODEL_*``)."""

    policy: SamplingPolicy = Field(default_factory=SamplingPolicy)
    """Dataset snapshot policy (``STREAMLOOP_TRAINING_POLICY__RECENT_EXAMPLES`` ...)."""

    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    """Training hyperparameters (``STREAMLOOP_TRAINING_HYPERPARAMETERS__EPOCHS`` ...)."""

    seed: int = 0
    """Seed of sampling, initialisation and batch order: the same snapshot and seed give the
    same weights."""

    time_budget_s: float = Field(default=110.0, gt=0)
    """Wall-clock budget of the fitting; no epoch starts that is not expected to finish in
    time (the run then records ``stopped_by_budget``). On Ray it counts from the first
    epoch's start: the worker group's start-up is not counted."""

    drift_wait_s: float = Field(default=45.0, ge=0)
    """How long a run waits, at most, for ``policy.min_drift_examples`` examples of the
    drifted slices (re-reading the examples every few seconds); then it trains on what there
    is."""

    torch_threads: int = Field(default=2, gt=0)
    """Threads torch may use (on Ray: each worker, at most its ``cpus_per_worker``)."""

    backend: Literal["local", "ray"] = "local"
    """Where the fit runs: ``local``, in this process; ``ray``, on the Ray cluster at
    ``RAY_ADDRESS`` (a local Ray in this process without one) with Ray Train, data-parallel
    over ``ray.workers`` workers (``STREAMLOOP_TRAINING_RAY__WORKERS``). The service stays the
    one consumer of the requests; only the fit is distributed."""

    ray: RayTrainSettings = Field(default_factory=RayTrainSettings)

    ray_address: str | None = Field(
        default=None, validation_alias=AliasChoices("RAY_ADDRESS", "ray_address")
    )
    """The Ray cluster to fit on (``RAY_ADDRESS``, as for serving)."""

    exports: tuple[ExportFormat, ...] = ("onnx",)
    """Inference runtimes to export each model for, besides its weights: ``onnx``,
    ``compiled`` (JSON, ``STREAMLOOP_TRAINING_EXPORTS='["onnx","compiled"]'``; ``[]`` for
    none). The default is what serving's default runtime needs. ``onnx`` adds a few seconds to
    a run, ``compiled`` a C++ compile of about half a minute. An export that does not agree
    with the weights is not published."""

    init: str = Field(
        default="champion", pattern=r"^(scratch|champion|imported:[A-Za-z0-9._-]{1,64})$"
    )
    """Where a run's weights start: ``champion`` (the default), the weights of the model's
    champion when the run starts; ``imported:VERSION``, the weights of that registered version
    (for example one imported with ``streamloop models import``), either fine-tuned on the
    stream's examples; or ``scratch``, initialised from ``seed``. An imported version
    must be of the configured architecture; its classifier head is re-initialised when its
    class list differs from the task's. With ``champion``, a run that finds no champion, or
    one of another architecture or input size, trains from scratch instead (and says so in
    its log); a champion of other classes keeps all but its head, as above. The lineage
    records what the weights started from (``init``: ``scratch``, ``imported:VERSION`` or
    ``champion:VERSION``)."""

    warm_epochs: int | None = Field(default=6, gt=0)
    """Epochs of a run that starts from earlier weights (``imported:VERSION`` or a found
    champion): they already classify, so a few short epochs adapt them (each the emphasised
    examples and a replay sample, ``policy.replay_ratio``). None: as many as
    ``hyperparameters.epochs``. The time budget still applies."""

    lease_s: int = Field(default=120, ge=2)
    """How long a run holds its idempotency key without renewing it; after a crash the key is
    free again after at most this long and a redelivered request retrains."""

    done_ttl_s: int = Field(default=30 * 86_400, gt=0)
    """How long a finished key is remembered (the retention of ``retrain.requests``)."""

    bootstrap: bool = True
    """When the registry has no champion, request a first training once enough examples exist."""

    bootstrap_min_examples: int = Field(default=2000, gt=0)
    """Examples on the topic before the bootstrap request is sent. About 1,500 of 2,000 land
    in the training split: enough for the simulator's day frames to be classified at well
    over 90 %, so the first model is a fair baseline for the monitor."""

    bootstrap_interval_s: float = Field(default=10.0, gt=0)
    """How often the bootstrap condition is checked."""

    @model_validator(mode="after")
    def _architecture_takes_the_input(self) -> TrainingSettings:
        """An architecture that cannot take the task's image size stops training at start-up
        rather than failing every retrain request."""
        check_input_size(self.model.architecture, self.task.image_height, self.task.image_width)
        return self
