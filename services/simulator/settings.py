"""Settings of the simulator (``STREAMLOOP_SIMULATOR_*``)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings, service_config

__all__ = ["SimulatorSettings"]


class SimulatorSettings(ServiceSettings):
    model_config = service_config("simulator")

    scenario: str = "day-to-night"
    """Built-in scenario name or path of a scenario TOML file."""

    rate: float | None = Field(default=None, ge=0)
    """Frames per second for the fleet; None keeps the scenario's, 0 is as fast as possible."""

    cameras: int | None = Field(default=None, ge=1)
    """Number of cameras; None keeps the scenario's."""

    duration_s: float | None = Field(default=None, ge=0)
    """Seconds to run; None keeps the scenario's (0 runs until stopped)."""

    seed: int | None = None
    """Overrides the scenario's seed."""

    run_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,40}$")
    """Prefix of every frame_id; random when unset, so a rerun never collides with old ids."""

    group_id: str = "streamloop-simulator"
    """Consumer group for ``labels.requests``."""

    summary_path: str | None = None
    """Where to write a JSON summary of what was sent (per class and condition) at the end."""
