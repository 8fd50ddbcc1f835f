"""The registry's start: every event on ``models.lifecycle`` so far, read without a group."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from shared.events import DecodeError, ModelLifecycle, decode
from shared.reader import TopicReader
from shared.settings import KafkaSettings
from shared.topics import Topics

__all__ = ["read_lifecycle"]

log = logging.getLogger("streamloop.registry")


def read_lifecycle(settings: KafkaSettings) -> Iterator[tuple[ModelLifecycle, int]]:
    """Every event on ``models.lifecycle`` from the start up to its end offset now, with its
    offset. An unreadable record is logged and skipped: the log is the registry's truth,
    and one bad record must not keep the registry from starting."""
    with TopicReader(settings, [Topics.MODELS_LIFECYCLE]) as reader:
        for rec in reader.until_end():
            if rec.value is None:
                continue
            try:
                yield decode(rec.value, ModelLifecycle), rec.offset
            except DecodeError as exc:
                log.error(
                    "unreadable lifecycle record skipped",
                    extra={"offset": rec.offset, "reason": exc.reason},
                )
