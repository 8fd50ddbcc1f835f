"""Settings of the ingest service (``STREAMLOOP_INGEST_*``)."""

from __future__ import annotations

from pydantic import Field

from services.ingest.logic import DEFAULT_MAX_IMAGE_BYTES
from shared.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_CEILING
from shared.settings import (
    FetchSettings,
    ServiceSettings,
    TransactionSettings,
    service_config,
)

__all__ = ["IngestSettings"]


class IngestSettings(ServiceSettings):
    model_config = service_config("ingest")

    group_id: str = "streamloop-ingest"
    """Consumer group; run more processes with the same group to share the partitions."""

    max_image_bytes: int = Field(default=DEFAULT_MAX_IMAGE_BYTES, gt=0, le=9_000_000)
    """Largest encoded image accepted (after base64 decoding). At most 9 MB: in base64 with
    its envelope the record must stay under ``frames.raw``'s 12 MiB ``max.message.bytes``."""

    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, gt=0, le=MAX_PIXELS_CEILING)
    """Largest image accepted, in pixels (width x height, default 4096 x 4096), read from the
    header before anything is decoded: a larger one is refused as ``too_many_pixels``. At
    most 64 Mi pixels, below Pillow's own decompression-bomb limit. How a frame is fitted
    to the model's input is ``STREAMLOOP_TASK_IMAGE_FIT``."""

    camera_id_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
    """Regular expression every camera id must match."""

    allowed_cameras: frozenset[str] = frozenset()
    """When not empty, only these camera ids are accepted."""

    dedupe_ttl_s: int = Field(default=86_400, gt=0)
    """How long a frame_id is remembered for duplicate detection (default: the retention of
    ``frames.raw``)."""

    max_poll_records: int = Field(default=256, gt=0)
    """Largest batch handled at once."""

    fetch: FetchSettings = Field(default_factory=FetchSettings)
    """How ``frames.raw`` is fetched (``STREAMLOOP_INGEST_FETCH__MIN_BYTES``,
    ``…__MAX_WAIT_MS``)."""

    transactions: TransactionSettings = Field(default_factory=TransactionSettings)
    """Exactly once from ``frames.raw`` to ``frames.valid`` and ``frames.dlq``, when on
    (``STREAMLOOP_INGEST_TRANSACTIONS__ENABLED``, ``…__ID``, ``…__TIMEOUT_MS``)."""
