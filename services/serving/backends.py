"""Which model tier the ingress calls: the core in process (``local``) or Ray Serve (``ray``).

Ray is imported only when the settings ask for it, so the local backend starts without it.
"""

from __future__ import annotations

from services.serving.core import ServingCore
from services.serving.ingress import Backend
from services.serving.settings import ServingSettings

__all__ = ["close_backend", "open_backend"]


def open_backend(settings: ServingSettings, local: ServingCore) -> Backend:
    """``local`` itself, or the Ray Serve application started (or joined) for the settings."""
    if settings.backend != "ray":
        return local
    from services.serving.ray_app import start_ray_backend

    return start_ray_backend(settings)


def close_backend(backend: Backend) -> None:
    """Stop what ``open_backend`` started in this process (a joined cluster stays up)."""
    close = getattr(backend, "close", None)
    if close is not None:
        close()
