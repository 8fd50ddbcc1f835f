"""Joining the Ray cluster a service runs on, or starting one of its own.

Serving's replicas and training's workers both run on Ray. With an address (``RAY_ADDRESS``,
the head that ``make up`` or compose starts) a service joins that cluster; without one it
starts a local Ray in its own process (``address="local"``, never Ray's default of joining
whatever cluster ran last on the machine). When nothing answers at the address, it starts a
local one instead, unless told to fail (a cluster member that must not silently run alone).

A process joining a cluster runs with the cluster's authentication mode: ``RAY_AUTH_MODE`` as
the environment sets it, and ``disabled`` when it is unset, as the heads StreamLoop starts
(``infra/ray/ray.sh``, compose) run. Left unset, Ray turns token authentication on in the
joining process whenever ``~/.ray/auth_token`` exists (any local ``ray.init()`` on the machine
writes one), and the process then refuses the replies of the cluster's workers: a call to a
replica times out although the replica answered.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

__all__ = ["AUTH_MODE_ENV", "init_ray"]

log = logging.getLogger("streamloop.ray")

AUTH_MODE_ENV = "RAY_AUTH_MODE"
"""Ray's own variable for its authentication mode: ``disabled`` or ``token``."""


def init_ray(
    address: str | None,
    *,
    fallback_local: bool = True,
    object_store_mb: int | None = None,
    num_cpus: int | None = None,
) -> bool:
    """Join ``address`` (True) or start a local Ray in this process (False). A local Ray gets
    ``object_store_mb`` of object store and ``num_cpus`` CPUs (Ray's defaults when None).
    Raises ConnectionError when nothing answers at ``address`` and not ``fallback_local``."""
    common: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "ignore_reinit_error": True,
    }
    if address:
        auth_mode = os.environ.setdefault(AUTH_MODE_ENV, "disabled")
        try:
            ray.init(address=address, **common)
            log.info("ray cluster joined", extra={"address": address, "auth_mode": auth_mode})
            return True
        except ConnectionError as exc:
            if not fallback_local:
                raise
            log.warning(
                "no ray cluster answers; starting a local ray in this process",
                extra={"address": address, "error": str(exc).splitlines()[0]},
            )
    local: dict[str, Any] = {}
    if object_store_mb is not None:
        local["object_store_memory"] = object_store_mb * 2**20
    if num_cpus is not None:
        local["num_cpus"] = num_cpus
    ray.init(address="local", **local, **common)
    return False
