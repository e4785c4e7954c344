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
Does not: decide what is news (``gossip/swim.py`` queues it) or pack packets
(``gossip/outbox.py`` takes from here within a packet's budget).
Reference: memberlist 0.2.2 ``queue.go`` (TransmitLimitedQueue).
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
        moves: list[tuple[int, list[_Entry]]] = []
        remaining = budget
        buckets = self._buckets
        for transmits in sorted(buckets):
            bucket = buckets[transmits]
            n = len(bucket)
            k = 0  # entries taken from this bucket
            picked: list[int] | None = None  # their indices, once they are not a prefix
            i = 0
            largest = -bucket[0][0] + overhead
            if n * largest <= remaining:
                # The whole bucket fits (each entry fits when reached: what is left
                # then is at least the cost of the rest).
                datas = [entry[2].data for entry in bucket]
                taken += datas
                remaining -= sum(map(len, datas)) + n * overhead
                k = i = n
            elif bucket[-1][0] == bucket[0][0]:
                # All of one length (suspect/dead news about same-length names): a
                # prefix of remaining // cost entries fits and then nothing else here.
                k = remaining // largest
                i = n
                taken += [entry[2].data for entry in bucket[:k]]
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
                data = entry[2].data
                remaining = room - len(data)
                taken.append(data)
                if picked is not None:
                    picked.append(i)
                k += 1
                i += 1
                if remaining < overhead:
                    break
            if k:
                if picked is not None:
                    entries = [bucket.pop(j) for j in reversed(picked)]
                    entries.reverse()
                elif k == n:  # the whole bucket moves on
                    entries = bucket
                    bucket = []
                else:  # a prefix: the common case
                    entries = bucket[:k]
                    del bucket[:k]
                moves.append((transmits, entries))
                if not bucket:
                    del buckets[transmits]
            if remaining < overhead:
                break
        # Re-file after the walk, so nothing taken is considered twice in one packet.
        # An entry's sort key does not depend on its transmit count: it moves as is, and
        # the entries taken from one bucket are still sorted.
        items = self._items
        for transmits, entries in moves:
            nt = transmits + 1
            if nt >= limit:
                for entry in entries:
                    del items[entry[2].key]
                continue
            for entry in entries:
                entry[2].transmits = nt
            target = buckets.get(nt)
            if target is None:
                buckets[nt] = entries
            else:
                for entry in entries:
                    insort(target, entry)
        return taken

    def _unlink(self, item: _Item) -> None:
        bucket = self._buckets[item.transmits]
        i = bisect_left(bucket, (-len(item.data), -item.order))
        assert bucket[i][2] is item
        del bucket[i]
        if not bucket:
            del self._buckets[item.transmits]
