"""Settings of the ingest service (``STREAMLOOP_INGEST_*``)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import FetchSettings, ServiceSettings, service_config

__all__ = ["IngestSettings"]


class IngestSettings(ServiceSettings):
    model_config = service_config("ingest")

    group_id: str = "streamloop-ingest"
    """Consumer group; run more processes with the same group to share the partitions."""

    resize: bool = False
    """Resize frames of another size to the model's (``STREAMLOOP_TASK_IMAGE_*``) instead of
    refusing them."""

    max_image_bytes: int = Field(default=1_000_000, gt=0)
    """Largest encoded image accepted (after base64 decoding)."""

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
