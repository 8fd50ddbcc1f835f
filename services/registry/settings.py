"""Settings of the registry service (``STREAMLOOP_REGISTRY_*``)."""

from __future__ import annotations

from pydantic import Field

from services.registry.state import Promotion, PromotionTest
from shared.auth import OperatorApiAuthSettings
from shared.registry import DEFAULT_MODEL_NAME
from shared.settings import ServiceSettings, service_config

__all__ = ["RegistrySettings"]


class RegistrySettings(ServiceSettings):
    model_config = service_config("registry")

    group_id: str = "streamloop-registry"
    """Consumer group of ``models.trained``, ``models.evaluated``, ``models.lifecycle`` and
    ``metrics``.
    Run one registry per model: it is the single writer of the model's lifecycle."""

    model_name: str = DEFAULT_MODEL_NAME
    """The model whose lifecycle this registry keeps."""

    promotion: Promotion = "shadow"
    """What a blessed version becomes when a champion exists: ``shadow`` (challenger, served
    in shadow until promoted) or ``direct`` (champion at once)."""

    live_promotion: bool = True
    """Act on live evidence (``LiveComparison`` on ``metrics``): promote a blessed challenger
    that beats the champion on the same labelled frames, and roll a champion so promoted
    back when its predecessor, shadowing it on probation, beats it. False ignores
    comparisons."""

    promotion_test: PromotionTest = "sequential"
    """How live evidence decides. ``sequential``: a sequential test on the frames exactly one
    model got right, which promotes (or rolls back) as soon as the evidence is decisive and
    promotes a challenger that is not better with probability at most
    ``false_promotion_rate``, however long it runs. ``fixed``: the earlier rule, wait for
    ``live_min_labels`` shared labelled frames and compare accuracies (a tie promotes;
    ``rollback_margin`` on probation). Comparisons without discordant counts (from an older
    monitor) always use ``fixed``."""

    false_promotion_rate: float = Field(default=0.01, gt=0.0, le=0.5)
    """The sequential test's alpha: the probability that a challenger no better than the
    champion is ever promoted (and that a new champion no worse than its predecessor is
    ever rolled back)."""

    live_min_labels: int = Field(default=200, ge=1)
    """``sequential``: shared labelled frames after which a probation with no evidence
    against the new champion passes. ``fixed``: the frames a comparison needs before the
    registry acts on it."""

    rollback_margin: float = Field(default=0.02, ge=0.0, le=1.0)
    """``fixed`` only: how much more accurate (absolute accuracy) the predecessor on
    probation must be than the new champion to roll it back; within the margin the probation
    passes. The sequential test needs no margin (it weighs the evidence, not the gap)."""

    live_min_accuracy: float = Field(default=0.5, ge=0.0, le=1.0)
    """A challenger's own live accuracy must reach this to be promoted: when the live labels
    disagree with every model (a corrupted annotation feed), no comparison proves anything."""

    api_host: str = "127.0.0.1"
    """Interface of the read API (``0.0.0.0`` in a container)."""

    api_port: int = Field(default=8710, ge=0, le=65535)
    """Port of the API (reads ``/models``, ``/models/{version}``, ``/aliases``; operator
    actions ``POST /models/{version}/promote``, ``/rollback``, ``/retrain``); 0 picks one."""

    import_max_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    """Largest weights file ``POST /models/import`` takes (resnet50 is about 100 MB)."""

    http_auth: OperatorApiAuthSettings = Field(default_factory=OperatorApiAuthSettings)
    """Tokens and body limit of the API (shared ``STREAMLOOP_HTTP_*``; this service only:
    ``STREAMLOOP_REGISTRY_HTTP_AUTH__*``). Without an operator token, operator actions are
    refused; in production one is required."""
