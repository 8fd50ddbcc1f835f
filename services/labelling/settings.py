"""Settings of the labelling service (``STREAMLOOP_LABELLING_*``)."""

from __future__ import annotations

from typing import Literal

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

    table_store: Literal["rocksdb", "memory"] = "rocksdb"
    """Where the join table lives. ``rocksdb``: on disk under ``$STREAMLOOP_VAR/faust``, with
    a bounded cache, so memory stays flat whatever ``frame_ttl_s`` and the frame rate hold
    (about 17 KiB of disk per frame held). ``memory``: every held frame, pixels included, in
    the process (about 25 KiB each)."""

    rocksdb_cache_mib: int = Field(default=16, ge=1)
    """RocksDB block cache per table partition."""

    rocksdb_write_buffer_mib: int = Field(default=8, ge=1)
    """RocksDB write buffer per table partition (two of them at most)."""
