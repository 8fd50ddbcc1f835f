"""The first model: a training requested by the service itself while there is no champion."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from services.training.settings import TrainingSettings
from shared.events import RetrainRequest
from shared.ports import Publisher, RegistryReader
from shared.topics import Topics

__all__ = ["Bootstrapper"]

log = logging.getLogger("streamloop.training")


class Bootstrapper:
    """Until the registry has a champion, asks for a training once enough examples exist,
    one check after the count first reaches the minimum unless it has stopped growing (so a
    labelled set being published trains as a whole). Below the minimum, once the count stops
    growing, it says so once.

    The request's key is ``bootstrap:<model>:<versions registered>``: one request per state of
    the registry, so a rejected first model leads to a new attempt, never to a storm. A
    version still waiting for its verdict, or blessed and about to be crowned, is the answer
    to the last request: no new one is sent meanwhile."""

    def __init__(
        self,
        settings: TrainingSettings,
        registry: RegistryReader,
        publisher: Publisher,
        count_examples: Callable[[], int],
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._publisher = publisher
        self._count = count_examples
        self._stop = threading.Event()
        self._sent: set[str] = set()
        self._last_count: int | None = None
        self._told_waiting = False

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> str | None:
        """One check; returns the idempotency key of the request it sent, if any."""
        s = self._settings
        view = self._registry.view(s.model_name)
        if view.champion() is not None or any(v.status != "rejected" for v in view.versions):
            return None
        key = f"bootstrap:{s.model_name}:{len(view.versions)}"
        if key in self._sent:
            return None
        count, previous = self._count(), self._last_count
        self._last_count = count
        if count < s.bootstrap_min_examples:
            if count and count == previous and not self._told_waiting:
                self._told_waiting = True
                log.warning(
                    "no first model yet: the bootstrap waits for more examples; "
                    "`streamloop retrain` trains on those present now",
                    extra={"examples": count, "bootstrap_min_examples": s.bootstrap_min_examples},
                )
            return None
        if count != previous and (previous is None or previous < s.bootstrap_min_examples):
            # Just over the bar and still arriving (a directory being published): give it
            # one interval to land, so the first model trains on all of it, not on the
            # first examples over the bar. A live stream never stops growing: it waits no
            # longer than that one interval.
            return None
        self._publisher.publish(
            Topics.RETRAIN_REQUESTS,
            RetrainRequest(
                source="training",
                model_name=s.model_name,
                idempotency_key=key,
                reason=f"no champion yet and {count} examples available",
                trigger="bootstrap",
            ),
            key=s.model_name,
        )
        self._publisher.flush()
        self._sent.add(key)
        log.info("bootstrap retrain requested", extra={"key": key, "examples": count})
        return key

    def start(self) -> threading.Thread:
        """``run`` on a daemon thread of its own."""
        thread = threading.Thread(target=self.run, name="bootstrap", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        """Check every ``bootstrap_interval_s`` until ``stop``; a failed check (a dependency
        away) is logged and tried again at the next interval."""
        while not self._stop.wait(self._settings.bootstrap_interval_s):
            try:
                self.check()
            except Exception:
                log.warning("bootstrap check failed; will retry", exc_info=True)
