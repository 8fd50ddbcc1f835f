"""Each served version's temperature, for the calibrated confidence the estimate counts.

The evaluation gate fits a version's temperature and stores it in its evaluation
(``shared.calibration``); the registry's read model has it. ``Temperatures`` looks a version
up once and keeps the answer; a version the registry does not know yet, or whose evaluation
has no temperature (evaluated before calibration existed), is asked for again after
``retry_s`` and counts its raw confidence meanwhile. A registry that cannot be read is the
same as an unknown version: monitoring goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from shared.calibration import calibrated_confidence, temperature_of
from shared.events import Prediction
from shared.registry import RegistryReader, RegistryUnavailableError

__all__ = ["Temperatures", "calibrated_of"]

log = logging.getLogger("streamloop.monitoring")


def calibrated_of(prediction: Prediction, temperature: float) -> float:
    """The prediction's calibrated confidence. Probabilities that do not add up to 1 (a
    serving that sends only the top classes) get the rest as one more class."""
    probs = list(prediction.probabilities.values())
    rest = 1.0 - sum(probs)
    if rest > 1e-3:
        probs.append(rest)
    return calibrated_confidence(probs, temperature)


class Temperatures:
    """Version -> temperature, from the registry's read model (see the module docstring)."""

    def __init__(
        self,
        registry: RegistryReader | None,
        model_name: str,
        *,
        retry_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.model_name = model_name
        self.retry_s = retry_s
        self.clock = clock
        self._known: dict[str, float] = {}
        self._missed: dict[str, float] = {}

    def of(self, version: str) -> float | None:
        """The version's temperature, or None while it is not known."""
        if version in self._known:
            return self._known[version]
        if self.registry is None:
            return None
        now = self.clock()
        missed = self._missed.get(version)
        if missed is not None and now - missed < self.retry_s:
            return None
        try:
            view = self.registry.get_version(self.model_name, version)
        except RegistryUnavailableError as exc:
            log.warning("registry unreadable for a temperature", extra={"error": str(exc)})
            view = None
        t = temperature_of(view.evaluation.metrics) if view and view.evaluation else None
        if t is None:
            self._missed[version] = now
            return None
        self._missed.pop(version, None)
        self._known[version] = t
        log.info("temperature of version", extra={"version": version, "temperature": t})
        return t

    def calibrated(self, prediction: Prediction) -> float | None:
        """The prediction's calibrated confidence, or None while its temperature is unknown."""
        t = self.of(prediction.model_version)
        return calibrated_of(prediction, t) if t is not None else None
