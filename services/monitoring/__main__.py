"""Run the monitoring service: ``streamloop serve monitoring`` or ``python -m services.monitoring``.

One process runs the faust worker (join, windows, trigger, drift, comparisons) and the
dashboard, which follows the same topics on its own consumer and reads the models table from
the registry's read model in Redis.
"""

from __future__ import annotations

import logging
import sys

from services.monitoring.app import build_app
from services.monitoring.board import DashboardState
from services.monitoring.dashboard import serve_dashboard
from services.monitoring.feed import DashboardFeed
from services.monitoring.settings import MonitoringSettings
from shared.redis_registry import RedisRegistry
from shared.redis_store import connect
from shared.service import start_service
from shared.streams import run_worker

log = logging.getLogger("streamloop.monitoring")


def main() -> int:
    settings = MonitoringSettings()
    telemetry = start_service("monitoring", settings)
    registry = RedisRegistry(connect(settings.redis))
    monitor = build_app(settings, telemetry.tracer, registry=registry)
    board = DashboardState(model_name=settings.model_name)
    feed = DashboardFeed(settings.kafka, board)
    feed.start()
    dashboard = serve_dashboard(
        board,
        registry,
        settings.model_name,
        settings.trigger.threshold,
        settings.dashboard_host,
        settings.dashboard_port,
        auth=settings.http_auth,
    )
    log.info("dashboard listening", extra={"url": dashboard.url})
    try:
        return run_worker(monitor.app, settings.telemetry.log_level)
    finally:
        dashboard.close()
        feed.stop()
        telemetry.shutdown()


if __name__ == "__main__":
    sys.exit(main())
