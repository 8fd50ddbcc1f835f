"""Settings of the Label Studio bridge (``STREAMLOOP_ANNOTATION_*``)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from shared.auth import HttpAuthSettings
from shared.registry import DEFAULT_MODEL_NAME
from shared.settings import ServiceSettings, service_config

__all__ = ["AnnotationSettings"]


class AnnotationSettings(ServiceSettings):
    model_config = service_config("annotation")

    group_id: str = "streamloop-annotation"
    """Consumer group of ``labels.requests``; more bridge processes share the requests."""

    model_name: str = DEFAULT_MODEL_NAME
    """The model whose label requests become tasks: one Label Studio project per model."""

    studio_url: str = "http://127.0.0.1:8740"
    """Label Studio, as the bridge reaches it."""

    studio_token: SecretStr | None = None
    """Label Studio's API token (``Authorization: Token …``; the server must accept legacy
    tokens). Required: the bridge does not start without it. It appears in no log line, span
    or event."""

    public_url: str = "http://127.0.0.1:8730"
    """The bridge's endpoint as Label Studio and people's browsers reach it: the images'
    URLs and the webhook's are made from it."""

    host: str = "127.0.0.1"
    """Interface of the bridge's endpoint (``0.0.0.0`` in a container)."""

    port: int = Field(default=8730, ge=0, le=65535)

    webhook: bool = True
    """Register Label Studio's webhook (off where Label Studio cannot reach the bridge: the
    poll alone brings the annotations back)."""

    webhook_url: str | None = None
    """Where Label Studio calls the webhook, when not ``public_url`` + ``/webhook`` (in compose,
    Label Studio reaches the bridge by its service name, browsers by the host's port)."""

    poll_interval_s: float = Field(default=30.0, gt=0)
    """How often every annotated task is read, for what a webhook did not deliver."""

    keep_frames: int = Field(default=5000, ge=1)
    """Recent frames kept (and read back from ``frames.valid`` at start) for the requests
    still to come: a request for an older frame is dead-lettered as ``frame_unknown``."""

    keep_days: int = Field(default=30, ge=1)
    """How long a task's image and the once-only records are kept in Redis."""

    http_auth: HttpAuthSettings = Field(default_factory=HttpAuthSettings)
    """With a read token, every image URL carries a signature made with it
    (``STREAMLOOP_ANNOTATION_HTTP_AUTH__READ_TOKEN``, or the shared ``STREAMLOOP_HTTP_*``)."""

    @field_validator("studio_token", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value
