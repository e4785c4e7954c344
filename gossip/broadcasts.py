"""Transmit-limited broadcast queue (memberlist's TransmitLimitedQueue).

Owns: which piggybacked messages go into the next packet. A newer message with
the same key replaces the older one (news about member X supersedes older news
about X). Selection prefers the fewest transmissions, then larger messages, then
newer ones; each message is sent ``limit`` times and then dropped.
Reference: memberlist queue.go; shared/reference/memberlist.md §1.13.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class _Item:
    key: str
    data: bytes
    order: int
    transmits: int = 0


@dataclass(slots=True)
class Broadcasts:
    _items: dict[str, _Item] = field(default_factory=dict)
    _order: int = 0

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, key: str, data: bytes) -> None:
        """Queue ``data`` (a complete encoded message), replacing any pending one for ``key``."""
        self._order += 1
        self._items.pop(key, None)
        self._items[key] = _Item(key, data, self._order)

    def pending(self, key: str) -> bool:
        return key in self._items

    def take(self, overhead: int, budget: int, limit: int) -> list[bytes]:
        """Messages that fit in ``budget`` bytes, each costing its length plus ``overhead``."""
        if not self._items or budget <= overhead:
            return []
        ranked = sorted(
            self._items.values(), key=lambda it: (it.transmits, -len(it.data), -it.order)
        )
        taken: list[bytes] = []
        used = 0
        for item in ranked:
            cost = len(item.data) + overhead
            if used + cost > budget:
                continue
            used += cost
            taken.append(item.data)
            item.transmits += 1
            if item.transmits >= limit:
                del self._items[item.key]
        return taken
