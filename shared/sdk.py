"""The publishing SDK: put frames and labels on StreamLoop's topics from Python.

    from shared.sdk import FramePublisher, LabelPublisher

    with FramePublisher(camera_id="cam-7") as frames:
        frame_id = frames.publish("crop.png")  # a file, bytes, an array or a PIL image
    with LabelPublisher() as labels:
        labels.publish(frame_id, "truck")

Publishing is asynchronous; ``flush()`` (and leaving the ``with`` block) waits until Kafka
has acknowledged everything. Settings come from ``STREAMLOOP_KAFKA_*`` unless given.
"""

from __future__ import annotations

import base64
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import numpy as np
from kafka.producer.future import FutureRecordMetadata
from opentelemetry import trace
from PIL import Image

from shared.bus import EventProducer
from shared.events import FrameRaw, Label, new_id, utcnow
from shared.images import encode_image, sniff_content_type, to_rgb_array
from shared.settings import KafkaSettings
from shared.topics import Topics

__all__ = ["FramePublisher", "ImageInput", "LabelPublisher"]

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
    ) -> None:
        self._own = producer is None
        self._producer = producer or EventProducer(
            settings or KafkaSettings(), client_id=client_id, tracer=tracer
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
    ) -> None:
        """``camera_id`` is the default camera of ``publish``; ``content_type`` is how arrays
        and PIL images are encoded."""
        super().__init__(settings, producer, "streamloop-frame-publisher", tracer)
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
    ) -> str:
        """Publish the class of ``frame_id``; returns the label event's id. A later label for
        the same frame replaces this one."""
        event = Label(
            frame_id=frame_id,
            label=label,
            camera_id=camera_id,
            annotator=annotator or self.annotator,
            source=annotator or self.annotator,
        )
        self._producer.publish(
            Topics.LABELS, event, key=frame_id, attributes={"streamloop.frame_id": frame_id}
        )
        return event.event_id
