"""Tracing and structured logging.

- ``setup_telemetry`` builds a tracer provider named after the service and its version, with
  one exporter: OTLP/HTTP when an endpoint is configured, JSONL files under ``var/traces`` by
  default (read back by ``streamloop trace``), or in memory for tests.
- ``inject_headers`` / ``extract_context`` carry W3C trace context in Kafka headers, never
  in payloads.
- ``configure_logging`` emits one JSON object per line carrying the current trace and span ids.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from shared.settings import TelemetrySettings
from shared.topics import Topics

__all__ = [
    "ALWAYS_SAMPLE",
    "FRAME_PATH_TOPICS",
    "Headers",
    "JsonlSpanExporter",
    "Telemetry",
    "configure_logging",
    "dead_letter_span",
    "extract_context",
    "inject_headers",
    "on_frame_path",
    "read_spans",
    "setup_telemetry",
    "streamloop_version",
]

Headers = list[tuple[str, bytes]]

_PROPAGATOR = TraceContextTextMapPropagator()
_GLOBAL_LOCK = threading.Lock()
_global_set = False


def streamloop_version() -> str:
    try:
        return metadata.version("streamloop")
    except metadata.PackageNotFoundError:
        return "0+unknown"


# --- Kafka header propagation -----------------------------------------------------------


def inject_headers(headers: Headers | None = None, context: Context | None = None) -> Headers:
    """Return ``headers`` plus the W3C ``traceparent``/``tracestate`` of ``context``.

    Existing trace headers are replaced, so re-publishing a record never carries two parents.
    """
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    keep = [(k, v) for k, v in (headers or []) if k not in ("traceparent", "tracestate")]
    return keep + [(k, v.encode()) for k, v in carrier.items()]


_TRACEPARENT_00 = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
"""A version-00 ``traceparent`` exactly as ``inject_headers`` writes it."""


def extract_context(headers: Sequence[tuple[str, bytes | None]] | None) -> Context:
    """The trace context carried by Kafka record headers (empty context when none).

    Runs for every record a service reads, so the common case, a ``traceparent`` as
    ``inject_headers`` writes it and no ``tracestate``, is read directly: the W3C
    propagator's regular expression, string decoding and carrier take twice as long
    (docs/benchmarks.md). Anything else (a ``tracestate``, another version, spaces, a value
    that is not ASCII) goes to the propagator, which decides as it always did."""
    traceparent: bytes | None = None
    for key, value in headers or ():
        if value is None:
            continue
        if key == "traceparent":
            traceparent = value
        elif key == "tracestate":
            return _extract_carried(headers)
    if traceparent is None:
        return Context()
    match = _TRACEPARENT_00.fullmatch(traceparent)
    if match is None:
        return _extract_carried(headers)
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return Context()
    parent = trace.SpanContext(
        trace_id=trace_id,
        span_id=span_id,
        is_remote=True,
        trace_flags=trace.TraceFlags(int(match[3], 16)),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent), Context())


def _extract_carried(headers: Sequence[tuple[str, bytes | None]] | None) -> Context:
    """``extract_context`` by the W3C propagator."""
    carrier: dict[str, str] = {}
    for key, value in headers or ():
        if key in ("traceparent", "tracestate") and value is not None:
            try:
                carrier[key] = value.decode("ascii")
            except UnicodeDecodeError:
                continue
    return _PROPAGATOR.extract(carrier)


# --- JSONL exporter --------------------------------------------------------------------


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.context
    assert ctx is not None  # a finished SDK span always has its context
    parent = span.parent
    start = span.start_time or 0
    end = span.end_time or start
    return {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name"),
        "start_ns": start,
        "end_ns": end,
        "duration_ms": round((end - start) / 1e6, 3),
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "links": [
            {
                "trace_id": format(link.context.trace_id, "032x"),
                "span_id": format(link.context.span_id, "016x"),
            }
            for link in span.links
        ],
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
    }


class JsonlSpanExporter(SpanExporter):
    """Appends finished spans to ``<dir>/<service>.jsonl``, one JSON object per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fh = path.open("a", encoding="utf-8")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_to_dict(s), default=str) + "\n" for s in spans)
        with self._lock:
            if self._fh.closed:
                return SpanExportResult.FAILURE
            self._fh.write(lines)
            self._fh.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._fh.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def read_spans(traces_dir: Path) -> list[dict[str, Any]]:
    """Every span in the JSONL files of ``traces_dir`` (lines that do not parse are skipped)."""
    spans: list[dict[str, Any]] = []
    for f in sorted(traces_dir.glob("*.jsonl")):
        with f.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    spans.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return spans


# --- provider --------------------------------------------------------------------------


@dataclass
class Telemetry:
    """What ``setup_telemetry`` built. ``memory`` is set only for the in-memory exporter."""

    service_name: str
    provider: TracerProvider
    tracer: trace.Tracer
    memory: InMemorySpanExporter | None = None

    def shutdown(self) -> None:
        """Flush and close the exporters (call once, on the way out)."""
        self.provider.shutdown()


ALWAYS_SAMPLE = "streamloop.always_sample"
"""Span attribute: a root span carrying it (True) is sampled whatever the ratio."""

FRAME_PATH_TOPICS = (Topics.FRAMES_RAW, Topics.FRAMES_VALID, Topics.PREDICTIONS)
"""Topics with a record per frame: a trace that starts on one of them is a frame's."""

DESTINATION = "messaging.destination.name"


@lru_cache(maxsize=256)
def on_frame_path(topic: str) -> bool:
    """Whether ``topic`` (a Kafka topic name, under any deployment prefix) is a frame path
    topic."""
    return any(topic == t or topic.endswith("." + t) for t in FRAME_PATH_TOPICS)


class _SamplingPolicy(Sampler):
    """Decides each new trace by its root span: marked ``ALWAYS_SAMPLE``, always; on a
    frame path topic (``DESTINATION``), by ``frames_ratio``; any other, by ``ratio``. Both
    ratios decide by trace id, so every process keeps the same traces."""

    def __init__(self, ratio: float, frames_ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)
        self._frames = TraceIdRatioBased(frames_ratio)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        chosen: Sampler = self._ratio
        if attributes:
            topic = attributes.get(DESTINATION)
            if attributes.get(ALWAYS_SAMPLE):
                chosen = ALWAYS_ON
            elif isinstance(topic, str) and on_frame_path(topic):
                chosen = self._frames
        return chosen.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return (
            f"SamplingPolicy{{{self._ratio.get_description()},"
            f"frames:{self._frames.get_description()}}}"
        )


def dead_letter_span(
    tracer: trace.Tracer,
    record_headers: Sequence[tuple[str, bytes | None]] | None,
    *,
    dlq_topic: str,
    source_topic: str,
    reason: str,
) -> trace.Span:
    """A recorded PRODUCER span for a dead letter, whatever the sampling of the record's own
    trace: a trace of its own (marked ``ALWAYS_SAMPLE``), linked to the record's. The caller
    ends it, and puts its context in the dead letter's headers."""
    parent = trace.get_current_span(extract_context(record_headers)).get_span_context()
    return tracer.start_span(
        f"{dlq_topic} dead letter",
        context=Context(),
        kind=SpanKind.PRODUCER,
        links=[Link(parent)] if parent.is_valid else None,
        attributes={
            ALWAYS_SAMPLE: True,
            "messaging.system": "kafka",
            DESTINATION: dlq_topic,
            "streamloop.dlq.source_topic": source_topic,
            "streamloop.dlq.reason": reason,
        },
    )


def _batch(exporter: SpanExporter) -> BatchSpanProcessor:
    # The default queue (2048) overflows at a few thousand records per second and drops spans.
    return BatchSpanProcessor(
        exporter, max_queue_size=65_536, max_export_batch_size=4096, schedule_delay_millis=1000
    )


def setup_telemetry(
    service_name: str,
    settings: TelemetrySettings,
    *,
    set_global: bool = True,
) -> Telemetry:
    """Build the tracer provider of one process.

    The global provider can be set only once per process; later calls with
    ``set_global=True`` return a working provider but leave the global one as it was.
    """
    global _global_set
    resource = Resource.create(
        {
            "service.name": service_name,
            "service.version": streamloop_version(),
            "service.namespace": "streamloop",
        }
    )
    # Parent-based: the service that starts a trace (the camera, the monitor) decides once,
    # and every downstream span of that trace follows, so sampled traces stay whole. Root
    # spans marked ALWAYS_SAMPLE (the loop's rare decisions: windows, retrain requests; dead
    # letters) are kept whatever the ratio, so a retrain's trace is never lost to frame
    # sampling; a frame's trace is kept at frames_sample_ratio (one trace per frame).
    sampler = ParentBased(_SamplingPolicy(settings.sample_ratio, settings.frames_sample_ratio))
    provider = TracerProvider(resource=resource, sampler=sampler)
    memory: InMemorySpanExporter | None = None
    kind = settings.resolved_exporter()
    if kind == "memory":
        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
    elif kind == "jsonl":
        exporter = JsonlSpanExporter(settings.traces_dir / f"{service_name}.jsonl")
        provider.add_span_processor(_batch(exporter))
    elif kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = (settings.otlp_endpoint or "").rstrip("/") + "/v1/traces"
        provider.add_span_processor(_batch(OTLPSpanExporter(endpoint=endpoint)))
    if set_global:
        with _GLOBAL_LOCK:
            if not _global_set:
                trace.set_tracer_provider(provider)
                _global_set = True
    return Telemetry(service_name, provider, provider.get_tracer("streamloop"), memory)


# --- logging ---------------------------------------------------------------------------

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the active trace and span ids and any ``extra``."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = format(ctx.trace_id, "032x")
            out["span_id"] = format(ctx.span_id, "016x")
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines that still show the ``extra`` fields (topic, offset, reason...)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {
            k: v
            for k, v in record.__dict__.items()
            if k not in _STANDARD_ATTRS and not k.startswith("_")
        }
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def configure_logging(service: str, settings: TelemetrySettings) -> None:
    """Route the root logger to stderr in the configured format (replacing its handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Timestamps are UTC, like every timestamp StreamLoop writes.
    handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # Client libraries are chatty at INFO about every connection attempt.
    for noisy in ("kafka", "aiokafka", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
