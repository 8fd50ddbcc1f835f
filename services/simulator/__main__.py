"""Run the simulator: ``streamloop serve simulator`` (settings from the environment) or
``streamloop simulate --scenario NAME`` (the same, with a live line of counts)."""

from __future__ import annotations

import sys

from services.simulator.app import run
from services.simulator.settings import SimulatorSettings


def main() -> int:
    run(SimulatorSettings())
    return 0


if __name__ == "__main__":
    sys.exit(main())
