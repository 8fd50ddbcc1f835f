"""Every event StreamLoop puts on Kafka, and the codec that reads and writes them.

Each event is a frozen pydantic model with the envelope fields ``event_id``, ``event_type``,
``schema_version``, ``produced_at`` and ``source``. On the wire an event is one UTF-8 JSON
object, so any Kafka client in any language can read and write it; the one exception is
``frame.valid`` (schema version 2), a JSON header followed by the raw pixels, because base64
and JSON of 12 KB of pixels cost more than the rest of the record (see ``FrameValid``).
Trace context never travels in the payload: it rides in Kafka headers (see
``shared.telemetry``).

Readers are tolerant: unknown fields are ignored, so a newer producer may add fields without
breaking older consumers. A breaking change bumps ``schema_version``.

``decode`` never lets a bad payload escape as anything but a ``DecodeError`` subclass whose
``reason`` is a stable, machine-readable code (the DLQ's ``error`` header).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "EVENT_TYPES",
    "FRAME_MAGIC",
    "AccuracyEstimate",
    "Alert",
    "ClassMetrics",
    "DatasetSnapshot",
    "DecodeError",
    "Event",
    "Example",
    "ExportRef",
    "FrameRaw",
    "FrameValid",
    "ImportedWeights",
    "Label",
    "LabelRequest",
    "LiveComparison",
    "ModelEvaluated",
    "ModelLifecycle",
    "ModelTrained",
    "NotJsonError",
    "Prediction",
    "RetrainRequest",
    "SchemaError",
    "TooLargeError",
    "TrainingProgress",
    "UnknownEventTypeError",
    "WindowMetrics",
    "decode",
    "derived_id",
    "encode",
    "new_id",
    "utcnow",
]

E = TypeVar("E", bound="Event")


def utcnow() -> datetime:
    """Timezone-aware now, in UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """A fresh random identifier (32 hex characters)."""
    return uuid.uuid4().hex


def derived_id(*parts: str) -> str:
    """A deterministic identifier (32 hex characters) from ``parts``: an event re-published
    after a crash gets the same ``event_id``, so consumers recognise it as a duplicate."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class Event(BaseModel):
    """The envelope every event carries."""

    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_timedelta="float")

    SCHEMA_VERSION: ClassVar[int] = 1

    event_id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    """Unique per event; consumers use it to drop redeliveries."""

    event_type: str
    """Discriminator; each subclass pins it to a literal."""

    schema_version: int = 1
    """Version of this event type's schema."""

    produced_at: datetime = Field(default_factory=utcnow)
    """When the producer created the event (UTC)."""

    source: str = "unknown"
    """Which service or client produced it."""


# --- data in ---------------------------------------------------------------------------


class FrameRaw(Event):
    """A camera frame as published to ``frames.raw`` (the public wire format)."""

    event_type: Literal["frame.raw"] = "frame.raw"
    frame_id: str = Field(min_length=1, max_length=128)
    camera_id: str = Field(min_length=1, max_length=64)
    captured_at: datetime
    content_type: Literal["image/png", "image/jpeg"]
    image_b64: str
    """The encoded image (PNG or JPEG), base64 (standard alphabet, padded)."""
    condition: str | None = None
    """Known capture condition (day, dusk, night, fog, rain), when the source knows it."""
    attributes: dict[str, str] = Field(default_factory=dict)


class FrameValid(Event):
    """A validated frame, normalised to what the model needs so nobody decodes it again.

    On the wire it is binary (``encode``): ``FRAME_MAGIC``, the length of a JSON header as a
    4-byte big-endian unsigned integer, the header (every field below but ``pixels``), then
    the raw pixels. Schema version 1, one JSON object with the pixels in base64 under
    ``pixels_b64``, is still read."""

    SCHEMA_VERSION: ClassVar[int] = 2

    event_type: Literal["frame.valid"] = "frame.valid"
    schema_version: int = 2
    frame_id: str
    camera_id: str
    captured_at: datetime
    ingested_at: datetime
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    channels: int = Field(default=3, gt=0)
    pixels: bytes = Field(repr=False, exclude=True)
    """Raw uint8 pixels, row-major height x width x channels (never in a JSON dump: the
    binary wire form carries them after the header)."""
    content_sha256: str
    condition: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    source_width: int | None = Field(default=None, gt=0)
    """Width of the image as published, before ingest fitted it to ``width``; None in
    records written before ingest recorded it."""
    source_height: int | None = Field(default=None, gt=0)
    """Height of the image as published (None when unknown, as ``source_width``)."""

    @model_validator(mode="before")
    @classmethod
    def _pixels_of_version_1(cls, data: Any) -> Any:
        if isinstance(data, dict) and "pixels" not in data and "pixels_b64" in data:
            data = dict(data)
            text = data.pop("pixels_b64")
            if not isinstance(text, str):
                raise ValueError("pixels_b64 must be a base64 string")
            try:
                data["pixels"] = base64.b64decode(text, validate=True)
            except binascii.Error as exc:
                raise ValueError(f"pixels_b64 is not base64: {exc}") from None
        return data

    @model_validator(mode="after")
    def _pixels_fill_the_frame(self) -> FrameValid:
        expected = self.width * self.height * self.channels
        if len(self.pixels) != expected:
            raise ValueError(
                f"{len(self.pixels)} pixel bytes do not make "
                f"{self.height}x{self.width}x{self.channels} ({expected} bytes)"
            )
        return self


class Label(Event):
    """Ground truth for one frame, published to ``labels``."""

    event_type: Literal["label"] = "label"
    frame_id: str = Field(min_length=1, max_length=128)
    label: str = Field(min_length=1, max_length=64)
    camera_id: str | None = None
    annotator: str = "unknown"
    labelled_at: datetime = Field(default_factory=utcnow)
    requested: bool = False
    """The label answers a label request (``labels.requests``): the frame was chosen, not
    one of those labelled at random. The monitor measures accuracy for the estimate's error,
    and fits the estimate's corrections, on the others only (chosen frames are the ones the
    model is least sure of)."""


class LabelRequest(Event):
    """Active learning: please label this frame."""

    event_type: Literal["label.request"] = "label.request"
    frame_id: str
    camera_id: str
    reason: str
    confidence: float | None = None
    """The model's confidence on the frame; the least confident are asked for first."""


class Example(Event):
    """A labelled frame: one record of the training data log (``examples``, compacted)."""

    event_type: Literal["example"] = "example"
    frame_id: str
    camera_id: str
    label: str
    captured_at: datetime
    labelled_at: datetime
    condition: str | None = None
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    channels: int = Field(default=3, gt=0)
    pixels_b64: str


# --- serving ---------------------------------------------------------------------------


class Prediction(Event):
    """One frame classified by one model version (``predictions`` or ``predictions.shadow``)."""

    event_type: Literal["prediction"] = "prediction"
    frame_id: str
    camera_id: str
    captured_at: datetime
    model_name: str
    model_version: str
    predicted_class: str
    probabilities: dict[str, float]
    confidence: float = Field(ge=0.0, le=1.0)
    served_at: datetime
    latency_from_capture_ms: float
    latency_from_ingest_ms: float
    shadow: bool = False
    condition: str | None = None
    source_width: int | None = Field(default=None, gt=0)
    """Width of the camera's image before ingest fitted it (the frame's ``source_width``);
    None when the frame did not carry it."""
    source_height: int | None = Field(default=None, gt=0)
    """Height of the camera's image before ingest fitted it."""


# --- monitoring ------------------------------------------------------------------------


class ClassMetrics(BaseModel):
    """Precision, recall and F1 of one class in one window."""

    model_config = ConfigDict(frozen=True)

    precision: float
    recall: float
    f1: float
    support: int


class AccuracyEstimate(BaseModel):
    """An accuracy estimated from predictions alone, before their labels arrive
    (``services.monitoring.estimate``)."""

    model_config = ConfigDict(frozen=True)

    value: float = Field(ge=0.0, le=1.0)
    low: float = Field(ge=0.0, le=1.0)
    high: float = Field(ge=0.0, le=1.0)
    """``low``..``high``: the interval (95 % by default) of the frames' sampling noise."""
    frames: int = Field(ge=0)
    """Predictions behind it."""
    method: Literal["confidence", "class-mix"]
    """``confidence``: the mean calibrated confidence; ``class-mix``: capped by the bound the
    predicted class mix puts on accuracy (the mix differed from the label prior)."""


class WindowMetrics(Event):
    """One closed monitoring window of one model version (``metrics``)."""

    event_type: Literal["metrics.window"] = "metrics.window"
    model_name: str
    model_version: str
    window_id: str
    window_kind: Literal["count", "time"]
    window_start: datetime
    window_end: datetime
    shadow: bool = False
    sample_count: int
    labelled_count: int
    label_coverage: float
    accuracy: float | None = None
    sampled_accuracy: float | None = None
    """Accuracy over the labels nobody asked for (``sampled_count`` of them): a random sample
    of the frames, where ``accuracy`` also counts the labels the monitor or a person asked
    for, which lean to frames the model is unsure of."""
    sampled_count: int = 0
    macro_f1: float | None = None
    per_class: dict[str, ClassMetrics] = Field(default_factory=dict)
    per_slice_accuracy: dict[str, float] = Field(default_factory=dict)
    mean_confidence: float | None = None
    class_mix: dict[str, float] = Field(default_factory=dict)
    psi: float | None = None
    estimate: AccuracyEstimate | None = None
    """Accuracy estimated from the window's predictions without their labels."""
    per_camera_estimate: dict[str, AccuracyEstimate] = Field(default_factory=dict)
    estimate_error: float | None = None
    """``estimate.value - sampled_accuracy`` (``- accuracy`` while fewer than
    ``error_min_labels`` labels were not asked for, 30 by default) when both are known. The
    labels counted in a window are of predictions a little older than the window's own
    (labels come late), so the two describe nearly, not exactly, the same frames."""


class LiveComparison(Event):
    """Champion and challenger scored on the same labelled frames (``metrics``): the live
    evidence the registry promotes a challenger, or rolls a new champion back, on.

    Counts are cumulative since the monitor first saw this pair; ``labelled`` counts frames
    that both versions predicted and that have a label. ``champion_only`` and
    ``challenger_only`` count the discordant ones (exactly one version right), on which the
    registry's sequential test decides; None on comparisons published before they were
    counted (the registry then applies its fixed rule)."""

    event_type: Literal["metrics.comparison"] = "metrics.comparison"
    model_name: str
    champion_version: str
    challenger_version: str
    labelled: int = Field(ge=0)
    champion_correct: int = Field(ge=0)
    challenger_correct: int = Field(ge=0)
    champion_only: int | None = Field(default=None, ge=0)
    """Frames the champion got right and the challenger wrong."""
    challenger_only: int | None = Field(default=None, ge=0)
    """Frames the challenger got right and the champion wrong."""
    champion_accuracy: float | None = None
    challenger_accuracy: float | None = None
    since: datetime
    until: datetime


class ImportedWeights(BaseModel):
    """Weights trained elsewhere and imported (``streamloop models import``): where they came
    from and the artifact they became."""

    model_config = ConfigDict(frozen=True)

    file_name: str = Field(min_length=1, max_length=255)
    """The imported file's name, as given (no directories)."""
    file_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 of the file's bytes as received."""
    artifact_uri: str
    """The weights as a StreamLoop artifact: the file's tensors with the model's spec."""
    artifact_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    actor: str
    """Who imported them (the CLI's user, or the HTTP API's operator)."""
    note: str = Field(default="", max_length=500)


class RetrainRequest(Event):
    """Ask for a new model (``retrain.requests``). The idempotency key trains once.

    With ``imported``, the request registers those weights as a candidate instead of
    training one: same snapshot, exports and gate as a trained model."""

    event_type: Literal["retrain.request"] = "retrain.request"
    model_name: str
    idempotency_key: str = Field(min_length=1)
    reason: str
    trigger: Literal["monitor", "operator", "bootstrap", "import"]
    window_ids: list[str] = Field(default_factory=list)
    evidence: AccuracyEstimate | None = None
    """For a request the estimated accuracy fired (before labels confirmed the drop): the
    estimate it fired on."""
    slices: list[str] = Field(default_factory=list)
    """Slices whose live accuracy was below the trigger's threshold in the window that fired
    (``camera=ID``, ``condition=NAME``, as ``WindowMetrics.per_slice_accuracy`` names them):
    training weights their examples up. Empty when the requester does not know."""
    imported: ImportedWeights | None = None


class Alert(Event):
    """Something ops should know about (``alerts``)."""

    event_type: Literal["alert"] = "alert"
    severity: Literal["info", "warning", "critical"]
    kind: str
    message: str
    model_version: str | None = None
    camera_id: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


# --- model lifecycle -------------------------------------------------------------------


class TrainingProgress(Event):
    """One epoch of a training run (``training.progress``)."""

    event_type: Literal["training.progress"] = "training.progress"
    model_name: str
    idempotency_key: str
    epoch: int
    epochs: int
    loss: float
    accuracy: float
    elapsed_s: float


class DatasetSnapshot(BaseModel):
    """The immutable dataset a model was trained on: what exactly went in."""

    model_config = ConfigDict(frozen=True)

    snapshot_id: str
    frame_ids_sha256: str
    size: int
    per_class: dict[str, int]
    per_condition: dict[str, int]
    topic_offsets: dict[str, int]
    """``"examples:<partition>" -> end offset`` read when the snapshot was taken."""
    holdout_size: int
    """Recent examples kept out of training (the fresh holdout evaluation scores on)."""
    manifest_uri: str = ""
    """Artifact-store reference of the manifest: every frame id used, with its offset, split
    and slice (the exact examples behind the model)."""
    manifest_sha256: str = ""
    recent_size: int = 0
    """Examples inside the recency window (all trained on, except the holdout)."""
    policy: dict[str, Any] = Field(default_factory=dict)
    """The sampling policy and split rule that chose the examples."""
    taken_at: datetime | None = None
    """When the examples were read, after their end offsets were: a frame ingested later
    cannot be among them (its label, and so its example, comes after it). Serving's shadow
    replay scores a new challenger on the frames ingested since (``services.serving.replay``).
    None in lineage written before it was recorded."""


class ExportRef(BaseModel):
    """Where one exported form of a model's weights is (``shared.runtimes``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    uri: str
    sha256: str


class ModelTrained(Event):
    """A candidate model with its lineage (``models.trained``)."""

    event_type: Literal["model.trained"] = "model.trained"
    model_name: str
    model_version: str
    idempotency_key: str
    artifact_uri: str
    sha256: str
    dataset: DatasetSnapshot
    hyperparameters: dict[str, Any]
    metrics: dict[str, float]
    parent_version: str | None = None
    code_version: str
    seed: int
    duration_s: float
    trigger: str | None = None
    """What asked for the model: the retrain request's trigger (monitor, operator, bootstrap)."""
    reason: str = ""
    """The retrain request's reason."""
    exports: dict[str, ExportRef] = Field(default_factory=dict)
    """The weights exported for other inference runtimes, by runtime name (``onnx``,
    ``compiled``); each was checked to agree with the weights before it was stored."""
    init: str = "scratch"
    """How the weights began: ``scratch`` (initialised from the seed), ``imported:VERSION``
    (fine-tuned from that version's weights), ``champion:VERSION`` (fine-tuned from the
    champion's, which was VERSION; it is also ``parent_version``) or ``imported`` (not
    trained here at all: the imported weights themselves, described by ``imported``)."""
    imported: ImportedWeights | None = None


class ModelEvaluated(Event):
    """The evaluation gate's verdict on a candidate (``models.evaluated``)."""

    event_type: Literal["model.evaluated"] = "model.evaluated"
    model_name: str
    model_version: str
    champion_version: str | None
    verdict: Literal["blessed", "rejected"]
    reasons: list[str]
    metrics: dict[str, Any]


class ModelLifecycle(Event):
    """A change to the registry: its source of truth (``models.lifecycle``, compacted)."""

    event_type: Literal["model.lifecycle"] = "model.lifecycle"
    model_name: str
    action: Literal[
        "registered",
        "evaluated",
        "alias_set",
        "rolled_back",
        "promote_requested",
        "rollback_requested",
        "command_rejected",
        "probation_passed",
    ]
    model_version: str | None = None
    """The version the change is about; for ``alias_set``, the alias's new target (None
    clears the alias)."""
    alias: Literal["champion", "challenger"] | None = None
    previous_version: str | None = None
    actor: str = "system"
    reason: str = ""
    cause_id: str | None = None
    """``event_id`` of the lifecycle event this one answers (an alias move answers a blessed
    evaluation or an operator command; ``command_rejected`` answers a command)."""
    details: dict[str, Any] = Field(default_factory=dict)


EVENT_TYPES: dict[str, type[Event]] = {
    cls.model_fields["event_type"].default: cls
    for cls in (
        FrameRaw,
        FrameValid,
        Label,
        LabelRequest,
        Example,
        Prediction,
        WindowMetrics,
        LiveComparison,
        RetrainRequest,
        Alert,
        TrainingProgress,
        ModelTrained,
        ModelEvaluated,
        ModelLifecycle,
    )
}


# --- codec -----------------------------------------------------------------------------


class DecodeError(ValueError):
    """A payload that is not a valid event. ``reason`` is a stable code for DLQ headers."""

    reason: ClassVar[str] = "decode_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotJsonError(DecodeError):
    reason = "not_json"


class SchemaError(DecodeError):
    reason = "schema"


class UnknownEventTypeError(DecodeError):
    reason = "unknown_event_type"


class TooLargeError(DecodeError):
    reason = "too_large"


FRAME_MAGIC = b"\x00SLF"
"""First bytes of a binary ``frame.valid`` record; a JSON payload can never start with NUL."""

_HEADER_LENGTH = 4


def encode(event: Event) -> bytes:
    """Serialise an event to its wire form: UTF-8 JSON, except ``FrameValid`` (binary)."""
    if isinstance(event, FrameValid):
        header = event.model_dump_json().encode()
        return b"".join(
            (FRAME_MAGIC, len(header).to_bytes(_HEADER_LENGTH, "big"), header, event.pixels)
        )
    return event.model_dump_json().encode()


def _decode_frame(data: bytes, model: type[E]) -> E:
    if model is not Event and model is not FrameValid:
        raise SchemaError(f"{model.__name__}: the payload is a binary frame.valid record")
    start = len(FRAME_MAGIC) + _HEADER_LENGTH
    size = int.from_bytes(data[len(FRAME_MAGIC) : start], "big")
    if len(data) < start + size:
        raise SchemaError("FrameValid: the binary record ends inside its header")
    try:
        header = json.loads(data[start : start + size])
    except (UnicodeDecodeError, ValueError) as exc:
        raise SchemaError(f"FrameValid: the header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise SchemaError("FrameValid: the header is not a JSON object")
    header["pixels"] = data[start + size :]
    try:
        return FrameValid.model_validate(header)  # type: ignore[return-value]
    except ValidationError as exc:
        raise SchemaError(f"FrameValid: {_summarise(exc)}") from None


def _summarise(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def decode(
    data: bytes | None,
    model: type[E],
    *,
    max_bytes: int | None = None,
    default: type[Event] | None = None,
) -> E:
    """Parse ``data`` as one event of type ``model``.

    ``model=Event`` accepts any known event type, chosen by its ``event_type`` field. A
    payload without ``event_type`` is read as ``default`` when one is given: the event type of
    the topic it came from (``shared.topics.event_for``), so a client that publishes to
    ``labels`` need not name the type. A specific ``model`` needs no ``event_type`` either.

    Raises:
        TooLargeError: the payload exceeds ``max_bytes``.
        NotJsonError: the payload is empty, not UTF-8 or not a JSON object.
        UnknownEventTypeError: ``model`` is ``Event`` and ``event_type`` names no known event.
        SchemaError: the JSON does not match the model (including a different event_type).
    """
    if data is None or len(data) == 0:
        raise NotJsonError("empty payload")
    if max_bytes is not None and len(data) > max_bytes:
        raise TooLargeError(f"payload of {len(data)} bytes exceeds the limit of {max_bytes}")
    if data[: len(FRAME_MAGIC)] == FRAME_MAGIC:
        return _decode_frame(data, model)
    target: type[Event] = model
    if model is Event:
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise NotJsonError(f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise NotJsonError("JSON payload is not an object")
        etype = obj.get("event_type")
        if etype is None and default is not None:
            etype = default.model_fields["event_type"].default
        if etype not in EVENT_TYPES:
            raise UnknownEventTypeError(f"unknown event_type {etype!r}")
        target = EVENT_TYPES[etype]
        try:
            return target.model_validate(obj)  # type: ignore[return-value]
        except ValidationError as exc:
            raise SchemaError(f"{target.__name__}: {_summarise(exc)}") from None
    try:
        return target.model_validate_json(data)  # type: ignore[return-value]
    except ValidationError as exc:
        first = exc.errors()[0]["type"] if exc.error_count() else ""
        if first in ("json_invalid", "json_type", "model_type") and exc.error_count() == 1:
            raise NotJsonError(f"not a JSON object: {exc.errors()[0]['msg']}") from None
        raise SchemaError(f"{target.__name__}: {_summarise(exc)}") from None
