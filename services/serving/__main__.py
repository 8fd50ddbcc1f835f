"""Run the serving service: ``streamloop serve serving`` or ``python -m services.serving``.

Starts (or joins, with ``RAY_ADDRESS``) Ray and the Ray Serve application, follows
``models.lifecycle`` from its start on a thread of its own, and runs the Kafka ingress.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from services.serving.core import ServingCore
from services.serving.ingress import Backend, Ingress
from services.serving.settings import ServingSettings
from shared.artifacts import ArtifactStore
from shared.bus import ConsumerLoop, stop_on_signals
from shared.events import DecodeError, FrameValid, ModelLifecycle, decode, utcnow
from shared.service import service_runtime
from shared.settings import KafkaSettings
from shared.telemetry import extract_context
from shared.topics import Topics

log = logging.getLogger("streamloop.serving")


class LifecycleFollower:
    """Feeds every ``models.lifecycle`` event, from the first, to ``ingress.on_lifecycle``."""

    def __init__(
        self, settings: KafkaSettings, ingress: Ingress, tracer: trace.Tracer | None = None
    ) -> None:
        self._settings = settings
        self._ingress = ingress
        self._tracer = tracer or trace.get_tracer("streamloop.serving")
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def _swap_span(
        self, event: ModelLifecycle, headers: Any, *, since: datetime
    ) -> AbstractContextManager[object]:
        """An alias move newer than this follower continues the trace that caused it (a
        retrain request through training, evaluation and the registry); anything else, and
        the history replayed at start, is followed without a span."""
        if event.action not in ("alias_set", "rolled_back") or event.produced_at < since:
            return nullcontext()
        return self._tracer.start_as_current_span(
            "serving model swap",
            context=extract_context(headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.message.id": event.event_id,
                "streamloop.alias": event.alias or "",
                "streamloop.model_version": event.model_version or "",
            },
        )

    def run(self) -> None:
        name = self._settings.topic_prefix + Topics.MODELS_LIFECYCLE
        consumer = KafkaConsumer(
            enable_auto_commit=False, group_id=None, **self._settings.client_kwargs()
        )
        try:
            tps = [
                TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())
            ]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            # Moves older than this follower are history replayed, not swaps to trace.
            started = utcnow()
            while not self._stop.is_set():
                for batch in consumer.poll(timeout_ms=500).values():
                    for rec in batch:
                        if rec.value is None:
                            continue
                        try:
                            event = decode(rec.value, ModelLifecycle)
                        except DecodeError:
                            log.warning("unreadable lifecycle record", extra={"offset": rec.offset})
                            continue
                        with self._swap_span(event, rec.headers, since=started):
                            self._ingress.on_lifecycle(event)
        finally:
            consumer.close()


def _ray_backend(settings: ServingSettings) -> Backend:
    import ray
    from ray import serve

    from services.serving.ray_app import APP_NAME, RayBackend, build_app

    # On a busy machine a fresh proxy takes longer than Serve's 5 s readiness check to import
    # its web stack; three failed checks get it killed and ``serve.start`` raises. A longer
    # check (inherited by a local Ray's processes) and a retry below ride that out.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    ray.init(
        address=settings.ray_address or None,
        object_store_memory=None if settings.ray_address else settings.object_store_mb * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
    )
    for attempt in range(1, 4):
        try:
            serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
            break
        except (ray.exceptions.RayError, TimeoutError) as exc:
            # The controller stays up and starts another proxy; connecting again finds it.
            if attempt == 3:
                raise
            log.warning(
                "ray serve proxy not ready; connecting again",
                extra={"attempt": attempt, "error": str(exc).splitlines()[0]},
            )
            time.sleep(2.0 * attempt)
    handle = serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    log.info(
        "ray serve application running",
        extra={"url": f"http://{settings.http_host}:{settings.http_port}/predict"},
    )
    return RayBackend(handle, settings.call_timeout_s)


def main() -> int:
    settings = ServingSettings()
    with service_runtime("serving", settings) as rt:
        import torch

        torch.set_num_threads(settings.torch_threads)
        verifier = ServingCore(
            ArtifactStore(settings.artifacts.root),
            runtime=settings.runtime,
            threads=settings.torch_threads,
        )
        backend: Backend = verifier if settings.backend == "local" else _ray_backend(settings)
        ingress = Ingress(
            settings.model_name,
            backend=backend,
            verifier=verifier,
            producer=rt.producer,
            call_size=settings.call_size,
        )
        follower = LifecycleFollower(settings.kafka, ingress, rt.tracer)
        loop: ConsumerLoop[FrameValid] = ConsumerLoop(
            settings.kafka,
            group_id=settings.group_id,
            topics=[Topics.FRAMES_VALID],
            event_type=FrameValid,
            producer=rt.producer,
            batch_handler=ingress.handle,
            tracer=rt.tracer,
            max_poll_records=settings.max_poll_records,
            client_id="serving",
            # Before the first champion, a batch waits inside the handler; stay in the group.
            max_poll_interval_ms=3_600_000,
            **settings.fetch.consumer_kwargs(),
        )
        stop_on_signals(loop, follower)
        failed = threading.Event()

        def follow() -> None:
            # Serving without its follower would keep an old model forever, silently: stop
            # instead, so the exit (and the restart by whoever supervises) says so.
            try:
                follower.run()
            except Exception:
                log.exception("lifecycle follower failed; stopping serving")
                failed.set()
                loop.stop()

        threading.Thread(target=follow, name="lifecycle", daemon=True).start()
        try:
            loop.run()
        finally:
            follower.stop()
            # A local Ray is this process's own; on a shared cluster other ingress processes
            # still call the deployment, so it stays.
            if settings.backend == "ray" and not settings.ray_address:
                from ray import serve

                serve.shutdown()  # type: ignore[no-untyped-call]
    return 1 if failed.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
