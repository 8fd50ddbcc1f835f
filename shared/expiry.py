"""Due times of the entries of a partitioned join table (labelling's and monitoring's)."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ExpiryIndex"]


class ExpiryIndex:
    """When the entries of a partitioned join table fall due, so that a sweep reads only the
    entries that expire instead of decoding the whole table.

    Entries are dicts that name their partition (``"p"``); ``due_of`` says when one expires
    (epoch seconds). Every write of an entry is ``add``-ed; a key written again is queued
    again, and the sweep reads the entry itself before it names it expired, so a stale item
    costs one lookup. Entries that came back from the changelog (a restart, a rebalance) were
    never added: after ``forget()`` every partition is scanned once, fully, at its next sweep.
    The index holds one small tuple per write, for as long as the entry lives."""

    def __init__(self, due_of: Callable[[Mapping[str, Any]], float]) -> None:
        self._due_of = due_of
        self._heaps: dict[int, list[tuple[float, str]]] = {}
        self._scanned: set[int] = set()
        self._held: dict[int, int] = {}

    def add(self, key: str, entry: Mapping[str, Any], *, new: bool) -> None:
        """Queue ``entry``'s due time; ``new`` when the table did not hold ``key`` before."""
        partition = int(entry.get("p", 0))
        heapq.heappush(self._heaps.setdefault(partition, []), (self._due_of(entry), key))
        if new:
            self._held[partition] = self._held.get(partition, 0) + 1

    def forget(self) -> None:
        """Drop everything known: the table was recovered (call from its ``on_recover``)."""
        self._heaps.clear()
        self._scanned.clear()
        self._held.clear()

    def held(self) -> int:
        """Entries in the table, as far as writes and sweeps tell (without counting the
        table, which a disk-backed store does by reading every key)."""
        return sum(self._held.values())

    def expired(
        self, table: Mapping[str, dict[str, Any]], partition: int, now: float
    ) -> list[tuple[str, dict[str, Any]]]:
        """The entries of ``partition`` due at ``now``, each once; the caller deletes them."""
        if partition not in self._scanned:
            held = 0
            for key in list(table):
                entry = table.get(key)
                if entry is not None and int(entry.get("p", 0)) == partition:
                    self.add(key, entry, new=False)
                    held += 1
            self._held[partition] = held
            self._scanned.add(partition)
        heap = self._heaps.get(partition)
        out: list[tuple[str, dict[str, Any]]] = []
        seen: set[str] = set()
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            if key in seen:
                continue
            entry = table.get(key)
            if entry is None or int(entry.get("p", 0)) != partition:
                continue  # gone already, or it lives in another partition now
            if self._due_of(entry) > now:
                continue  # written again since, with a later due time queued
            seen.add(key)
            out.append((key, entry))
        self._held[partition] = max(0, self._held.get(partition, 0) - len(out))
        return out

    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())
