"""The Ray Serve application: model replicas around the serving core, and ``POST /predict``.

Replicas are stateless about versions: every call names the model version (reference and
sha256) it wants, and each replica loads and verifies a version on first use and keeps the
last few. Any replica can therefore serve any batch, and a champion swap needs no
coordination: the ingress simply names the new version in its next call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from services.serving.core import ModelRef, ServingCore
from services.serving.settings import ServingSettings
from shared.artifacts import ArtifactError, ArtifactStore
from shared.auth import Decision, HttpAuthSettings, authorize_read, check_length
from shared.fitting import DEFAULT_FIT, FitPolicy
from shared.images import ImageError, decode_image
from shared.ports import Unavailable
from shared.ray_cluster import init_ray
from shared.redis_registry import RedisRegistry
from shared.redis_store import connect
from shared.registry import RegistryUnavailableError
from shared.runtimes import RuntimeName
from shared.settings import RedisSettings

__all__ = [
    "APP_NAME",
    "Classifier",
    "RayBackend",
    "app_fingerprint",
    "build_app",
    "start_ray_backend",
]

APP_NAME = "streamloop"
log = logging.getLogger("streamloop.serving")


@serve.deployment(name="classifier")
class Classifier:
    """One model replica."""

    def __init__(
        self,
        artifacts_root: str,
        torch_threads: int,
        redis: dict[str, Any],
        model_name: str,
        http_auth: HttpAuthSettings,
        runtime: RuntimeName = "eager",
        image_fit: FitPolicy = DEFAULT_FIT,
        fingerprint: str = "",
    ) -> None:
        import torch

        torch.set_num_threads(torch_threads)
        self._core = ServingCore(
            ArtifactStore(Path(artifacts_root)), runtime=runtime, threads=torch_threads
        )
        self._registry = RedisRegistry(connect(RedisSettings.model_validate(redis)))
        self._model_name = model_name
        self._auth = http_auth
        self._fit = image_fit
        self._fingerprint = fingerprint

    def fingerprint(self) -> str:
        """What this replica was deployed with (``app_fingerprint``): an ingress that starts
        on a cluster where the application runs reuses it when its own settings and code
        give the same fingerprint."""
        return self._fingerprint

    def predict(self, pixels: npt.NDArray[np.uint8], ref: ModelRef) -> npt.NDArray[np.float32]:
        """Probabilities of a batch under ``ref`` (called by the Kafka ingress)."""
        return self._core.probabilities(ref, pixels)

    async def __call__(self, request: Request) -> JSONResponse:
        """``POST /predict`` with a PNG or JPEG body: the champion's answer as JSON. The image
        is fitted to the model's input by ``STREAMLOOP_TASK_IMAGE_FIT``, as ingest fits a
        frame, so a frame and the same image posted here get the same answer. With a read
        token configured, the request needs it; a body over ``max_body_bytes`` is answered
        413 (before it is read when its length is declared)."""
        if not request.url.path.rstrip("/").endswith("/predict"):
            return JSONResponse({"error": "not found; POST an image to /predict"}, 404)
        if request.method != "POST":
            return JSONResponse({"error": "use POST with an image body"}, 405)
        limit = self._auth.max_body_bytes
        for decision in (
            authorize_read(request.headers.get("authorization"), self._auth),
            check_length(
                request.headers.getlist("content-length"),
                limit,
                chunked="transfer-encoding" in request.headers,
                required=False,
            ),
        ):
            if not decision.allowed:
                return _refusal(decision)
        content_type = request.headers.get("content-type", "").split(";")[0].strip() or None
        if content_type not in (None, "image/png", "image/jpeg", "application/octet-stream"):
            return JSONResponse({"error": f"unsupported content type {content_type}"}, 415)
        body = await _read_body(request, limit)
        if body is None:
            return JSONResponse({"error": f"body larger than {limit} bytes"}, 413)
        try:
            champion = self._registry.champion(self._model_name)
        except RegistryUnavailableError as exc:
            return JSONResponse({"error": f"registry unavailable: {exc}"}, 503)
        if champion is None:
            return JSONResponse({"error": "no champion model yet"}, 503)
        ref = ModelRef(self._model_name, champion.version, champion.artifact_uri, champion.sha256)
        try:
            _, spec = self._core.model(ref)
            pixels = decode_image(
                body,
                content_type=None if content_type == "application/octet-stream" else content_type,
                max_bytes=limit,
                size=(spec.image_width, spec.image_height),
                fit=self._fit,
            )
            probs = self._core.probabilities(ref, pixels[None])[0]
        except ImageError as exc:
            return JSONResponse({"error": str(exc), "reason": exc.reason}, 400)
        except ArtifactError as exc:
            return JSONResponse({"error": f"champion not loadable: {exc}"}, 503)
        best = int(np.argmax(probs))
        return JSONResponse(
            {
                "model_name": self._model_name,
                "model_version": champion.version,
                "predicted_class": spec.classes[best],
                "confidence": float(probs[best]),
                "probabilities": {c: float(p) for c, p in zip(spec.classes, probs, strict=True)},
            }
        )


def _refusal(decision: Decision) -> JSONResponse:
    assert decision.status is not None
    return JSONResponse(
        {"error": decision.message}, int(decision.status), headers=dict(decision.headers)
    )


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it exceeds ``limit`` bytes (a chunked body declares no
    length, so the cap is kept while reading)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _options(settings: ServingSettings) -> dict[str, Any]:
    return {
        "autoscaling_config": {
            "min_replicas": settings.min_replicas,
            "initial_replicas": max(settings.min_replicas, 1),
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests,
        },
        "ray_actor_options": {"num_cpus": settings.replica_cpus},
        "max_ongoing_requests": 4,
    }


def _arguments(settings: ServingSettings) -> tuple[Any, ...]:
    return (
        str(settings.artifacts.root),
        settings.torch_threads,
        json.loads(settings.redis.model_dump_json()) | _secret(settings.redis),
        settings.model_name,
        settings.http_auth,
        settings.runtime,
        settings.task.image_fit,
    )


# The code a replica runs: the serving package and the shared library.
_CODE = (Path(__file__).parent, Path(__file__).parents[2] / "shared")


def app_fingerprint(settings: ServingSettings) -> str:
    """sha256 of what a deployment is made of: its options, its arguments (secrets included,
    so a changed password or token redeploys; only the digest leaves this process) and the
    source of the code its replicas run."""
    digest = hashlib.sha256()
    described = {"options": _options(settings), "arguments": _arguments(settings)}
    digest.update(json.dumps(described, sort_keys=True, default=_plain).encode())
    for folder in _CODE:
        for source in sorted(folder.glob("*.py")):
            digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json") | _secrets_of(value)
    return str(value)


def _secrets_of(value: Any) -> dict[str, str]:
    # model_dump masks SecretStr as "**********"; a changed token must change the digest.
    return {
        name: field.get_secret_value()
        for name, field in vars(value).items()
        if hasattr(field, "get_secret_value")
    }


def build_app(settings: ServingSettings) -> serve.Application:
    """The bound application, with autoscaling and fractional CPUs from ``settings``."""
    deployment: Any = Classifier  # the decorator makes it a Deployment; mypy sees the class
    app: serve.Application = deployment.options(**_options(settings)).bind(
        *_arguments(settings), fingerprint=app_fingerprint(settings)
    )
    return app


def _secret(redis: RedisSettings) -> dict[str, Any]:
    # model_dump_json masks SecretStr; the replica needs the real value.
    return {"password": redis.password.get_secret_value()} if redis.password else {}


class RayBackend:
    """Batches to the deployment through its handle."""

    def __init__(
        self, handle: DeploymentHandle[Any], timeout_s: float, *, owns_cluster: bool
    ) -> None:
        self._handle = handle
        self._timeout_s = timeout_s
        self._owns_cluster = owns_cluster

    def submit(self, ref: ModelRef, pixels: npt.NDArray[np.uint8]) -> _RayCall:
        """Start one call; several may be in flight at once."""
        return _RayCall(self._handle.predict.remote(pixels, ref), self._timeout_s)

    def close(self) -> None:
        """Shut Ray Serve down when this process started Ray itself. On a joined cluster the
        application stays: other ingress processes call it, and a restarted one reuses it."""
        if self._owns_cluster:
            serve.shutdown()  # type: ignore[no-untyped-call]


class _RayCall:
    def __init__(self, response: Any, timeout_s: float) -> None:
        self._response = response
        self._timeout_s = timeout_s

    def result(self) -> npt.NDArray[np.float32]:
        from ray.exceptions import RayActorError

        try:
            value: npt.NDArray[np.float32] = self._response.result(timeout_s=self._timeout_s)
        except RayActorError as exc:
            # A replica died under the call (killed, out of memory): Serve starts another
            # and routes the retry there. The batch is fine; the model tier was away.
            raise Unavailable(f"model replica lost: {exc}") from exc
        return value


QUIET_SERVE = {
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
}
"""Serve's controller loop and its replicas' and routers' metric exports at a pace that costs
little at rest (Ray's defaults: 0.1 s and 100 ms, about 0.03 cores at rest on two cores).
Model swaps do not wait for the controller (the ingress calls the replicas between batches);
deployments, autoscaling and health checks see changes within half a second. Set in this
process, so a local Ray inherits them; a head started by ``make up`` is started with them
(infra/ray/ray.sh). Either may be overridden from the environment."""


def serve_options(settings: ServingSettings) -> dict[str, Any]:
    """``serve.start``'s options: the HTTP proxy on ``http_host:http_port``, or none."""
    if not settings.http_proxy:
        return {"proxy_location": "Disabled"}
    return {"http_options": {"host": settings.http_host, "port": settings.http_port}}


def start_ray_backend(settings: ServingSettings) -> RayBackend:
    """Join the Ray cluster at ``ray_address`` (a local one started in this process when none
    is given, or, with ``ray_fallback_local``, when none answers there), start Ray Serve, and
    return the backend that calls the application. On a joined cluster where the application
    already runs with this ingress's fingerprint, its replicas are reused as they are: a
    restarted ingress answers in seconds and the model tier never noticed."""
    # On a busy machine a fresh proxy takes longer than Serve's 5 s readiness check to import
    # its web stack; three failed checks get it killed and ``serve.start`` raises. A longer
    # check (inherited by a local Ray's processes) and a retry below ride that out.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    for name, value in QUIET_SERVE.items():
        os.environ.setdefault(name, value)
    joined = _init_ray(settings)
    for attempt in range(1, 4):
        try:
            serve.start(**serve_options(settings))
            break
        except (ray.exceptions.RayError, TimeoutError) as exc:
            # The controller stays up and starts another proxy; connecting again finds it.
            if attempt == 3:
                raise
            log.warning(
                "ray serve proxy not ready; connecting again",
                extra={"attempt": attempt, "error": str(exc).splitlines()[0]},
            )
            time.sleep(2.0 * attempt)
    fingerprint = app_fingerprint(settings)
    handle = _running_app(fingerprint) if joined else None
    if handle is None:
        handle = serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
        url = f"http://{settings.http_host}:{settings.http_port}/predict"
        log.info(
            "ray serve application deployed",
            extra={"url": url if settings.http_proxy else None, "fingerprint": fingerprint[:12]},
        )
    return RayBackend(handle, settings.call_timeout_s, owns_cluster=not joined)


def _init_ray(settings: ServingSettings) -> bool:
    """Join ``ray_address`` (True) or start a local Ray in this process (False)."""
    return init_ray(
        settings.ray_address,
        fallback_local=settings.ray_fallback_local,
        object_store_mb=settings.object_store_mb,
    )


def _running_app(fingerprint: str) -> DeploymentHandle[Any] | None:
    """The handle of the application already running on the cluster with ``fingerprint``;
    None when there is none, it is not healthy, or it was deployed from other settings or
    code (then it is redeployed)."""
    status = serve.status().applications.get(APP_NAME)
    if status is None or status.status != "RUNNING":
        return None
    handle: DeploymentHandle[Any] = serve.get_app_handle(APP_NAME)
    try:
        deployed = handle.fingerprint.remote().result(timeout_s=30)
    except Exception as exc:  # noqa: BLE001 -- an old deployment without the method, a dead replica
        log.info("running application not reusable", extra={"error": str(exc).splitlines()[0]})
        return None
    if deployed != fingerprint:
        log.info(
            "running application deployed from other settings or code; redeploying",
            extra={"deployed": str(deployed)[:12], "fingerprint": fingerprint[:12]},
        )
        return None
    log.info("ray serve application reused", extra={"fingerprint": fingerprint[:12]})
    return handle
