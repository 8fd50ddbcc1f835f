"""faust's Kafka consumer, fenced at each seek to the committed offsets.

faust's fetch loop drops a record whose offset is below its partition's *read offset* (the
last offset it handed to the agents), so that a record fetched twice is processed once.
After a rebalance it seeks every partition back to its committed offset and sets the read
offsets to match. It does so while its fetch loop runs: the streams' partitions are
resumed before the seek, and the loop can be in the middle of a batch fetched before the
seek. That batch's records, further on than the committed offsets, then move the read
offsets past them again, and the records read again from the committed offsets are dropped
as duplicates although no agent ever finished them. A monitoring worker that lost them
never filled its windows (`docs/reliability.md`, "The monitor after a rebalance").

``FencedConsumer`` checks a batch against the consumer's positions once a seek has ended
while the batch was handed out. A record at or past its partition's position will be
fetched again, so it is set aside; one before it was fetched after the seek, and is handed
out. The read offset the fetch loop set for the record it was handing over as the seek ended
is put back to just before the position, where the seek left it. Records handed over during
the seek can come twice, as after any rebalance; our agents are idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, cast

from aiokafka.errors import IllegalStateError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

__all__ = ["FencedConsumer", "FencedTransport", "SeekFence"]

log = logging.getLogger("streamloop.streams")

if TYPE_CHECKING:
    _Consumer = faust_aiokafka.Consumer
else:
    _Consumer = object


class SeekFence(_Consumer):
    """Fences a faust consumer's batches at ``perform_seek`` (mixed in before the
    consumer class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Odd while a seek to the committed offsets is under way; every seek adds two.
        self._seeks = 0
        self.set_aside = 0
        """Records fetched before a seek and not handed out (they are fetched again)."""

    async def perform_seek(self) -> None:
        self._seeks += 1
        try:
            await super().perform_seek()
        finally:
            self._seeks += 1

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        seeks = self._seeks
        last: TP | None = None
        positions: dict[TP, int | None] | None = None  # from the last seek that ended
        batch = cast(AsyncGenerator[tuple[TP, Message], None], super().getmany(timeout))
        try:
            async for tp, message in batch:
                if self._seek_ended(seeks):
                    seeks, positions = self._seeks, {}
                    await self._put_back(last, positions)
                if positions is not None:
                    if tp not in positions:
                        positions[tp] = await self._position(tp)
                    position = positions[tp]
                    if position is None or message.offset >= position:
                        self._set_aside(tp, message.offset)
                        continue
                last = tp
                yield tp, message
            if self._seek_ended(seeks):
                await self._put_back(last, {})
        finally:
            await batch.aclose()

    def _seek_ended(self, seeks: int) -> bool:
        """Whether a seek to the committed offsets has ended since ``seeks`` was read."""
        return self._seeks != seeks and not self._seeks % 2

    async def _position(self, tp: TP) -> int | None:
        """The next offset the consumer fetches of ``tp``; None once it is not assigned."""
        try:
            return await self.position(tp)
        except IllegalStateError:  # no longer assigned: its next holder starts at the commit
            return None

    async def _put_back(self, last: TP | None, positions: dict[TP, int | None]) -> None:
        """The fetch loop set ``last``'s read offset after handing over its record, maybe
        after the seek had set it; if the record comes again, the read offset goes back to
        just before the position, as the seek left it."""
        if last is None:
            return
        positions[last] = position = await self._position(last)
        read = self._read_offset[last]
        if position is not None and read is not None and read >= position:
            self._read_offset[last] = position - 1

    def _set_aside(self, tp: TP, offset: int) -> None:
        self.set_aside += 1
        log.info(
            "a record fetched before the seek to the committed offsets was set aside at "
            "%s[%d]@%d; it is fetched again",
            tp.topic,
            tp.partition,
            offset,
        )


class FencedConsumer(SeekFence, faust_aiokafka.Consumer):
    """The aiokafka consumer of faust, with its batches fenced by ``perform_seek``."""


class FencedTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport with ``FencedConsumer``."""

    Consumer = FencedConsumer
