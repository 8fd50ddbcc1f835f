"""StreamLoop for applications: publish frames and labels, subscribe to predictions.

    from streamloop import FramePublisher, LabelPublisher, PredictionSubscriber

Each reads its Kafka connection from the environment (``STREAMLOOP_KAFKA_*``) unless given
``KafkaSettings``. The command line is ``streamloop --help``. The classes are loaded on first
use, so the command line does not pay for the Kafka client and image libraries it may not
need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.sdk import (
        FramePublisher,
        ImageInput,
        LabelPublisher,
        PredictionFilter,
        PredictionSubscriber,
    )
    from shared.settings import KafkaSettings

__all__ = [
    "FramePublisher",
    "ImageInput",
    "KafkaSettings",
    "LabelPublisher",
    "PredictionFilter",
    "PredictionSubscriber",
]

_HOMES = {name: "shared.sdk" for name in __all__} | {"KafkaSettings": "shared.settings"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'streamloop' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
