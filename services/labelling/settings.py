"""Settings of the labelling service (``STREAMLOOP_LABELLING_*``)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings, service_config

__all__ = ["LabellingSettings"]


class LabellingSettings(ServiceSettings):
    model_config = service_config("labelling")

    app_id: str = "streamloop-labelling"
    """faust application id: the consumer group and the prefix of its internal topics."""

    frame_ttl_s: float = Field(default=900.0, gt=0)
    """How long a frame waits for its label (and stays to take a corrected label)."""

    label_ttl_s: float = Field(default=900.0, gt=0)
    """How long a label whose frame has not arrived waits for it."""

    sweep_interval_s: float = Field(default=10.0, gt=0)
    """How often expired entries are removed."""

    partitions: int = Field(default=3, ge=1)
    """Partitions of the internal join topic and of the table's changelog."""
