"""Settings of the evaluation service (``STREAMLOOP_EVALUATION_*``)."""

from __future__ import annotations

from pydantic import Field

from services.evaluation.gate import GateThresholds
from shared.registry import DEFAULT_MODEL_NAME
from shared.settings import ServiceSettings, service_config

__all__ = ["EvaluationSettings"]


class EvaluationSettings(ServiceSettings):
    model_config = service_config("evaluation")

    group_id: str = "streamloop-evaluation"
    """Consumer group of ``models.trained``."""

    model_name: str = DEFAULT_MODEL_NAME
    """The model this service evaluates (candidates of other names are ignored)."""

    thresholds: GateThresholds = Field(default_factory=GateThresholds)
    """The gate (``STREAMLOOP_EVALUATION_THRESHOLDS__MIN_ACCURACY`` ...)."""

    reference_max: int = Field(default=2000, gt=0)
    """Largest reference holdout scored: a class-balanced, hash-ordered (so stable) selection
    of the reference split."""

    latency_batch: int = Field(default=256, gt=0)
    """Batch size of the CPU latency measurement."""

    torch_threads: int = Field(default=2, gt=0)
    """Threads torch may use."""
