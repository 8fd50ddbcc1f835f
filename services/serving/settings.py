"""Settings of the serving service (``STREAMLOOP_SERVING_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.auth import HttpAuthSettings
from shared.registry import DEFAULT_MODEL_NAME
from shared.runtimes import RuntimeName
from shared.settings import (
    FetchSettings,
    ServiceSettings,
    TransactionSettings,
    service_config,
)

__all__ = ["ServingSettings"]


class ServingSettings(ServiceSettings):
    model_config = service_config("serving")

    group_id: str = "streamloop-serving"
    """Consumer group of ``frames.valid``; more ingress processes in it share the partitions."""

    model_name: str = DEFAULT_MODEL_NAME
    """The model served."""

    backend: Literal["ray", "local"] = "ray"
    """``ray``: a Ray Serve deployment (local Ray unless ``ray_address``); ``local``: the
    serving core in the ingress process (small machines, tests)."""

    ray_address: str | None = Field(default=None, validation_alias="RAY_ADDRESS")
    """Ray cluster to join (the standard ``RAY_ADDRESS``; ``make up`` starts one at
    ``127.0.0.1:6380``); unset starts a local Ray in this process."""

    ray_fallback_local: bool = True
    """When no cluster answers at ``ray_address``, start a local Ray in this process instead
    of failing (``false`` in production, where serving should wait for its cluster)."""

    min_replicas: int = Field(default=1, ge=0)
    """Autoscaling: fewest model replicas."""

    max_replicas: int = Field(default=2, ge=1)
    """Autoscaling: most model replicas."""

    target_ongoing_requests: float = Field(default=2.0, gt=0)
    """Autoscaling: batches in flight per replica that the autoscaler aims for."""

    replica_cpus: float = Field(default=0.5, gt=0)
    """CPUs reserved per replica (fractional, so replicas fit a 2-core machine)."""

    torch_threads: int = Field(default=1, gt=0)
    """Torch threads per replica (and in the ingress with the local backend); also ONNX
    Runtime's intra-op threads with the ``onnx`` runtime."""

    runtime: RuntimeName = "onnx"
    """How a replica runs the model: ``onnx`` (ONNX Runtime, the fastest in
    ``tests.bench.bench_runtimes``), ``eager`` (torch, from the weights) or ``compiled``
    (AOTInductor). ``onnx`` and ``compiled`` use the export that training stored with the
    version (``STREAMLOOP_TRAINING_EXPORTS``); a version without one is served with ``eager``.
    Serving never exports or compiles."""

    object_store_mb: int = Field(default=256, ge=64)
    """Object store of a local Ray."""

    http_host: str = "127.0.0.1"
    """Interface of ``POST /predict`` (``0.0.0.0`` in a container)."""

    http_port: int = Field(default=8000, ge=0, le=65535)
    """Port of ``POST /predict`` (Ray Serve's HTTP proxy)."""

    http_proxy: bool = True
    """Start Ray Serve's HTTP proxy, which answers ``POST /predict``. ``false`` where nobody
    posts images (the frame path calls the deployment through its handle, not the proxy):
    one Ray process fewer, with its memory and its CPU at rest. Applies when this ingress
    starts Serve; a Serve already running on a joined cluster keeps its proxies."""

    http_auth: HttpAuthSettings = Field(default_factory=HttpAuthSettings)
    """Token and body limit of ``POST /predict`` (shared ``STREAMLOOP_HTTP_*``; this service
    only: ``STREAMLOOP_SERVING_HTTP_AUTH__*``). A prediction is a read: it needs the read
    token when one is set. Bodies up to ``max_body_bytes`` (8 MB by default, ingest's image
    limit)."""

    max_poll_records: int = Field(default=128, gt=0)
    """Most frames handled at once (committed together)."""

    fetch: FetchSettings = Field(default_factory=FetchSettings)
    """How ``frames.valid`` is fetched (``STREAMLOOP_SERVING_FETCH__MIN_BYTES``,
    ``…__MAX_WAIT_MS``)."""

    transactions: TransactionSettings = Field(default_factory=TransactionSettings)
    """Exactly once from ``frames.valid`` to ``predictions``, ``predictions.shadow`` and the
    DLQ, when on (``STREAMLOOP_SERVING_TRANSACTIONS__ENABLED``, ``…__ID``, ``…__TIMEOUT_MS``)."""

    call_size: int = Field(default=64, gt=0)
    """Frames per model call; a batch's calls (and the challenger's) are all in flight at
    once, so replicas and cores work in parallel."""

    call_timeout_s: float = Field(default=60.0, gt=0)
    """How long one batch call to the deployment may take before it is retried."""

    shadow_replay_s: float = Field(default=120.0, ge=0)
    """How far back, at most, a newly adopted challenger is scored on the frames served since
    its training examples were read (``services.serving.replay``), so that the live comparison
    has evidence at once instead of after the labels' delay; 0 turns the replay off. The
    replay runs in the ingress process, with the core that verified the challenger."""
