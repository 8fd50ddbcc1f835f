"""The seek fence of our faust consumer (``shared.stream_consumer``), on a model of faust's
fetch loop: a record below its partition's read offset is dropped as already handed out,
and a seek to the committed offsets clears what the agents held (as a rebalance does)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from faust.types import TP

from shared.settings import KafkaSettings
from shared.stream_consumer import FencedConsumer, SeekFence
from shared.streams import new_app

PART = TP("predictions", 0)


@dataclass
class Record:
    offset: int
    tp: TP = PART


class FaustLike:
    """The parts of faust's consumer the fence stands on, over one partition of 40 records
    fetched in batches of 10."""

    def __init__(self, committed: int) -> None:
        self.committed = committed
        self.next_offset = committed
        self._read_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self.handed: list[int] = []  # what the agents hold (cleared by a seek)
        self.dropped: list[int] = []

    async def seek_to_committed(self) -> dict[TP, int]:
        await asyncio.sleep(0)  # the committed offsets come from the broker
        self.next_offset = self.committed
        return {PART: self.committed}

    async def position(self, tp: TP) -> int:
        return self.next_offset

    async def perform_seek(self) -> None:
        self.handed.clear()
        offsets = await self.seek_to_committed()
        self._read_offset.update(offsets)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Record]]:
        batch = range(self.next_offset, min(self.next_offset + 10, 40))
        self.next_offset = batch.stop
        for offset in batch:
            yield PART, Record(offset)

    async def fetch_loop(self, on_record: Callable[[int], Awaitable[None]]) -> None:
        """faust's drain loop, as far as read offsets go."""
        while self.next_offset < 40:
            async for tp, record in self.getmany(timeout=1.0):
                read = self._read_offset[tp]
                if read is None or record.offset >= read:
                    await on_record(record.offset)
                    self.handed.append(record.offset)
                    self._read_offset[tp] = record.offset
                else:
                    self.dropped.append(record.offset)


class Fenced(SeekFence, FaustLike):  # type: ignore[misc]  # faust's consumer, modelled
    pass


def seek_while_handing(consumer: FaustLike, offset: int) -> Callable[[int], Awaitable[None]]:
    """A hand-over that, the first time at ``offset``, lasts until a rebalance's seek has
    ended."""
    seeks: list[int] = []

    async def on_record(handed: int) -> None:
        if handed == offset and not seeks:
            seeks.append(handed)
            await consumer.perform_seek()

    return on_record


def test_faust_alone_loses_what_it_had_handed_out_when_a_seek_ends_mid_batch() -> None:
    # The case the fence exists for, shown on the model without it: offsets 10 to 13 were
    # handed out before the seek and cleared by it; the rest of the old batch (15 to 19)
    # moved the read offset to 19, so 10 to 18 were dropped when fetched again.
    consumer = FaustLike(committed=10)
    asyncio.run(consumer.fetch_loop(seek_while_handing(consumer, 14)))
    assert sorted(set(range(10, 40)) - set(consumer.handed)) == [10, 11, 12, 13]
    assert consumer.dropped == list(range(10, 19))


def test_the_fence_hands_out_every_record_after_a_seek_that_ends_mid_batch() -> None:
    consumer = Fenced(committed=10)
    asyncio.run(consumer.fetch_loop(seek_while_handing(consumer, 14)))
    assert sorted(set(consumer.handed)) == list(range(10, 40))
    assert consumer.dropped == []
    # 14, whose hand-over the seek ended during, stays handed out (and comes twice); the
    # rest of the batch fetched before the seek (15 to 19) was set aside, not handed out
    # ahead of the records before it.
    assert consumer.set_aside == 5
    assert consumer.handed == [14, *range(10, 40)]


def test_a_seek_that_ends_with_the_batch_sets_nothing_aside() -> None:
    consumer = Fenced(committed=10)
    asyncio.run(consumer.fetch_loop(seek_while_handing(consumer, 19)))  # the batch's last
    assert sorted(set(consumer.handed)) == list(range(10, 40))
    assert consumer.dropped == []  # 19's read offset was put back before the refetch
    assert consumer.set_aside == 0


def test_a_batch_fetched_after_the_seek_moved_the_position_is_handed_out_whole() -> None:
    # The seek has moved the consumer to the committed offset and is still under way (it
    # sets the read offsets last) when the next batch is fetched; it ends mid-batch. The
    # batch is no older than the seek: setting it aside would lose it.
    consumer = Fenced(committed=10)
    consumer._seeks = 1

    async def hand_out() -> list[int]:
        got = []
        async for _, record in consumer.getmany(timeout=1.0):
            got.append(record.offset)
            if record.offset == 12:
                consumer._seeks = 2
        async for _, record in consumer.getmany(timeout=1.0):
            got.append(record.offset)
        return got

    assert asyncio.run(hand_out()) == list(range(10, 30))
    assert consumer.set_aside == 0


def test_new_apps_consume_through_the_fenced_consumer() -> None:
    app = new_app("unit-fenced", KafkaSettings(), partitions=3)
    assert isinstance(app.consumer, FencedConsumer)
