"""Operator commands as events: what the CLI and the registry's HTTP API publish.

An operator action means the same thing whichever way it arrives: a retrain request on
``retrain.requests``, or a promote / rollback command on ``models.lifecycle`` that the
registry answers on the same topic (the answer's ``cause_id`` is the command's
``event_id``).
"""

from __future__ import annotations

from typing import Literal

from shared.events import ImportedWeights, ModelLifecycle, RetrainRequest, new_id
from shared.ports import Publisher
from shared.registry import lifecycle_key
from shared.topics import Topics

__all__ = [
    "import_request",
    "lifecycle_command",
    "publish_command",
    "publish_retrain",
    "retrain_request",
]


def retrain_request(
    model: str, reason: str, key: str | None = None, *, source: str = "cli"
) -> RetrainRequest:
    """An operator's retrain request for ``model``; without ``key``, a new idempotency key
    (so the request trains once, however often it is delivered)."""
    return RetrainRequest(
        source=source,
        model_name=model,
        idempotency_key=key or f"operator:{new_id()}",
        reason=reason,
        trigger="operator",
    )


def import_request(model: str, imported: ImportedWeights, *, source: str = "cli") -> RetrainRequest:
    """The request that makes ``imported`` a candidate of ``model``. Its idempotency key is
    the artifact's version, so the same weights imported twice register once."""
    note = f": {imported.note}" if imported.note else ""
    return RetrainRequest(
        source=source,
        model_name=model,
        idempotency_key=f"import:{imported.artifact_sha256[:12]}",
        reason=f"imported {imported.file_name} by {imported.actor}{note}"[:1000],
        trigger="import",
        imported=imported,
    )


def publish_retrain(
    publisher: Publisher, request: RetrainRequest, timeout_s: float | None = None
) -> None:
    """Publish ``request`` on ``retrain.requests`` (keyed by model) and wait for Kafka to
    acknowledge it."""
    publisher.publish(Topics.RETRAIN_REQUESTS, request, key=request.model_name)
    publisher.flush(timeout_s)


def lifecycle_command(
    model: str,
    action: Literal["promote_requested", "rollback_requested"],
    version: str | None,
    *,
    actor: str,
    reason: str,
    force: bool = False,
    source: str = "cli",
) -> ModelLifecycle:
    """An operator command for the registry: promote ``version``, or roll the champion back
    (``version`` None). ``force`` promotes even a version the gate rejected."""
    return ModelLifecycle(
        source=source,
        model_name=model,
        action=action,
        model_version=version,
        actor=actor,
        reason=reason,
        details={"force": True} if force else {},
    )


def publish_command(
    publisher: Publisher, command: ModelLifecycle, timeout_s: float | None = None
) -> None:
    """Publish ``command`` on ``models.lifecycle`` and wait for Kafka to acknowledge it; the
    registry answers on the same topic with an event whose ``cause_id`` is the command's
    ``event_id``."""
    publisher.publish(Topics.MODELS_LIFECYCLE, command, key=lifecycle_key(command))
    publisher.flush(timeout_s)
