"""How long the broker may hold a consumer loop's fetch: batching while records flow (on the
frame path), waiting at rest (every loop).

While records flow, a fetch asks the broker to gather ``min_bytes`` or wait ``max_wait_ms``
(``FetchSettings``): fewer, fuller batches. That wait is also how often a consumer with
nothing to read asks again: ten empty fetches a second at 100 ms, each answered by the
broker. After ``idle_after_s`` without a record the consumer asks for any record at all
(``min_bytes`` 1) and lets the broker hold the fetch ``idle_wait_ms``: the broker answers the
moment a record arrives, so the first frame after a quiet spell waits no longer than before,
and a consumer at rest asks ``idle_wait_ms / max_wait_ms`` times less often. The first batch
polled switches back.

Every ``ConsumerLoop`` waits at rest; a loop built without ``FetchPacing`` keeps the fetch
settings it was made with (kafka-python's: any record, 500 ms) while records flow, and
waits ``AT_REST_WAIT_MS`` after ``AT_REST_AFTER_S`` of quiet. At rest its thread also wakes
less often: a poll waits up to ``AT_REST_POLL_MS`` (it returns at the first record whatever
the wait), so an idle loop looks up five times less often than at its 200 ms.

kafka-python reads its fetcher's settings each time it builds a fetch request, so a change
applies from the next request; a client without them (another version) is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["AT_REST_AFTER_S", "AT_REST_POLL_MS", "AT_REST_WAIT_MS", "FetchPacing"]

AT_REST_AFTER_S = 5.0
"""Seconds without a record before a consumer waits at rest, unless told otherwise."""
AT_REST_WAIT_MS = 5_000
"""How long the broker holds an empty fetch at rest, unless told otherwise."""
AT_REST_POLL_MS = 1_000
"""How long a poll may wait at rest before the loop looks up (to stop, to check its
membership): how long ``stop()`` may take then."""


@dataclass
class FetchPacing:
    min_bytes: int
    max_wait_ms: int
    idle_after_s: float
    """Seconds without a record before the consumer waits at rest; 0 never."""
    idle_wait_ms: int
    idle: bool = field(default=False, init=False)
    _last: float | None = field(default=None, init=False)

    def observe(self, consumer: Any, records: int, now: float) -> None:
        """After each poll: ``records`` it returned, at ``now`` (monotonic seconds)."""
        if records or self._last is None:
            self._last = now
            if self.idle:
                self.idle = not _apply(consumer, self.min_bytes, self.max_wait_ms)
            return
        if self.idle or self.idle_after_s <= 0 or now - self._last < self.idle_after_s:
            return
        self.idle = _apply(consumer, 1, self.idle_wait_ms)

    def poll_timeout_ms(self, busy_ms: int) -> int:
        """How long the next poll may wait: ``busy_ms`` while records flow, at least
        ``AT_REST_POLL_MS`` at rest. A poll returns at its first record either way."""
        return max(busy_ms, AT_REST_POLL_MS) if self.idle else busy_ms

    def reset(self) -> None:
        """A new client: it starts with the busy settings it was made with."""
        self.idle, self._last = False, None


def _apply(consumer: Any, min_bytes: int, max_wait_ms: int) -> bool:
    """Set the fetch settings of ``consumer``'s fetcher; False when it has none."""
    config = getattr(getattr(consumer, "_fetcher", None), "config", None)
    if not isinstance(config, dict) or "fetch_max_wait_ms" not in config:
        return False
    config["fetch_min_bytes"] = min_bytes
    config["fetch_max_wait_ms"] = max_wait_ms
    return True
