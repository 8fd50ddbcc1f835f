"""Settings of the monitoring service (``STREAMLOOP_MONITORING_*``; nested policies with
``__``, e.g. ``STREAMLOOP_MONITORING_TRIGGER__THRESHOLD=0.8``)."""

from __future__ import annotations

from pydantic import Field

from services.monitoring.drift import DriftPolicy
from services.monitoring.monitor import MonitorPolicy
from services.monitoring.selection import SelectionPolicy
from services.monitoring.trigger import TriggerPolicy
from services.monitoring.windows import WindowPolicy
from shared.auth import ApiAuthSettings
from shared.registry import DEFAULT_MODEL_NAME
from shared.settings import ServiceSettings, service_config

__all__ = ["MonitoringSettings"]


class MonitoringSettings(ServiceSettings):
    model_config = service_config("monitoring")

    app_id: str = "streamloop-monitoring"
    """faust application id: the consumer group and the prefix of its internal topics."""

    model_name: str = DEFAULT_MODEL_NAME
    """The model whose predictions are monitored (others are counted and skipped)."""

    partitions: int = Field(default=3, ge=1)
    """Partitions of the internal join topic and of its table's changelog."""

    join_ttl_s: float = Field(default=600.0, gt=0)
    """How long a prediction waits for its label (and a label for its prediction)."""

    sweep_interval_s: float = Field(default=10.0, gt=0)
    """How often expired join entries are removed."""

    tick_interval_s: float = Field(default=5.0, gt=0)
    """How often quiet windows are checked for the time fallback."""

    window: WindowPolicy = WindowPolicy()
    trigger: TriggerPolicy = TriggerPolicy()
    drift: DriftPolicy = DriftPolicy()
    requests: SelectionPolicy = SelectionPolicy()
    """The label budget: requests per camera and minute, disagreements first, then the least
    confident (``STREAMLOOP_MONITORING_REQUESTS__PER_CAMERA_MINUTE``)."""

    compare_every: int = Field(default=50, ge=1)
    """Publish the champion/challenger comparison every this many shared labelled frames."""

    compare_early: int = Field(default=200, ge=0)
    """While a pair has at most this many shared labelled frames, also publish its comparison
    on every discordant frame (one version right, the other wrong), so the registry's
    sequential test can decide a clear winner within a dozen labels. At most this many extra
    comparisons per pair; 0 turns it off."""

    dashboard_host: str = "127.0.0.1"
    """Interface of the dashboard (``0.0.0.0`` in a container)."""

    dashboard_port: int = Field(default=8720, ge=0, le=65535)
    """Port of the dashboard; 0 picks a free one."""

    http_auth: ApiAuthSettings = Field(default_factory=ApiAuthSettings)
    """Tokens of the dashboard (shared ``STREAMLOOP_HTTP_*``; this service only:
    ``STREAMLOOP_MONITORING_HTTP_AUTH__*``). With a read token, the page and ``/api/state``
    need it (a browser asks for it: any user name, the token as password); ``/healthz``
    stays open. The dashboard takes no operator actions."""

    def policy(self) -> MonitorPolicy:
        return MonitorPolicy(
            window=self.window,
            trigger=self.trigger,
            drift=self.drift,
            requests=self.requests,
            compare_every=self.compare_every,
            compare_early=self.compare_early,
        )
