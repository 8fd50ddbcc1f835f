"""Run the ingest service: ``streamloop serve ingest`` or ``python -m services.ingest``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from prometheus_client import Counter

from services.ingest.logic import Ingestor, IngestOutcome, Policy
from services.ingest.settings import IngestSettings
from shared.bus import ConsumerLoop, EventProducer, Message, Rejection, stop_on_signals
from shared.events import FrameRaw
from shared.redis_store import RedisClaims, connect
from shared.service import service_runtime
from shared.topics import Topics

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
    ingestor: Ingestor, producer: EventProducer
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


def main() -> int:
    settings = IngestSettings()
    policy = Policy(
        width=settings.task.image_width,
        height=settings.task.image_height,
        resize=settings.resize,
        max_image_bytes=settings.max_image_bytes,
        camera_id_pattern=settings.camera_id_pattern,
        allowed_cameras=settings.allowed_cameras,
    )
    with service_runtime("ingest", settings) as rt:
        claims = RedisClaims(connect(settings.redis), "streamloop:ingest:frame")
        ingestor = Ingestor(policy, claims, dedupe_ttl_s=settings.dedupe_ttl_s)
        loop: ConsumerLoop[FrameRaw] = ConsumerLoop(
            settings.kafka,
            group_id=settings.group_id,
            topics=[Topics.FRAMES_RAW],
            event_type=FrameRaw,
            producer=rt.producer,
            batch_handler=make_handler(ingestor, rt.producer),
            tracer=rt.tracer,
            max_poll_records=settings.max_poll_records,
            client_id="ingest",
            **settings.fetch.consumer_kwargs(),
        )
        stop_on_signals(loop)
        loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
