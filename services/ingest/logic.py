"""Ingest's logic: validate, normalise and deduplicate a batch of raw frames.

No Kafka or Redis here: duplicates are detected through the ``Claims`` port.

Duplicate detection. Each valid frame claims its ``frame_id`` with the value
``<sha256 of the image>|<topic>:<partition>:<offset>``:

- key free: the frame is new;
- same source position: the same record delivered again after a crash before the commit, so
  it is published again (at-least-once: nothing valid is lost);
- same image, another position: a duplicate publish; it is dropped and counted;
- another image under a frame_id already used: refused to the DLQ (``duplicate_frame_id``),
  because silently dropping either image would lose data.

When the claims store is unreachable, frames pass without the check (and the outcome says
so): duplicates may then reach ``frames.valid``, valid frames are never held back.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from shared.events import FrameRaw, FrameValid, utcnow
from shared.fitting import DEFAULT_FIT, FitPolicy
from shared.images import DEFAULT_MAX_PIXELS, ImageError, b64decode_strict, read_image
from shared.ports import Claims, ClaimsUnavailableError, Message, Rejection

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "IngestOutcome",
    "Ingestor",
    "Policy",
    "Refused",
    "record_limit",
    "validate",
]

SOURCE = "ingest"

DEFAULT_MAX_IMAGE_BYTES = 8_000_000
"""Largest encoded image accepted by default: room for a 12-megapixel (4000x3000) camera JPEG."""


class Refused(ValueError):
    """A frame ingest will not accept; ``reason`` is the DLQ reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Policy:
    """What a valid frame is, and how it is brought to the model's input.

    ``width`` x ``height`` is the model's input; an image of another size is fitted by
    ``fit`` (``shared.fitting``). An image over ``max_image_bytes`` encoded bytes or
    ``max_pixels`` pixels is refused before it is decoded."""

    width: int = 64
    height: int = 64
    fit: FitPolicy = DEFAULT_FIT
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    camera_id_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
    allowed_cameras: frozenset[str] = frozenset()
    _camera_re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_camera_re", re.compile(self.camera_id_pattern))

    def check_camera(self, camera_id: str) -> None:
        if not self._camera_re.fullmatch(camera_id):
            raise Refused(
                "bad_camera_id",
                f"camera_id {camera_id[:80]!r} does not match {self.camera_id_pattern}",
            )
        if self.allowed_cameras and camera_id not in self.allowed_cameras:
            raise Refused("unknown_camera", f"camera_id {camera_id!r} is not an allowed camera")


def record_limit(max_image_bytes: int) -> int:
    """Largest ``frames.raw`` record that can hold an image of ``max_image_bytes``: base64
    grows it by 4/3, and the JSON envelope and attributes get 64 KiB."""
    return (max_image_bytes * 4) // 3 + 4 + 64 * 1024


def validate(frame: FrameRaw, policy: Policy, now: datetime | None = None) -> FrameValid:
    """The normalised ``FrameValid`` of ``frame``, or ``Refused`` with the reason.

    The pixels are the image fitted to the policy's size; ``source_width`` and
    ``source_height`` keep the size it was published at."""
    policy.check_camera(frame.camera_id)
    # base64 grows data by 4/3: refuse an oversized image before decoding it.
    if len(frame.image_b64) > (policy.max_image_bytes * 4) // 3 + 4:
        raise Refused(
            "too_large",
            f"image_b64 of {len(frame.image_b64)} characters exceeds an image of "
            f"{policy.max_image_bytes} bytes",
        )
    try:
        data = b64decode_strict(frame.image_b64)
        image = read_image(
            data,
            content_type=frame.content_type,
            max_bytes=policy.max_image_bytes,
            max_pixels=policy.max_pixels,
            size=(policy.width, policy.height),
            fit=policy.fit,
        )
    except ImageError as exc:
        raise Refused(exc.reason, exc.message) from None
    pixels = image.pixels
    height, width, channels = pixels.shape
    return FrameValid(
        frame_id=frame.frame_id,
        camera_id=frame.camera_id,
        captured_at=frame.captured_at,
        ingested_at=now or utcnow(),
        width=width,
        height=height,
        channels=channels,
        pixels=np.ascontiguousarray(pixels, dtype=np.uint8).tobytes(),
        content_sha256=hashlib.sha256(data).hexdigest(),
        condition=frame.condition,
        attributes=frame.attributes,
        source_width=image.source_width,
        source_height=image.source_height,
        source=SOURCE,
    )


@dataclass
class IngestOutcome:
    """What became of one batch."""

    valid: list[tuple[Message[FrameRaw], FrameValid]] = field(default_factory=list)
    rejections: list[Rejection[FrameRaw]] = field(default_factory=list)
    duplicates: list[Message[FrameRaw]] = field(default_factory=list)
    redelivered: int = 0
    dedupe_skipped: bool = False
    """True when the claims store was unreachable and duplicates were not checked."""


class Ingestor:
    """Turns batches of raw frames into an ``IngestOutcome``."""

    def __init__(
        self,
        policy: Policy,
        claims: Claims,
        *,
        dedupe_ttl_s: int = 86_400,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._policy = policy
        self._claims = claims
        self._ttl = dedupe_ttl_s
        self._clock = clock

    def process(self, batch: list[Message[FrameRaw]]) -> IngestOutcome:
        out = IngestOutcome()
        now = self._clock()
        checked: list[tuple[Message[FrameRaw], FrameValid]] = []
        for msg in batch:
            try:
                checked.append((msg, validate(msg.event, self._policy, now)))
            except Refused as exc:
                out.rejections.append(Rejection(msg, exc.reason, exc.message))
        if not checked:
            return out
        claims = [
            (fv.frame_id, f"{fv.content_sha256}|{m.topic}:{m.partition}:{m.offset}")
            for m, fv in checked
        ]
        try:
            held = self._claims.claim(claims, self._ttl)
        except ClaimsUnavailableError:
            out.dedupe_skipped = True
            out.valid = checked
            return out
        for (msg, fv), (_, mine), previous in zip(checked, claims, held, strict=True):
            if previous is None:
                out.valid.append((msg, fv))
                continue
            prev_sha, _, prev_pos = previous.partition("|")
            if previous == mine:
                out.redelivered += 1
                out.valid.append((msg, fv))
            elif prev_sha == fv.content_sha256:
                out.duplicates.append(msg)
            else:
                out.rejections.append(
                    Rejection(
                        msg,
                        "duplicate_frame_id",
                        f"frame_id {fv.frame_id!r} was already ingested with another image "
                        f"(from {prev_pos})",
                    )
                )
        return out
