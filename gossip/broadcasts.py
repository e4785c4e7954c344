"""Transmit-limited broadcast queue (memberlist's TransmitLimitedQueue).

Owns: which piggybacked messages go into the next packet. A newer message with
the same key replaces the older one (news about member X supersedes older news
about X). Selection prefers the fewest transmissions, then larger messages, then
newer ones; each message is sent ``limit`` times and then dropped.

Layout: one bucket per transmit count, each a list kept sorted by (larger, newer)
first. ``take`` walks the buckets in order and, inside a bucket, bisects straight
to the first message that still fits, so a packet costs O(taken · log n) rather
than a sort of the whole queue (a mass failure at 10,000 nodes keeps hundreds of
messages queued on every node while every packet is filled). A bucket knows its
bytes, and an item its bucket rather than its transmit count: when a whole bucket
fits (the usual packet takes every queued message) it is taken by one C-level pass
and moves on to the next count as one object, without touching its items.
Does not: decide what is news (``gossip/swim.py`` queues it) or pack packets
(``gossip/outbox.py`` takes from here within a packet's budget).
Reference: memberlist 0.2.2 ``queue.go`` (TransmitLimitedQueue).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from operator import itemgetter


@dataclass(slots=True)
class _Item:
    key: str
    data: bytes
    order: int
    bucket: _Bucket | None = None
    """The bucket it waits in (its transmit count is the bucket's)."""


# A bucket entry: (-len(data), -order, data, item). ``order`` is unique, so tuple
# comparison never reaches the data or the item.
_Entry = tuple[int, int, bytes, _Item]
_data_of = itemgetter(2)


@dataclass(slots=True)
class _Bucket:
    transmits: int
    entries: list[_Entry] = field(default_factory=list)
    size: int = 0
    """The bytes of the entries' data."""
    datas: list[bytes] = field(default_factory=list)
    """The entries' data, in their order: a bucket taken whole is a copy of this list
    (at 10,000 nodes even a C-level pass over the entry tuples was ~4 % of a run)."""

    def insert(self, entry: _Entry) -> None:
        i = bisect_left(self.entries, entry)  # keys are unique: insort's place
        self.entries.insert(i, entry)
        self.datas.insert(i, entry[2])


@dataclass(slots=True)
class Broadcasts:
    _items: dict[str, _Item] = field(default_factory=dict)
    _buckets: dict[int, _Bucket] = field(default_factory=dict)
    _order: int = 0

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, key: str, data: bytes) -> None:
        """Queue ``data`` (a complete encoded message), replacing any pending one for ``key``."""
        self._order += 1
        old = self._items.pop(key, None)
        if old is not None:
            self._unlink(old)
        bucket = self._buckets.get(0)
        if bucket is None:
            bucket = self._buckets[0] = _Bucket(0)
        item = _Item(key, data, self._order, bucket)
        self._items[key] = item
        bucket.insert((-len(data), -item.order, data, item))
        bucket.size += len(data)

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
        moves: list[_Bucket] = []
        """Taken whole (still at their old count) or the part taken of one (a new one)."""
        remaining = budget
        buckets = self._buckets
        for transmits in sorted(buckets):
            b = buckets[transmits]
            bucket = b.entries
            n = len(bucket)
            cost = b.size + n * overhead
            if cost <= remaining:
                # The whole bucket fits: taking in order would take every entry (what
                # is left when one is reached is at least the cost of the rest).
                taken += b.datas
                remaining -= cost
                del buckets[transmits]
                moves.append(b)
                if remaining < overhead:
                    break
                continue
            k = 0  # entries taken from this bucket
            picked: list[int] | None = None  # their indices, once they are not a prefix
            i = 0
            largest = -bucket[0][0] + overhead
            if bucket[-1][0] == bucket[0][0]:
                # All of one length (suspect/dead news about same-length names): a
                # prefix of remaining // cost entries fits and then nothing else here.
                k = remaining // largest
                i = n
                taken += b.datas[:k]
                remaining -= k * largest
            while i < n:
                room = remaining - overhead  # >= 0 here
                entry = bucket[i]
                if -entry[0] > room:
                    # Entry i does not fit: bisect to the first with len(data) <= room,
                    # i.e. -len >= -room. Usually entry i fits and no search is needed.
                    i = bisect_left(bucket, (-room,), i + 1)
                    if i >= n:
                        break
                    entry = bucket[i]
                    if picked is None:
                        picked = list(range(k))
                data = entry[2]
                remaining = room - len(data)
                taken.append(data)
                if picked is not None:
                    picked.append(i)
                k += 1
                i += 1
                if remaining < overhead:
                    break
            if k:
                datas = b.datas
                if picked is not None:
                    entries = [bucket.pop(j) for j in reversed(picked)]
                    entries.reverse()
                    for j in reversed(picked):
                        del datas[j]
                    part = list(map(_data_of, entries))
                else:  # a prefix: the common case (not all: the whole did not fit)
                    entries = bucket[:k]
                    del bucket[:k]
                    part = datas[:k]
                    del datas[:k]
                size = sum(map(len, part))
                b.size -= size
                moves.append(_Bucket(transmits, entries, size, part))
                if not bucket:
                    del buckets[transmits]
            if remaining < overhead:
                break
        # Re-file after the walk, so nothing taken is considered twice in one packet.
        # An entry's sort key does not depend on its transmit count: it moves as is, and
        # the entries taken from one bucket are still sorted.
        items = self._items
        for moved in moves:
            nt = moved.transmits + 1
            if nt >= limit:
                for entry in moved.entries:
                    del items[entry[3].key]
                # Its items point at it: without its entries no cycle is left for the
                # cyclic GC (which the simulator runs young-only during a run).
                moved.entries = []
                moved.datas = []
                continue
            target = buckets.get(nt)
            if target is None:
                moved.transmits = nt
                buckets[nt] = moved
                if moved.entries and moved.entries[0][3].bucket is not moved:  # a part
                    for entry in moved.entries:
                        entry[3].bucket = moved
            else:
                for entry in moved.entries:
                    target.insert(entry)
                    entry[3].bucket = target
                target.size += moved.size
        return taken

    def _unlink(self, item: _Item) -> None:
        bucket = item.bucket
        assert bucket is not None
        entries = bucket.entries
        i = bisect_left(entries, (-len(item.data), -item.order))
        assert entries[i][3] is item
        del entries[i]
        del bucket.datas[i]
        bucket.size -= len(item.data)
        if not entries:
            del self._buckets[bucket.transmits]
