"""The training data as logic sees it: examples read from the ``examples`` log, and splits.

``shared.example_log.read_examples`` builds an ``ExampleTable`` from the topic.

``split_of`` assigns each frame id, by a hash of the id alone, to ``train``, ``holdout`` or
``reference``. The assignment never changes, so no model version ever trains on a frame that
any version is scored on: champion and candidate compare fairly on the same holdouts.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "ExampleRecord",
    "ExampleTable",
    "Split",
    "split_of",
]

log = logging.getLogger(__name__)

Split = Literal["train", "holdout", "reference"]


def split_of(frame_id: str, holdout_share: float, reference_share: float) -> Split:
    """Where a frame belongs, from the first 8 bytes of sha256(frame_id) as a number in [0, 1):
    below ``reference_share`` the fixed reference holdout, then ``holdout_share`` for the
    fresh holdout, the rest trains."""
    bucket = int.from_bytes(hashlib.sha256(frame_id.encode()).digest()[:8], "big") / 2**64
    if bucket < reference_share:
        return "reference"
    if bucket < reference_share + holdout_share:
        return "holdout"
    return "train"


@dataclass(frozen=True)
class ExampleRecord:
    """One example without its pixels; ``index`` is its row in ``ExampleTable.pixels``."""

    frame_id: str
    camera_id: str
    label: str
    condition: str | None
    captured_at: datetime
    labelled_at: datetime
    partition: int
    offset: int
    index: int


@dataclass
class ExampleTable:
    """The current examples up to ``end_offsets`` (partition -> offset of the next record)."""

    records: list[ExampleRecord]
    pixels: npt.NDArray[np.uint8]
    end_offsets: dict[int, int]
    skipped: dict[str, int] = field(default_factory=dict)
    """Records left out, by reason (``schema``, ``wrong_size``, ``unknown_class``...)."""

    def __len__(self) -> int:
        return len(self.records)

    def select(self, records: Iterable[ExampleRecord]) -> npt.NDArray[np.uint8]:
        """The pixels of ``records``, stacked in their order."""
        rows = [r.index for r in records]
        return self.pixels[np.asarray(rows, dtype=np.int64)] if rows else self.pixels[:0]
