"""Typed, frozen settings for every StreamLoop process.

Connection settings are shared by all services and read from one prefix each
(``STREAMLOOP_KAFKA_…``, ``STREAMLOOP_REDIS_…``, ``STREAMLOOP_TELEMETRY_…``). Each service
has its own settings class with its own prefix (``STREAMLOOP_INGEST_…``) and may override a
connection setting for itself with a nested variable, for example
``STREAMLOOP_INGEST_KAFKA__BOOTSTRAP_SERVERS``.

Settings are built once, in a service's ``__main__``, and passed down. Nothing else in the
code base reads the environment.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.auth import MIN_PRODUCTION_TOKEN_LENGTH, HttpAuthSettings
from shared.fetch import AT_REST_AFTER_S, AT_REST_WAIT_MS, FetchPacing
from shared.fitting import DEFAULT_FIT, FitPolicy
from shared.zoo import BUILTIN_CNN, check_architecture

__all__ = [
    "DEFAULT_SECRET_MARKERS",
    "ArtifactSettings",
    "KafkaSettings",
    "ModelSettings",
    "RedisSettings",
    "ServiceSettings",
    "TaskSettings",
    "TelemetrySettings",
    "TransactionSettings",
    "default_var_dir",
    "service_config",
]

DEFAULT_SECRET_MARKERS = ("", "changeme", "streamloop-dev", "secret", "password")


def default_var_dir() -> Path:
    """Where a run writes its state: ``$STREAMLOOP_VAR`` or ``<repo>/var``."""
    env = os.environ.get("STREAMLOOP_VAR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "var"


class KafkaSettings(BaseSettings):
    """How to reach the Kafka cluster. Security settings are passed through to the clients."""

    model_config = SettingsConfigDict(env_prefix="STREAMLOOP_KAFKA_", frozen=True, extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list of brokers to bootstrap from."""

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Protocol on the client listener."""

    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism when the protocol is SASL_*."""

    sasl_username: str | None = None
    """SASL user name."""

    sasl_password: SecretStr | None = None
    """SASL password; never logged."""

    ssl_cafile: str | None = None
    """CA bundle that signed the brokers' certificates."""

    ssl_certfile: str | None = None
    """Client certificate for mutual TLS."""

    ssl_keyfile: str | None = None
    """Private key of the client certificate."""

    replication_factor: int = Field(default=1, ge=1)
    """Replication factor used when StreamLoop creates its topics."""

    min_insync_replicas: int = Field(default=1, ge=1)
    """min.insync.replicas set on StreamLoop's topics (2 on a 3-broker cluster)."""

    default_partitions: int = Field(default=3, ge=1)
    """Partitions of a topic whose spec does not name a count."""

    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    """Prepended to every StreamLoop topic name (``staging.`` gives ``staging.frames.raw``), so
    several deployments or test runs can share one cluster."""

    request_timeout_ms: int = Field(default=30_000, ge=1_000)
    """Client request timeout."""

    reconnect_backoff_max_ms: int = Field(default=1_000, ge=50)
    """Cap of the doubling wait between attempts to reach a broker that is away. Kafka's own
    clients use 1 s; kafka-python's 30 s left clients asleep for up to half a minute after a
    broker came back (measured: the first frame predicted 18.7 s after a restarted broker
    answered, against 2 s with this cap)."""

    @model_validator(mode="after")
    def _check_sasl(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            raise ValueError("security_protocol SASL_* needs sasl_mechanism")
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError("min_insync_replicas cannot exceed replication_factor")
        return self

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by kafka-python's producer, consumer and admin client."""
        kw: dict[str, Any] = {
            "bootstrap_servers": [
                s.strip() for s in self.bootstrap_servers.split(",") if s.strip()
            ],
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
            "reconnect_backoff_max_ms": self.reconnect_backoff_max_ms,
        }
        if self.sasl_mechanism:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value:
                kw[name] = value
        return kw


class RedisSettings(BaseSettings):
    """How to reach Redis."""

    model_config = SettingsConfigDict(env_prefix="STREAMLOOP_REDIS_", frozen=True, extra="ignore")

    url: str = "redis://127.0.0.1:6379/0"
    """Redis URL (``redis://`` or ``rediss://`` for TLS); a password in it is also honoured."""

    username: str | None = None
    """ACL user name; None uses the default user."""

    password: SecretStr | None = None
    """Password of the ACL user; never logged."""

    socket_timeout_s: float = Field(default=5.0, gt=0)
    """Socket timeout of every Redis call."""


class TelemetrySettings(BaseSettings):
    """Traces and logs."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMLOOP_TELEMETRY_", frozen=True, extra="ignore", populate_by_name=True
    )

    exporter: Literal["auto", "otlp", "jsonl", "memory", "none"] = "auto"
    """Span exporter. ``auto``: OTLP when an OTLP endpoint is set, else JSONL files."""

    otlp_endpoint: str | None = Field(default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    """OTLP/HTTP endpoint (the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` variable)."""

    traces_dir: Path = Field(default_factory=lambda: default_var_dir() / "traces")
    """Folder of the local JSONL trace files, one file per service."""

    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of new traces recorded (parent-based: a trace is kept or dropped whole), for
    every trace but a frame's: labels, examples, models, commands."""

    frames_sample_ratio: float = Field(default=0.01, ge=0.0, le=1.0)
    """Share of frames whose trace is recorded: traces that start on the frame path
    (``frames.raw``, ``frames.valid``, ``predictions``: a trace per frame). Each recorded
    frame costs ingest and serving up to 0.25 CPU-ms more; 1.0 follows every frame.
    Dead letters and the loop's decisions are recorded whatever either ratio."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Root log level."""

    log_format: Literal["json", "text"] = "json"
    """Structured JSON lines (default) or human-readable text."""

    def resolved_exporter(self) -> Literal["otlp", "jsonl", "memory", "none"]:
        """The exporter that ``auto`` stands for under the current settings."""
        if self.exporter != "auto":
            return self.exporter
        return "otlp" if self.otlp_endpoint else "jsonl"


class ArtifactSettings(BaseSettings):
    """Where model weights and dataset manifests live (``STREAMLOOP_ARTIFACTS_*``), shared by
    every service."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMLOOP_ARTIFACTS_", frozen=True, extra="ignore"
    )

    root: Path = Field(default_factory=lambda: default_var_dir() / "artifacts")
    """Store root: a local folder, or a volume mounted at the same path in every container."""


class TaskSettings(BaseSettings):
    """What is classified: shared by every service (``STREAMLOOP_TASK_*``)."""

    model_config = SettingsConfigDict(env_prefix="STREAMLOOP_TASK_", frozen=True, extra="ignore")

    classes: tuple[str, ...] = ("car", "truck", "bus", "motorcycle")
    """Class names, in the order of the model's outputs (a JSON list in the environment)."""

    image_width: int = Field(default=64, gt=0, le=4096)
    """Width in pixels of the model's input."""

    image_height: int = Field(default=64, gt=0, le=4096)
    """Height in pixels of the model's input."""

    image_fit: FitPolicy = DEFAULT_FIT
    """How an image of another size is brought to the model's input (``shared.fitting``):
    ``letterbox`` (keep the aspect ratio, pad with black), ``center-crop`` (keep the aspect
    ratio, cut the overhang), ``stretch`` or ``refuse`` (dead-letter it as ``wrong_size``).
    Ingest fits every frame by it and ``POST /predict`` fits its image by it, so the stream
    and the HTTP path see the same pixels."""

    @model_validator(mode="before")
    @classmethod
    def _deprecated_resize(cls, data: Any) -> Any:
        """``STREAMLOOP_INGEST_RESIZE=true``, which resized frames of another size before
        fit policies existed, still means ``stretch`` unless ``image_fit`` is set."""
        if isinstance(data, dict) and "image_fit" not in data:
            legacy = os.environ.get("STREAMLOOP_INGEST_RESIZE")
            if legacy and TypeAdapter(bool).validate_python(legacy.strip()):
                data = {**data, "image_fit": "stretch"}
        return data

    @model_validator(mode="after")
    def _check_classes(self) -> TaskSettings:
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must name at least two distinct classes")
        return self


class ModelSettings(BaseSettings):
    """What network training gives a new model (``STREAMLOOP_MODEL_*``). Evaluation and
    serving never read it: they build every model from the spec inside its artifact."""

    model_config = SettingsConfigDict(env_prefix="STREAMLOOP_MODEL_", frozen=True, extra="ignore")

    architecture: str = BUILTIN_CNN
    """``streamloop-cnn-v1`` (the built-in CNN), or a torchvision classifier trained from
    scratch: ``resnet18``, ``resnet34``, ``resnet50``, ``mobilenet_v3_small``,
    ``mobilenet_v3_large``, ``efficientnet_b0`` (``shared.zoo``). An unknown name stops the
    service at start-up."""

    @field_validator("architecture")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_architecture(value)


class FetchSettings(BaseModel):
    """How a frame-path consumer (ingest, serving) fetches: the broker gathers up to
    ``min_bytes`` (or waits ``max_wait_ms``) before it answers, so a poll brings a batch
    rather than the one or two frames that arrived since the last one. Each batch costs a
    fetch, a flush and a commit; fewer, fuller batches leave the CPU to the frames."""

    model_config = ConfigDict(frozen=True)

    min_bytes: int = Field(default=262_144, ge=1)
    """Least data a fetch waits for: about twenty 64x64 frames. 1 answers with whatever is
    there."""

    max_wait_ms: int = Field(default=100, ge=0, le=60_000)
    """Longest the broker holds a fetch for ``min_bytes``: the most a frame waits at each hop
    for others to join it (below about 200 frames/s, where 256 KiB takes longer to gather).
    It is also how often an idle consumer asks: at 10 ms an idle ingest cost 0.2 cores and
    the broker 0.1 answering it, at 100 ms 0.03 each."""

    idle_after_s: float = Field(default=AT_REST_AFTER_S, ge=0)
    """Seconds without a record after which the consumer waits at rest (``shared.fetch``):
    any record answers a fetch at once, and an empty one comes back after ``idle_wait_ms``.
    0 keeps ``min_bytes`` and ``max_wait_ms`` at all times."""

    idle_wait_ms: int = Field(default=AT_REST_WAIT_MS, ge=1, le=25_000)
    """How long the broker holds a fetch at rest (under the client's request timeout)."""

    def consumer_kwargs(self) -> dict[str, Any]:
        """kafka-python consumer settings."""
        return {"fetch_min_bytes": self.min_bytes, "fetch_max_wait_ms": self.max_wait_ms}

    def pacing(self) -> FetchPacing:
        """Switches the consumer between these settings and waiting at rest."""
        return FetchPacing(self.min_bytes, self.max_wait_ms, self.idle_after_s, self.idle_wait_ms)


class TransactionSettings(BaseModel):
    """Exactly once on a frame-path service (ingest, serving): each batch's outputs, dead
    letters and consumed offsets commit in one Kafka transaction; a restarted or fenced
    instance's unfinished work is never seen by ``read_committed`` readers."""

    model_config = ConfigDict(frozen=True)

    enabled: bool = False
    """Off (the default): at-least-once (outputs flushed, then offsets committed; a crash
    repeats up to a batch per partition). On: exactly once, at a cost measured by
    ``tests.bench.bench_transactions``; see docs/delivery.md for what it does not yet ride
    out."""

    id: str = ""
    """The producer's ``transactional.id``. Empty: the topic prefix, the consumer group and
    the host name, stable across restarts on one host (a container keeps its host name), so
    that a restarted instance aborts its predecessor's open transaction at once. Two
    instances of one group on one host need ids of their own: one with the same id fences
    the other."""

    timeout_ms: int = Field(default=10_000, ge=1_000, le=900_000)
    """How long the broker waits before it aborts a transaction left open by an instance
    that died and did not come back under the same id."""

    def transactional_id(self, kafka: KafkaSettings, group_id: str) -> str | None:
        """The id to use, or None when transactions are off."""
        if not self.enabled:
            return None
        return self.id or f"{kafka.topic_prefix}{group_id}-{socket.gethostname()}"


def service_config(service: str) -> SettingsConfigDict:
    """``model_config`` of a service's settings: prefix ``STREAMLOOP_<SERVICE>_``, nested
    overrides with ``__``, frozen."""
    return SettingsConfigDict(
        env_prefix=f"STREAMLOOP_{service.upper()}_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
    )


class ServiceSettings(BaseSettings):
    """Base of every service's settings. Subclasses set ``model_config = service_config(NAME)``
    and add their own fields."""

    model_config = service_config("service")

    environment: Literal["development", "production"] = "development"
    """Outside development, a service refuses to start with a default or empty secret."""

    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Port of the Prometheus ``/metrics`` endpoint; 0 picks a free port."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    """Kafka connection (shared ``STREAMLOOP_KAFKA_*``; per-service ``…_KAFKA__*`` overrides)."""

    redis: RedisSettings = Field(default_factory=RedisSettings)
    """Redis connection (shared ``STREAMLOOP_REDIS_*``)."""

    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    """Tracing and logging."""

    task: TaskSettings = Field(default_factory=TaskSettings)
    """Classes and image size (shared ``STREAMLOOP_TASK_*``)."""

    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    """The artifact store (shared ``STREAMLOOP_ARTIFACTS_*``)."""

    var_dir: Path = Field(default_factory=default_var_dir)
    """Root of everything a run writes (artifacts, traces, local state)."""

    provision_topics: bool = True
    """Create or align StreamLoop's topics at start-up (idempotent); turn off where topics
    are managed by other means."""

    kafka_wait_s: float = Field(default=120.0, gt=0)
    """How long start-up waits for Kafka to answer before giving up."""

    @model_validator(mode="before")
    @classmethod
    def _deployment_wide(cls, data: Any) -> Any:
        """``STREAMLOOP_ENVIRONMENT`` and ``STREAMLOOP_METRICS_PORT`` apply to every service
        (one line in a compose file); a service's own variable still wins."""
        if isinstance(data, dict):
            for field_name, shared in (
                ("environment", "STREAMLOOP_ENVIRONMENT"),
                ("metrics_port", "STREAMLOOP_METRICS_PORT"),
            ):
                if field_name not in data and os.environ.get(shared):
                    data = {**data, field_name: os.environ[shared]}
        return data

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> ServiceSettings:
        if self.environment != "production":
            return self
        secrets = {
            "redis.password": self.redis.password,
        }
        if self.kafka.sasl_mechanism:
            secrets["kafka.sasl_password"] = self.kafka.sasl_password
        # A service with an HTTP endpoint carries its tokens in ``http_auth``: the operator
        # token is required where the endpoint offers operator actions, and any token that
        # is set must be neither a default nor short enough to guess.
        tokens: dict[str, SecretStr | None] = {}
        http_auth = getattr(self, "http_auth", None)
        if isinstance(http_auth, HttpAuthSettings):
            if http_auth.operator_actions or http_auth.operator_token is not None:
                tokens["http_auth.operator_token"] = http_auth.operator_token
            if http_auth.read_token is not None:
                tokens["http_auth.read_token"] = http_auth.read_token
        for name, value in (secrets | tokens).items():
            plain = value.get_secret_value() if value is not None else ""
            if plain.strip().lower() in DEFAULT_SECRET_MARKERS:
                raise ValueError(
                    f"{name} is empty or a default value; refusing to start in production"
                )
            if name in tokens and len(plain.strip()) < MIN_PRODUCTION_TOKEN_LENGTH:
                raise ValueError(
                    f"{name} is shorter than {MIN_PRODUCTION_TOKEN_LENGTH} characters; "
                    "refusing to start in production"
                )
        return self
