"""Transmit-limited broadcast queue (memberlist's TransmitLimitedQueue).

Owns: which piggybacked messages go into the next packet. A newer message with
the same key replaces the older one (news about member X supersedes older news
about X). Selection prefers the fewest transmissions, then larger messages, then
newer ones; each message is sent ``limit`` times and then dropped.

Layout: one bucket per transmit count, each a list kept sorted by (larger, newer)
first. ``take`` walks the buckets in order and, inside a bucket, bisects straight
to the first message that still fits, so a packet costs O(taken · log n) rather
than a sort of the whole queue (a mass failure at 10,000 nodes keeps hundreds of
messages queued on every node while every packet is filled).
Reference: memberlist queue.go; shared/reference/memberlist.md §1.13.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Item:
    key: str
    data: bytes
    order: int
    transmits: int = 0


# A bucket entry: (-len(data), -order, item). ``order`` is unique, so tuple
# comparison never reaches the item.
_Entry = tuple[int, int, _Item]


@dataclass(slots=True)
class Broadcasts:
    _items: dict[str, _Item] = field(default_factory=dict)
    _buckets: dict[int, list[_Entry]] = field(default_factory=dict)
    _order: int = 0

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, key: str, data: bytes) -> None:
        """Queue ``data`` (a complete encoded message), replacing any pending one for ``key``."""
        self._order += 1
        old = self._items.pop(key, None)
        if old is not None:
            self._unlink(old)
        item = _Item(key, data, self._order)
        self._items[key] = item
        insort(self._buckets.setdefault(0, []), (-len(data), -item.order, item))

    def pending(self, key: str) -> bool:
        return key in self._items

    def discard(self, key: str) -> None:
        """Forget the pending message for ``key``, if any."""
        item = self._items.pop(key, None)
        if item is not None:
            self._unlink(item)

    def take(self, overhead: int, budget: int, limit: int) -> list[bytes]:
        """Messages that fit in ``budget`` bytes, each costing its length plus ``overhead``.

        Order: fewest transmits first, then larger, then newer; a message that does not
        fit is skipped and smaller ones after it are still considered."""
        if not self._items or budget <= overhead:
            return []
        taken: list[bytes] = []
        moved: list[_Item] = []
        remaining = budget
        buckets = self._buckets
        for transmits in sorted(buckets):
            bucket = buckets[transmits]
            picked: list[int] = []
            i = 0
            while remaining >= overhead:
                # First entry with len(data) <= room, i.e. -len >= -room.
                i = bisect_left(bucket, (overhead - remaining,), i)
                if i >= len(bucket):
                    break
                item = bucket[i][2]
                remaining -= len(item.data) + overhead
                taken.append(item.data)
                picked.append(i)
                i += 1
            if picked:
                for j in reversed(picked):
                    moved.append(bucket.pop(j)[2])
                if not bucket:
                    del buckets[transmits]
            if remaining < overhead:
                break
        # Re-file after the walk, so nothing taken is considered twice in one packet.
        for item in moved:
            item.transmits += 1
            if item.transmits >= limit:
                del self._items[item.key]
            else:
                insort(buckets.setdefault(item.transmits, []), (-len(item.data), -item.order, item))
        return taken

    def _unlink(self, item: _Item) -> None:
        bucket = self._buckets[item.transmits]
        i = bisect_left(bucket, (-len(item.data), -item.order))
        assert bucket[i][2] is item
        del bucket[i]
        if not bucket:
            del self._buckets[item.transmits]
