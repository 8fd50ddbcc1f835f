"""Redis connection from settings (the one place that builds a client)."""

from __future__ import annotations

import redis

from shared.settings import RedisSettings

__all__ = ["connect"]


def connect(settings: RedisSettings) -> redis.Redis:
    """A client for ``settings.url``; username and password from settings win over the URL's."""
    kwargs: dict[str, object] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
        "health_check_interval": 30,
        "retry_on_timeout": True,
    }
    if settings.username:
        kwargs["username"] = settings.username
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    return redis.Redis.from_url(settings.url, **kwargs)
