"""Run the ingest service: ``streamloop serve ingest`` or ``python -m services.ingest``."""

from __future__ import annotations

import sys

from services.ingest.handler import make_handler
from services.ingest.logic import Ingestor, Policy, record_limit
from services.ingest.settings import IngestSettings
from shared.events import FrameRaw
from shared.redis_store import RedisClaims, connect
from shared.service import service_runtime
from shared.topics import FRAME_RECORD_MAX_BYTES, Topics


def main() -> int:
    settings = IngestSettings()
    policy = Policy(
        width=settings.task.image_width,
        height=settings.task.image_height,
        fit=settings.task.image_fit,
        max_image_bytes=settings.max_image_bytes,
        max_pixels=settings.max_pixels,
        camera_id_pattern=settings.camera_id_pattern,
        allowed_cameras=settings.allowed_cameras,
    )
    with service_runtime("ingest", settings) as rt:
        claims = RedisClaims(connect(settings.redis), "streamloop:ingest:frame")
        ingestor = Ingestor(policy, claims, dedupe_ttl_s=settings.dedupe_ttl_s)
        with rt.loop_producer(settings.group_id, settings.transactions) as producer:
            loop = rt.consumer_loop(
                [Topics.FRAMES_RAW],
                FrameRaw,
                group_id=settings.group_id,
                batch_handler=make_handler(ingestor, producer),
                producer=producer,
                max_poll_records=settings.max_poll_records,
                max_message_bytes=record_limit(settings.max_image_bytes),
                max_partition_fetch_bytes=FRAME_RECORD_MAX_BYTES,
                pacing=settings.fetch.pacing(),
                **settings.fetch.consumer_kwargs(),
            )
            rt.run(loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
