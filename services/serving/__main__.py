"""Run the serving service: ``streamloop serve serving`` or ``python -m services.serving``.

Ray Serve (started, or joined with ``RAY_ADDRESS``), the lifecycle follower, the ingress."""

from __future__ import annotations

import sys

from services.serving.backends import close_backend, open_backend
from services.serving.core import ServingCore
from services.serving.ingress import Ingress
from services.serving.lifecycle import LifecycleFollower
from services.serving.replay import KafkaFrameHistory, ShadowReplay
from services.serving.settings import ServingSettings
from shared.artifacts import ArtifactStore
from shared.events import FrameValid
from shared.service import service_runtime
from shared.topics import Topics


def main() -> int:
    settings = ServingSettings()
    with service_runtime("serving", settings) as rt:
        import torch

        torch.set_num_threads(settings.torch_threads)
        store, threads = ArtifactStore(settings.artifacts.root), settings.torch_threads
        verifier = ServingCore(store, runtime=settings.runtime, threads=threads)
        with rt.loop_producer(settings.group_id, settings.transactions) as producer:
            backend = open_backend(settings, verifier)
            replay = ShadowReplay(
                KafkaFrameHistory(settings.kafka),
                verifier,
                rt.producer,
                max_age_s=settings.shadow_replay_s,
                call_size=settings.call_size,
            )
            ingress = Ingress(
                settings.model_name,
                backend=backend,
                verifier=verifier,
                producer=producer,
                alerts=rt.producer,
                call_size=settings.call_size,
                on_challenger=replay.follow,
            )
            loop = rt.consumer_loop(
                [Topics.FRAMES_VALID],
                FrameValid,
                group_id=settings.group_id,
                batch_handler=ingress.handle,
                producer=producer,
                max_poll_records=settings.max_poll_records,
                # Before the first champion, a batch waits inside the handler; stay in the group.
                max_poll_interval_ms=3_600_000,
                pacing=settings.fetch.pacing(),
                **settings.fetch.consumer_kwargs(),
            )
            follower = LifecycleFollower(settings.kafka, ingress, rt.tracer)
            follower.start(on_failure=loop.stop)
            try:
                rt.run(loop, follower)
            finally:
                follower.stop()
                replay.stop()
                close_backend(backend)
    return 1 if follower.failed else 0


if __name__ == "__main__":
    sys.exit(main())
