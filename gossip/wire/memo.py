"""A memo bounded by the bytes its entries hold, not by their number.

Owns: ``ByteMemo``, the cache ``codec.decode_packet`` keeps of decoded datagrams:
each entry carries a weight (what its value keeps alive, in bytes) and the oldest
entries go first once the total passes the bound. Does not: decide what is worth
memoising or weigh values (the caller does), or do I/O.

Why not ``functools.lru_cache``: it bounds entries, and a 2 KiB datagram can decode
to messages holding ~1 MiB (issue 18, item 3: 4,500 such datagrams held 4.2 GB).
First in, first out rather than least recently used: a hit is then one dict lookup,
and the memo's hits are gossip repeats that arrive close together anyway.
"""

from __future__ import annotations

from typing import Generic, TypeVar

V = TypeVar("V")


class ByteMemo(Generic[V]):
    """``get``/``put`` by bytes key; at most ``max_bytes`` of weight is kept."""

    __slots__ = ("_entries", "held", "hits", "max_bytes", "misses")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: dict[bytes, tuple[V, int]] = {}
        self.held = 0
        """The total weight of the entries kept."""
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        return entry[0]

    def put(self, key: bytes, value: V, weight: int) -> None:
        """Keep ``value`` unless it alone outweighs the bound; evict the oldest to fit."""
        if weight > self.max_bytes or key in self._entries:
            return
        entries = self._entries
        held = self.held + weight
        while held > self.max_bytes:
            oldest = next(iter(entries))
            held -= entries.pop(oldest)[1]
        entries[key] = (value, weight)
        self.held = held

    def clear(self) -> None:
        self._entries.clear()
        self.held = 0
