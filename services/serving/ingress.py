"""The Kafka side of serving: batches of frames in, one prediction per frame out.

The consumer loop hands each polled batch to ``Ingress.handle``; the batch's offsets are
committed after its predictions are acknowledged (with transactions on, together with them
in one transaction), so a crash never loses a frame and, with transactions, never shows one
twice.

Model changes arrive on another thread through ``Ingress.on_lifecycle``; at start nothing is
served until the follower has read the log to its end (``caught_up``). A new champion is
verified (sha256, format, classes) before it is adopted; each batch reads the current pair
once at its start, so a swap happens between batches and every prediction names the version
that made it. A champion that fails verification is not adopted: the previous one keeps
serving and an alert says why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import numpy.typing as npt
from prometheus_client import Counter, Gauge, Histogram

from services.serving.core import (
    AliasTracker,
    ModelRef,
    ServingCore,
    WrongSizeError,
    frame_pixels,
    to_predictions,
)
from shared.artifacts import ArtifactError
from shared.events import Alert, FrameValid, ModelLifecycle
from shared.ports import Message, Publisher, Rejection, TracingPublisher
from shared.topics import Topics

__all__ = ["Backend", "Ingress"]

log = logging.getLogger("streamloop.serving")

FRAMES = Counter("streamloop_serving_predictions", "Predictions published, by stream.", ["stream"])
BATCH = Histogram(
    "streamloop_serving_batch_size",
    "Frames per model call.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
LATENCY = Histogram(
    "streamloop_serving_latency_seconds",
    "Capture to prediction, per frame.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CALL = Histogram(
    "streamloop_serving_model_call_seconds",
    "Wall time of one batch call to the model.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SHADOW_FAILURES = Counter(
    "streamloop_serving_shadow_failures", "Challenger calls that failed (the champion's went on)."
)
VERSION = Gauge(
    "streamloop_serving_model_info", "1 for the version serving each alias.", ["alias", "version"]
)


class Pending(Protocol):
    """A model call in flight."""

    def result(self) -> npt.NDArray[np.float32]: ...


class Backend(Protocol):
    """Where the model runs: the Ray Serve deployment or the core in this process.

    ``submit`` starts a call and returns at once (the Ray backend) or after computing (the
    local one); the ingress starts every call of a batch before it waits for any, so several
    calls (the batch's chunks, and the challenger's) run at the same time."""

    def submit(self, ref: ModelRef, pixels: npt.NDArray[np.uint8]) -> Pending: ...


def _set_version(alias: str, old: ModelRef | None, new: ModelRef | None) -> None:
    if old is not None:
        VERSION.labels(alias, old.version).set(0)
    if new is not None:
        VERSION.labels(alias, new.version).set(1)


class _Failed:
    """A call that failed before it started; ``result`` raises its error."""

    def __init__(self, error: Exception) -> None:
        self._error = error

    def result(self) -> npt.NDArray[np.float32]:
        raise self._error


class Ingress:
    """Serving's batch handler and model tracker (see the module docstring)."""

    def __init__(
        self,
        model_name: str,
        *,
        backend: Backend,
        verifier: ServingCore,
        producer: TracingPublisher,
        alerts: Publisher | None = None,
        call_size: int = 64,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_challenger: Callable[[tuple[ModelRef, tuple[str, ...]] | None, datetime], object]
        | None = None,
    ) -> None:
        self.model_name = model_name
        self._backend = backend
        self._verifier = verifier
        self._producer = producer
        """Predictions: the consumer loop's producer, used on its thread only."""
        self._alerts = alerts or producer
        """Alerts, from the lifecycle thread."""
        self._clock = clock
        self._call_size = call_size
        self._tracker = AliasTracker(model_name)
        self._lock = threading.Lock()
        self._champion: tuple[ModelRef, tuple[str, ...]] | None = None
        self._challenger: tuple[ModelRef, tuple[str, ...]] | None = None
        self._has_champion = threading.Event()
        self._caught_up = False
        self._on_challenger = on_challenger
        """Told (on the lifecycle thread) each change of challenger, with its classes, or
        None when there is none any more, and since when the champion serves: the shadow
        replay (``services.serving.replay``)."""
        self._champion_since = clock()
        """When this ingress adopted the champion it serves."""

    # -- models ------------------------------------------------------------------------

    def on_lifecycle(self, event: ModelLifecycle) -> None:
        """Follow ``models.lifecycle`` (in order, from the start). Before ``caught_up``
        the events only move the aliases: no version of the history is loaded or served."""
        if self._tracker.apply(event) and self._caught_up:
            self._adopt()

    def caught_up(self) -> None:
        """The log was read to the end offsets it had at start: adopt the champion (and
        challenger) it names now. Until then no frame is served, so none is ever answered
        by a version that was the champion once but is not any more."""
        self._caught_up = True
        self._adopt()
        if self.champion is None:
            log.info(
                "caught up with the registry; no champion yet", extra={"model": self.model_name}
            )

    def _adopt(self) -> None:
        champion = self._tracker.champion
        current = self.champion
        if champion is not None and champion != current:
            verified = self._verify(champion, "champion")
            if verified is not None:
                with self._lock:
                    self._champion = verified
                self._champion_since = self._clock()
                self._has_champion.set()
                _set_version("champion", current, champion)
                log.info("champion adopted", extra={"version": champion.version})
        challenger, current = self._tracker.challenger, self.challenger
        if challenger != current:
            verified = self._verify(challenger, "challenger") if challenger else None
            with self._lock:
                self._challenger = verified
            _set_version("challenger", current, verified[0] if verified else None)
            if verified is not None:
                log.info("challenger adopted", extra={"version": verified[0].version})
            elif challenger is None:
                log.info(
                    "challenger removed", extra={"version": current.version if current else None}
                )
            if self._on_challenger is not None:
                self._on_challenger(verified, self._champion_since)

    def _verify(self, ref: ModelRef, alias: str) -> tuple[ModelRef, tuple[str, ...]] | None:
        try:
            _, spec = self._verifier.model(ref)
        except ArtifactError as exc:
            keeping = self._champion[0].version if self._champion else None
            log.error(
                "model refused: not loaded",
                extra={"version": ref.version, "alias": alias, "error": str(exc)},
            )
            self._alerts.publish(
                Topics.ALERTS,
                Alert(
                    source="serving",
                    severity="critical",
                    kind="model_load_refused",
                    message=f"{alias} {ref.version} was not loaded: {exc}; "
                    + (f"{keeping} keeps serving" if keeping else "no model is serving"),
                    model_version=ref.version,
                    details={"alias": alias, "reason": exc.reason, "kept": keeping},
                ),
            )
            self._alerts.flush()
            return None
        return ref, spec.classes

    def wait_for_champion(self, timeout_s: float | None = None) -> bool:
        return self._has_champion.wait(timeout_s)

    @property
    def champion(self) -> ModelRef | None:
        with self._lock:
            return self._champion[0] if self._champion else None

    @property
    def challenger(self) -> ModelRef | None:
        with self._lock:
            return self._challenger[0] if self._challenger else None

    # -- frames ------------------------------------------------------------------------

    def handle(self, batch: list[Message[FrameValid]]) -> list[Rejection[FrameValid]]:
        """Predict and publish for one batch; returns the frames refused (wrong size)."""
        while not self._has_champion.wait(5.0):
            log.info("waiting for a champion before serving", extra={"model": self.model_name})
        with self._lock:
            champion, challenger = self._champion, self._challenger
        assert champion is not None
        rejected: list[Rejection[FrameValid]] = []
        by_shape: dict[tuple[int, int, int], list[Message[FrameValid]]] = {}
        for msg in batch:
            f = msg.event
            by_shape.setdefault((f.height, f.width, f.channels), []).append(msg)
        calls: list[
            tuple[list[Message[FrameValid]], tuple[ModelRef, tuple[str, ...]], bool, Pending, float]
        ] = []
        for msgs in by_shape.values():
            try:
                pixels = frame_pixels([m.event for m in msgs])
            except WrongSizeError as exc:
                rejected.extend(Rejection(m, "wrong_size", str(exc)) for m in msgs)
                continue
            for i in range(0, len(msgs), self._call_size):
                chunk, px = msgs[i : i + self._call_size], pixels[i : i + self._call_size]
                for model, shadow in ((champion, False), (challenger, True)):
                    if model is not None:
                        calls.append(
                            (
                                chunk,
                                model,
                                shadow,
                                self._submit(model[0], px),
                                time.perf_counter(),
                            )
                        )
        for chunk, model, shadow, pending, started in calls:
            try:
                probs = pending.result()
            except Exception as exc:
                if shadow:
                    # The challenger is on trial: whatever goes wrong with it must never
                    # hold up, repeat or dead-letter the champion's predictions.
                    SHADOW_FAILURES.inc()
                    log.warning(
                        "shadow prediction failed",
                        extra={
                            "version": model[0].version,
                            "error": f"{type(exc).__name__}: {exc}",
                        },
                    )
                    continue
                if isinstance(exc, WrongSizeError):
                    rejected.extend(Rejection(m, "wrong_size", str(exc)) for m in chunk)
                    continue
                raise
            CALL.observe(time.perf_counter() - started)
            self._publish(chunk, probs, model, shadow=shadow)
        return rejected

    def _submit(self, ref: ModelRef, pixels: npt.NDArray[np.uint8]) -> Pending:
        try:
            return self._backend.submit(ref, pixels)
        except WrongSizeError as exc:  # the local backend computes at once
            return _Failed(exc)

    def _publish(
        self,
        msgs: list[Message[FrameValid]],
        probs: npt.NDArray[np.float32],
        model: tuple[ModelRef, tuple[str, ...]],
        *,
        shadow: bool,
    ) -> None:
        ref, classes = model
        topic = Topics.PREDICTIONS_SHADOW if shadow else Topics.PREDICTIONS
        if not shadow:
            BATCH.observe(len(msgs))
        served_at = self._clock()
        frames = [m.event for m in msgs]
        for msg, pred in zip(
            msgs,
            to_predictions(frames, probs, classes, ref, served_at=served_at, shadow=shadow),
            strict=True,
        ):
            self._producer.publish(
                topic,
                pred,
                key=pred.camera_id,
                context=msg.trace_context(),
                attributes={"streamloop.frame_id": pred.frame_id},
            )
            if not shadow:
                LATENCY.observe(pred.latency_from_capture_ms / 1e3)
        FRAMES.labels("shadow" if shadow else "champion").inc(len(msgs))
