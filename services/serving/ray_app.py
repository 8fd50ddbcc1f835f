"""The Ray Serve application: model replicas around the serving core, and ``POST /predict``.

Replicas are stateless about versions: every call names the model version (reference and
sha256) it wants, and each replica loads and verifies a version on first use and keeps the
last few. Any replica can therefore serve any batch, and a champion swap needs no
coordination: the ingress simply names the new version in its next call.
"""

from __future__ import annotations

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
from shared.redis_registry import RedisRegistry
from shared.redis_store import connect
from shared.registry import RegistryUnavailableError
from shared.runtimes import RuntimeName
from shared.settings import RedisSettings

__all__ = [
    "APP_NAME",
    "Classifier",
    "RayBackend",
    "build_app",
    "start_ray_backend",
    "stop_ray_backend",
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


def build_app(settings: ServingSettings) -> serve.Application:
    """The bound application, with autoscaling and fractional CPUs from ``settings``."""
    deployment: Any = Classifier  # the decorator makes it a Deployment; mypy sees the class
    app: serve.Application = deployment.options(
        autoscaling_config={
            "min_replicas": settings.min_replicas,
            "initial_replicas": max(settings.min_replicas, 1),
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests,
        },
        ray_actor_options={"num_cpus": settings.replica_cpus},
        max_ongoing_requests=4,
    ).bind(
        str(settings.artifacts.root),
        settings.torch_threads,
        json.loads(settings.redis.model_dump_json()) | _secret(settings.redis),
        settings.model_name,
        settings.http_auth,
        settings.runtime,
        settings.task.image_fit,
    )
    return app


def _secret(redis: RedisSettings) -> dict[str, Any]:
    # model_dump_json masks SecretStr; the replica needs the real value.
    return {"password": redis.password.get_secret_value()} if redis.password else {}


class RayBackend:
    """Batches to the deployment through its handle."""

    def __init__(self, handle: DeploymentHandle[Any], timeout_s: float) -> None:
        self._handle = handle
        self._timeout_s = timeout_s

    def submit(self, ref: ModelRef, pixels: npt.NDArray[np.uint8]) -> _RayCall:
        """Start one call; several may be in flight at once."""
        return _RayCall(self._handle.predict.remote(pixels, ref), self._timeout_s)


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


def start_ray_backend(settings: ServingSettings) -> RayBackend:
    """Start (or join, with ``ray_address``) Ray and Ray Serve, run the application, and
    return the backend that calls it."""
    # On a busy machine a fresh proxy takes longer than Serve's 5 s readiness check to import
    # its web stack; three failed checks get it killed and ``serve.start`` raises. A longer
    # check (inherited by a local Ray's processes) and a retry below ride that out.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    ray.init(
        address=settings.ray_address or None,
        object_store_memory=None if settings.ray_address else settings.object_store_mb * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
    )
    for attempt in range(1, 4):
        try:
            serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
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
    handle = serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    log.info(
        "ray serve application running",
        extra={"url": f"http://{settings.http_host}:{settings.http_port}/predict"},
    )
    return RayBackend(handle, settings.call_timeout_s)


def stop_ray_backend(settings: ServingSettings) -> None:
    """Shut Ray Serve down when this process started Ray itself; on a shared cluster other
    ingress processes still call the deployment, so it stays."""
    if not settings.ray_address:
        serve.shutdown()  # type: ignore[no-untyped-call]
