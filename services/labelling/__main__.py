"""Run the labelling service: ``streamloop serve labelling`` or ``python -m services.labelling``."""

from __future__ import annotations

import sys

import faust

from services.labelling.app import build_app
from services.labelling.settings import LabellingSettings
from shared.service import start_service


def main() -> int:
    settings = LabellingSettings()
    telemetry = start_service("labelling", settings)
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
