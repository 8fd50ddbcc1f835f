"""Run the labelling service: ``streamloop serve labelling`` or ``python -m services.labelling``."""

from __future__ import annotations

import logging
import sys

import faust

from services.labelling.app import build_app
from services.labelling.settings import LabellingSettings
from shared.kafka_admin import wait_for_kafka
from shared.metrics import serve_metrics
from shared.telemetry import configure_logging, setup_telemetry
from shared.topics import provision

log = logging.getLogger("streamloop.labelling")


def main() -> int:
    settings = LabellingSettings()
    configure_logging("labelling", settings.telemetry)
    telemetry = setup_telemetry("labelling", settings.telemetry)
    port = serve_metrics(settings.metrics_port)
    log.info("starting", extra={"metrics_port": port})
    wait_for_kafka(settings.kafka, timeout_s=settings.kafka_wait_s)
    if settings.provision_topics:
        provision(settings.kafka)
    app = build_app(settings)
    worker = faust.Worker(
        app,
        loglevel=settings.telemetry.log_level,
        quiet=True,
        override_logging=False,
        redirect_stdouts=False,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
