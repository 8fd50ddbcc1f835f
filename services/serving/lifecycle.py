"""Serving's view of ``models.lifecycle``: every event from the first, fed to the ingress."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from services.serving.ingress import Ingress
from shared.events import DecodeError, ModelLifecycle, decode, utcnow
from shared.reader import TopicReader
from shared.settings import KafkaSettings
from shared.telemetry import extract_context
from shared.topics import Topics

__all__ = ["LifecycleFollower"]

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
        self.failed = False
        """True once ``run`` failed on the thread ``start`` gave it."""

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
        """Read the log to its end offsets, tell the ingress it is caught up, then follow
        until ``stop``; raises what reading the topic raises."""
        with TopicReader(self._settings, [Topics.MODELS_LIFECYCLE]) as reader:
            # Moves older than this follower are history replayed, not swaps to trace.
            started = utcnow()
            for rec in reader.until_end():
                self._feed(rec, since=started)
            self._ingress.caught_up()
            for rec in reader.follow(stop=self._stop):
                if rec is not None:
                    self._feed(rec, since=started)

    def _feed(self, rec: Any, *, since: datetime) -> None:
        if rec.value is None:
            return
        try:
            event = decode(rec.value, ModelLifecycle)
        except DecodeError:
            log.warning("unreadable lifecycle record", extra={"offset": rec.offset})
            return
        with self._swap_span(event, rec.headers, since=since):
            self._ingress.on_lifecycle(event)

    def start(self, on_failure: Callable[[], None]) -> threading.Thread:
        """Run on a daemon thread of its own; ``on_failure`` is called if it fails. Serving
        without its follower would keep an old model forever, silently: the caller stops
        instead, so the exit (and the restart by whoever supervises) says so."""

        def follow() -> None:
            try:
                self.run()
            except Exception:
                log.exception("lifecycle follower failed; stopping serving")
                self.failed = True
                on_failure()

        thread = threading.Thread(target=follow, name="lifecycle", daemon=True)
        thread.start()
        return thread
