"""Run the Label Studio bridge: ``streamloop serve annotation`` or
``python -m services.annotation``."""

from __future__ import annotations

import logging
import sys
import threading
import uuid

from services.annotation.bridge import Bridge, BridgePolicy
from services.annotation.client import LabelStudioClient
from services.annotation.frames import FrameFollower, RecentFrames
from services.annotation.http import ImageSigner, serve_bridge
from services.annotation.settings import AnnotationSettings
from services.annotation.studio import WEBHOOK_ACTIONS, label_config, project_title
from shared.events import Label, LabelRequest
from shared.redis_store import RedisLeases, RedisValues, connect
from shared.service import service_runtime
from shared.topics import Topics

log = logging.getLogger("streamloop.annotation")
NAMESPACE = "streamloop:annotation"


def main() -> int:
    settings = AnnotationSettings()
    if settings.studio_token is None:
        sys.exit("STREAMLOOP_ANNOTATION_STUDIO_TOKEN is required (Label Studio's API token)")
    with service_runtime("annotation", settings) as rt:
        studio = LabelStudioClient(settings.studio_url, settings.studio_token)
        classes = tuple(settings.task.classes)
        project = studio.wait_for_project(project_title(settings.model_name), label_config(classes))
        redis = connect(settings.redis)
        follower = FrameFollower(
            settings.kafka, RecentFrames(settings.keep_frames), settings.keep_frames
        ).start()

        def publish(label: Label) -> None:
            rt.producer.publish(Topics.LABELS, label, key=label.frame_id).get(timeout=30)

        bridge = Bridge(
            BridgePolicy(
                project=project,
                classes=classes,
                image_url=ImageSigner(settings.public_url, settings.http_auth.read_token).url,
                owner=f"annotation-{uuid.uuid4().hex[:8]}",
                keep_s=settings.keep_days * 86_400,
            ),
            studio,
            follower,
            RedisLeases(redis, NAMESPACE),
            RedisValues(redis, NAMESPACE),
            publish,
        )
        http = serve_bridge(
            bridge, settings.http_auth, settings.public_url, settings.host, settings.port
        )
        if settings.webhook:
            hook = settings.webhook_url or settings.public_url.rstrip("/") + "/webhook"
            studio.ensure_webhook(project, hook, WEBHOOK_ACTIONS)
        stop = threading.Event()
        poller = threading.Thread(
            target=bridge.poll_every,
            args=(settings.poll_interval_s, stop),
            name="annotation-poll",
            daemon=True,
        )
        poller.start()
        threading.Thread(
            target=bridge.run_queue, args=(stop,), name="annotation-webhooks", daemon=True
        ).start()
        loop = rt.consumer_loop(
            [Topics.LABELS_REQUESTS],
            LabelRequest,
            group_id=settings.group_id,
            handler=bridge.ask_message,
        )
        log.info("annotation bridge ready", extra={"project": project, "url": http.url})
        try:
            rt.run(loop)
        finally:
            stop.set()
            http.close()
            follower.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
