"""Ingest's batch handler: the logic's outcome published, counted and handed back."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import Counter

from services.ingest.logic import Ingestor, IngestOutcome
from shared.events import FrameRaw
from shared.ports import Message, Rejection, TracingPublisher
from shared.topics import Topics

__all__ = ["make_handler"]

log = logging.getLogger("streamloop.ingest")

FRAMES = Counter(
    "streamloop_ingest_frames",
    "Frames handled by ingest, by outcome (valid, duplicate, rejected) and reason.",
    ["outcome", "reason"],
)
DEDUPE_SKIPPED = Counter(
    "streamloop_ingest_dedupe_skipped_batches",
    "Batches passed without duplicate detection because Redis was unreachable.",
)


def make_handler(
    ingestor: Ingestor, producer: TracingPublisher
) -> Callable[[list[Message[FrameRaw]]], list[Rejection[FrameRaw]]]:
    """The batch handler: run the logic, publish the valid frames (each one continues its
    camera's trace), count outcomes, hand refusals back to the loop for the DLQ."""

    def handle(batch: list[Message[FrameRaw]]) -> list[Rejection[FrameRaw]]:
        out: IngestOutcome = ingestor.process(batch)
        for msg, frame in out.valid:
            producer.publish(
                Topics.FRAMES_VALID,
                frame,
                key=frame.camera_id,
                context=msg.trace_context(),
                attributes={"streamloop.frame_id": frame.frame_id},
            )
        if out.valid:
            FRAMES.labels("valid", "").inc(len(out.valid))
        if out.duplicates:
            FRAMES.labels("duplicate", "duplicate").inc(len(out.duplicates))
            log.info("dropped duplicate frames", extra={"count": len(out.duplicates)})
        for r in out.rejections:
            FRAMES.labels("rejected", r.reason).inc()
        if out.dedupe_skipped:
            DEDUPE_SKIPPED.inc()
            log.warning("redis unreachable: batch passed without duplicate detection")
        return out.rejections

    return handle
