"""The publishing SDK: put frames and labels on StreamLoop's topics from Python.

    from shared.sdk import FramePublisher, LabelPublisher

    with FramePublisher(camera_id="cam-7") as frames:
        frame_id = frames.publish("crop.png")  # a file, bytes, an array or a PIL image
    with LabelPublisher() as labels:
        labels.publish(frame_id, "truck")

Publishing is asynchronous; ``flush()`` (and leaving the ``with`` block) waits until Kafka
has acknowledged everything. Settings come from ``STREAMLOOP_KAFKA_*`` unless given.

Reading the model's answers back is ``PredictionSubscriber``:

    from shared.sdk import PredictionSubscriber

    with PredictionSubscriber(cameras=["cam-7"], group_id="my-dashboard") as predictions:
        for p in predictions:
            print(p.frame_id, p.predicted_class, f"{p.confidence:.0%}")
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata
from opentelemetry import trace
from PIL import Image

from shared.bus import EventProducer
from shared.errors import poll_through_outage
from shared.events import DecodeError, FrameRaw, Label, Prediction, decode, new_id, utcnow
from shared.images import encode_image, sniff_content_type, to_rgb_array
from shared.reader import offsets_at
from shared.settings import KafkaSettings
from shared.topics import Topics

__all__ = [
    "FramePublisher",
    "ImageInput",
    "LabelPublisher",
    "PredictionFilter",
    "PredictionSubscriber",
]

log = logging.getLogger(__name__)

ImageInput = bytes | str | Path | np.ndarray | Image.Image
"""What ``FramePublisher.publish`` takes: encoded PNG/JPEG bytes, a path to an image file (any
format Pillow reads; others than PNG/JPEG are re-encoded as PNG), an ``H x W x 3`` array, or a
PIL image."""


class _Publisher:
    def __init__(
        self,
        settings: KafkaSettings | None,
        producer: EventProducer | None,
        client_id: str,
        tracer: trace.Tracer | None,
        **producer_overrides: Any,
    ) -> None:
        self._own = producer is None
        self._producer = producer or EventProducer(
            settings or KafkaSettings(), client_id=client_id, tracer=tracer, **producer_overrides
        )

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until Kafka acknowledged every record published so far (or raise)."""
        self._producer.flush(timeout_s)

    def close(self) -> None:
        """Flush and close (the producer, when this publisher created it)."""
        self.flush()
        if self._own:
            self._producer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def encode_for_wire(
    image: ImageInput, content_type: Literal["image/png", "image/jpeg"] = "image/png"
) -> tuple[bytes, Literal["image/png", "image/jpeg"]]:
    """The encoded bytes and content type ``image`` is sent as. Raises ValueError for bytes
    that are neither PNG nor JPEG, and for arrays of a shape that is not an image."""
    if isinstance(image, bytes):
        sniffed = sniff_content_type(image)
        if sniffed is None:
            raise ValueError("bytes are neither PNG nor JPEG")
        return image, sniffed
    if isinstance(image, str | Path):
        data = Path(image).read_bytes()
        sniffed = sniff_content_type(data)
        if sniffed is not None:
            return data, sniffed
        with Image.open(Path(image)) as img:
            return encode_image(to_rgb_array(img), content_type), content_type
    return encode_image(to_rgb_array(image), content_type), content_type


FRAME_LINGER_MS = 20
"""How long a camera's frame waits for others to share its request to Kafka (the bus's
default is 5 ms): at a paced 245 frames/s the broker and the publisher spent a third to a
half less CPU a frame with 20 ms (``python -m tests.bench.bench_publisher``, docs/benchmarks.md)."""


class FramePublisher(_Publisher):
    """Publishes camera frames to ``frames.raw`` (see the README for the wire format)."""

    def __init__(
        self,
        settings: KafkaSettings | None = None,
        *,
        camera_id: str | None = None,
        content_type: Literal["image/png", "image/jpeg"] = "image/png",
        source: str = "sdk",
        producer: EventProducer | None = None,
        tracer: trace.Tracer | None = None,
        linger_ms: int = FRAME_LINGER_MS,
    ) -> None:
        """``camera_id`` is the default camera of ``publish``; ``content_type`` is how arrays
        and PIL images are encoded; ``linger_ms`` is how long a frame waits for others to
        share its request to Kafka (the publisher's own producer only)."""
        super().__init__(
            settings, producer, "streamloop-frame-publisher", tracer, linger_ms=linger_ms
        )
        self.camera_id = camera_id
        self.content_type = content_type
        self.source = source
        self.last_future: FutureRecordMetadata | None = None

    def publish(
        self,
        image: ImageInput,
        *,
        camera_id: str | None = None,
        frame_id: str | None = None,
        captured_at: datetime | None = None,
        condition: str | None = None,
        attributes: dict[str, str] | None = None,
    ) -> str:
        """Publish one frame; returns its ``frame_id`` (a fresh one unless given).

        Raises ValueError when no camera id is known or the image cannot be encoded.
        """
        camera = camera_id or self.camera_id
        if not camera:
            raise ValueError("camera_id is required (here or in the constructor)")
        data, content_type = encode_for_wire(image, self.content_type)
        frame = FrameRaw(
            frame_id=frame_id or new_id(),
            camera_id=camera,
            captured_at=captured_at or utcnow(),
            content_type=content_type,
            image_b64=base64.b64encode(data).decode(),
            condition=condition,
            attributes=attributes or {},
            source=self.source,
        )
        self.last_future = self._producer.publish(
            Topics.FRAMES_RAW,
            frame,
            key=camera,
            attributes={"streamloop.frame_id": frame.frame_id},
        )
        return frame.frame_id


class LabelPublisher(_Publisher):
    """Publishes ground truth to ``labels`` (keyed by frame_id)."""

    def __init__(
        self,
        settings: KafkaSettings | None = None,
        *,
        annotator: str = "sdk",
        producer: EventProducer | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        super().__init__(settings, producer, "streamloop-label-publisher", tracer)
        self.annotator = annotator

    def publish(
        self,
        frame_id: str,
        label: str,
        *,
        camera_id: str | None = None,
        annotator: str | None = None,
        requested: bool = False,
    ) -> str:
        """Publish the class of ``frame_id``; returns the label event's id. A later label for
        the same frame replaces this one. ``requested``: the label answers a label request
        (``Label.requested``)."""
        event = Label(
            frame_id=frame_id,
            label=label,
            camera_id=camera_id,
            annotator=annotator or self.annotator,
            requested=requested,
            source=annotator or self.annotator,
        )
        self._producer.publish(
            Topics.LABELS, event, key=frame_id, attributes={"streamloop.frame_id": frame_id}
        )
        return event.event_id


# --- reading predictions ----------------------------------------------------------------


class PredictionFilter:
    """Turns record values into ``Prediction`` events: ``None`` for a value that is not a
    prediction (counted in ``skipped``) and for a prediction of a camera not in ``cameras``
    (None: every camera)."""

    def __init__(self, cameras: Iterable[str] | None = None) -> None:
        if isinstance(cameras, str):
            cameras = [cameras]
        self.cameras = frozenset(cameras) if cameras is not None else None
        self.skipped = 0

    def __call__(self, value: bytes | None) -> Prediction | None:
        try:
            prediction = decode(value, Prediction)
        except DecodeError:
            self.skipped += 1
            return None
        if self.cameras is not None and prediction.camera_id not in self.cameras:
            return None
        return prediction


class _SeekOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    # Called inside poll() (the buffer is empty then) and close().
    def __init__(self, subscriber: PredictionSubscriber) -> None:
        self._subscriber = subscriber

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._subscriber._assigned(assigned)

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass  # what was consumed is committed before each poll; the rest is redelivered


class PredictionSubscriber:
    """Reads ``predictions`` (or ``predictions.shadow``) as ``Prediction`` events.

        from shared.sdk import PredictionSubscriber

        with PredictionSubscriber(cameras=["cam-7"], group_id="my-dashboard") as predictions:
            for p in predictions:
                print(p.camera_id, p.frame_id, p.predicted_class, f"{p.confidence:.0%}")

    Inside asyncio, ``async for`` polls in a worker thread, so the event loop keeps running:

        async with PredictionSubscriber(from_beginning=True, idle_timeout_s=5) as predictions:
            async for p in predictions:
                await handle(p)

    Where reading starts: ``from_offsets`` (partition -> offset) or ``from_time`` (per
    partition, the first record at or after that time; a naive time is UTC) seek there.
    Otherwise a group resumes from its committed position; without a group, or before the
    group's first commit, reading starts at the end of the topic, or at its beginning with
    ``from_beginning=True``.

    ``group_id``: the subscriber joins that consumer group (use a name of your own, never a
    service's; subscribers sharing one split the partitions between them) and commits what
    it consumed each time it polls for more and on ``close()``. A prediction counts as
    consumed once the next one is asked for, or when the ``with`` block is left without an
    exception, so one whose handling failed is delivered again: at-least-once. Without a
    group nothing is committed, and the partitions are those the topic had at the start.

    Records that are not a valid prediction are skipped and counted in ``skipped``. While
    no broker answers, iteration waits (a warning a second in the log) and goes on once
    one does; ``idle_timeout_s`` still counts. Iteration stops after ``max_records``
    predictions, or once the next one has been waited for ``idle_timeout_s`` seconds;
    otherwise it runs until the loop is left.
    """

    def __init__(
        self,
        settings: KafkaSettings | None = None,
        *,
        shadow: bool = False,
        group_id: str | None = None,
        cameras: Iterable[str] | None = None,
        from_time: datetime | None = None,
        from_offsets: dict[int, int] | None = None,
        from_beginning: bool = False,
        max_records: int | None = None,
        idle_timeout_s: float | None = None,
        poll_timeout_s: float = 0.5,
    ) -> None:
        if (from_time is not None) + (from_offsets is not None) + from_beginning > 1:
            raise ValueError("give at most one of from_time, from_offsets and from_beginning")
        if idle_timeout_s is not None and idle_timeout_s <= 0:
            raise ValueError("idle_timeout_s must be positive")
        settings = settings or KafkaSettings()
        self.topic = settings.topic_prefix + (
            Topics.PREDICTIONS_SHADOW if shadow else Topics.PREDICTIONS
        )
        self.group_id = group_id
        self.max_records = max_records
        self.idle_timeout_s = idle_timeout_s
        self.poll_timeout_s = poll_timeout_s
        self.delivered = 0
        """Predictions handed out so far."""
        self._filter = PredictionFilter(cameras)
        self._buffer: deque[Any] = deque()  # polled records not handed out yet
        self._in_hand: Any = None  # the record of the prediction last handed out
        self._consumed: dict[TopicPartition, int] = {}  # next offset, not committed yet
        self._seeked: set[TopicPartition] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._consumer = KafkaConsumer(
            group_id=group_id,
            client_id="streamloop-prediction-subscriber",
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest" if from_beginning else "latest",
            **settings.client_kwargs(),
        )
        try:
            self._start = self._start_offsets(from_time, from_offsets)
            if group_id is None:
                self._consumer.assign(self._partitions())
                self._assigned(self._consumer.assignment())
                for tp in self._consumer.assignment():
                    self._consumer.position(tp)  # "the end" is the end now, not at first poll
            else:
                self._consumer.subscribe([self.topic], listener=_SeekOnAssign(self))
        except BaseException:
            self._consumer.close(autocommit=False)
            raise

    @property
    def cameras(self) -> frozenset[str] | None:
        """The cameras whose predictions are delivered (None: all)."""
        return self._filter.cameras

    @property
    def skipped(self) -> int:
        """Records skipped because they were not a valid prediction."""
        return self._filter.skipped

    # -- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Prediction]:
        while (prediction := self._next()) is not None:
            yield prediction

    async def __aiter__(self) -> AsyncIterator[Prediction]:
        while (prediction := await asyncio.to_thread(self._next)) is not None:
            yield prediction

    def _next(self) -> Prediction | None:
        """The next prediction, polling as long as needed; None when iteration stops."""
        with self._lock:
            if self._in_hand is not None:
                self._done(self._in_hand)
            if self._closed or (
                self.max_records is not None and self.delivered >= self.max_records
            ):
                return None
            waiting_since = time.monotonic()
            while True:
                while self._buffer:
                    rec = self._buffer.popleft()
                    prediction = self._filter(rec.value)
                    if prediction is None:
                        self._done(rec)
                        continue
                    self._in_hand = rec
                    self.delivered += 1
                    return prediction
                if (
                    self.idle_timeout_s is not None
                    and time.monotonic() - waiting_since >= self.idle_timeout_s
                ):
                    return None
                self._commit()
                polled = poll_through_outage(
                    self._consumer,
                    timeout_ms=int(self.poll_timeout_s * 1000),
                    pause=time.sleep,
                    who=self.topic,
                )
                self._buffer.extend(rec for batch in polled.values() for rec in batch)

    def _done(self, rec: Any) -> None:
        self._consumed[TopicPartition(rec.topic, rec.partition)] = rec.offset + 1
        if rec is self._in_hand:
            self._in_hand = None

    # -- commits -----------------------------------------------------------------------------

    def commit(self) -> None:
        """Commit the position after every consumed prediction (and every record skipped or
        filtered out before it). Nothing to do without a group."""
        with self._lock:
            self._commit()

    def _commit(self) -> None:
        if self.group_id is None or not self._consumed:
            return
        owned = self._consumer.assignment()  # never move back a partition given away
        offsets = {
            tp: OffsetAndMetadata(offset, "", -1)
            for tp, offset in self._consumed.items()
            if tp in owned
        }
        self._consumed.clear()
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except CommitFailedError:
            # The group rebalanced; the partitions' new owner reads them from the last commit.
            log.warning("commit failed after a rebalance", extra={"group": self.group_id})

    # -- where to start ----------------------------------------------------------------------

    def _partitions(self) -> list[TopicPartition]:
        partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise LookupError(f"topic {self.topic} does not exist")
        return [TopicPartition(self.topic, p) for p in sorted(partitions)]

    def _start_offsets(
        self, from_time: datetime | None, from_offsets: dict[int, int] | None
    ) -> dict[TopicPartition, int]:
        if from_offsets is not None:
            return {TopicPartition(self.topic, p): o for p, o in from_offsets.items()}
        if from_time is None:
            return {}
        return offsets_at(self._consumer, self._partitions(), from_time)

    def _assigned(self, assigned: Iterable[TopicPartition]) -> None:
        # Runs inside poll for a group: seek only (no I/O), and only on a first assignment,
        # so that a partition that comes back after a rebalance resumes from its commit.
        for tp in assigned:
            if tp in self._start and tp not in self._seeked:
                self._consumer.seek(tp, self._start[tp])
            self._seeked.add(tp)

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what was consumed (with a group) and close the consumer. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._commit()
            finally:
                self._consumer.close(autocommit=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and self._in_hand is not None:
            self._done(self._in_hand)
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and self._in_hand is not None:
            self._done(self._in_hand)
        await asyncio.to_thread(self.close)
