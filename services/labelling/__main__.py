"""Run the labelling service: ``streamloop serve labelling`` or ``python -m services.labelling``."""

from __future__ import annotations

import sys

from services.labelling.app import build_app
from services.labelling.settings import LabellingSettings
from shared.service import start_service
from shared.streams import run_worker


def main() -> int:
    settings = LabellingSettings()
    telemetry = start_service("labelling", settings)
    try:
        return run_worker(build_app(settings), settings.telemetry.log_level)
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    sys.exit(main())
