"""Holding a retrain request's lease for as long as its run lasts.

A run renews its lease at every step boundary (an epoch, an export), and a daemon thread
renews it in between, every third of the lease. Without the thread, one step longer than the
lease (an epoch on a loaded machine, an export's compile) lets the lease lapse while the
process is alive and working, and the run is abandoned although nobody else took the key.
The thread stops renewing after ``max_hold_s``, so a run stuck in a live process cannot keep
the key forever: the consumer's poll interval has put the request back in the group by then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from shared.ports import Leases

__all__ = ["LeaseKeeper", "LeaseLostError"]

log = logging.getLogger("streamloop.training")


class LeaseLostError(RuntimeError):
    """The lease ran out during the run (another worker may have taken over): abandon it."""


class LeaseKeeper:
    """Renews ``key``'s lease for ``owner`` while the ``with`` block runs; ``check`` renews at
    once and raises LeaseLostError when the lease is gone."""

    def __init__(
        self,
        leases: Leases,
        key: str,
        owner: str,
        lease_s: int,
        *,
        max_hold_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._leases = leases
        self._key = key
        self._owner = owner
        self._lease_s = lease_s
        self._max_hold_s = max_hold_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self._started = clock()
        self._renewed = self._started

    def __enter__(self) -> LeaseKeeper:
        self._started = self._renewed = self._clock()
        self._thread = threading.Thread(target=self._run, name=f"lease-{self._key}", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def check(self, during: str) -> None:
        """Renew now; raise LeaseLostError (naming ``during``) when the lease is gone."""
        if self._lost is None:
            self._renew()
        if self._lost is not None:
            raise LeaseLostError(f"lost the lease on {self._key} {during}: {self._lost}")

    def _run(self) -> None:
        interval = max(self._lease_s / 3, 0.05)
        while not self._stop.wait(interval) and self._lost is None:
            if self._clock() - self._started > self._max_hold_s:
                self._lost = f"held for longer than {self._max_hold_s:.0f} s; no longer renewed"
                log.warning("lease not renewed", extra={"key": self._key, "why": self._lost})
                return
            self._renew()

    def _renew(self) -> None:
        with self._lock:
            try:
                held = self._leases.renew(self._key, self._owner, self._lease_s)
            # Whatever the store's client raises (this module loads no client): the lease may
            # still hold, so it counts as lost only once a whole lease has passed unrenewed.
            except Exception as exc:  # noqa: BLE001
                if self._clock() - self._renewed > self._lease_s:
                    self._lost = f"not renewed for {self._lease_s} s ({exc})"
                return
            if held:
                self._renewed = self._clock()
            else:
                self._lost = "another worker holds it or it ran out"
