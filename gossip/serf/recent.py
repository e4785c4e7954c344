"""Serf's Lamport clocks and recent-message buffers, as serf keeps them.

Owns: ``LamportClock`` (serf ``lamport.go``: witness sets the clock past what was
seen), ``LtimeBuffer`` (serf's ``eventBuffer``/``queryBuffer``: one slot per Lamport
time modulo the buffer size, each holding what was seen at that time, so a message
is new once and a message older than the buffer's window is dropped), and
``Intents`` (serf's ``recentIntents``: the newest join/leave intent about a node we
do not know yet, kept ``RECENT_INTENT_TIMEOUT``).
Does not: decide what a message means or relay it (``layer.py``), or read a clock:
``now`` is an argument.
Reference: serf ``serf/lamport.go``, ``serf/serf.go`` (handleUserEvent, handleQuery,
upsertIntent, recentIntent, reapIntents), ``serf/config.go`` (EventBuffer and
QueryBuffer 512, RecentIntentTimeout 5 min); docs/wire.md "Serf's message layer".
"""

from __future__ import annotations

from dataclasses import dataclass

EVENT_BUFFER = 512
"""serf DefaultConfig EventBuffer: user events remembered by Lamport time."""
QUERY_BUFFER = 512
"""serf DefaultConfig QueryBuffer: query ids remembered by Lamport time."""
RECENT_INTENT_TIMEOUT = 300.0
"""serf DefaultConfig RecentIntentTimeout (5 min)."""
MAX_INTENTS = 4096
"""Ours (serf keeps any number): intents about unknown nodes are remote input."""
_U64 = (1 << 64) - 1


class LamportClock:
    """serf's LamportClock; saturates at uint64 so nothing unencodable is sent."""

    __slots__ = ("time",)

    def __init__(self) -> None:
        self.time = 0

    def increment(self) -> int:
        self.time = min(self.time + 1, _U64)
        return self.time

    def witness(self, ltime: int) -> None:
        if ltime >= self.time:
            self.time = min(ltime + 1, _U64)


class LtimeBuffer:
    """Keys seen per Lamport time, in ``size`` slots (slot = ltime % size)."""

    __slots__ = ("_slots",)

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("buffer size must be positive")
        self._slots: list[tuple[int, list[object]] | None] = [None] * size

    def too_old(self, ltime: int, clock: int) -> bool:
        """serf: older than the window the buffer covers below the clock."""
        size = len(self._slots)
        return clock > size and ltime < clock - size

    def add(self, ltime: int, key: object) -> int | None:
        """Remember ``key`` at ``ltime``: its index among the keys of that time if it is
        new, None if already seen (a slot holding an older time is reused)."""
        idx = ltime % len(self._slots)
        slot = self._slots[idx]
        if slot is not None and slot[0] == ltime:
            if key in slot[1]:
                return None
            slot[1].append(key)
            return len(slot[1]) - 1
        self._slots[idx] = (ltime, [key])
        return 0

    def items(self) -> list[tuple[int, object]]:
        """Every remembered (ltime, key), oldest time first."""
        out = [(s[0], k) for s in self._slots if s is not None for k in s[1]]
        out.sort(key=lambda item: item[0])
        return out


@dataclass(frozen=True, slots=True)
class Intent:
    leave: bool
    ltime: int
    at: float


class Intents:
    """serf's recentIntents: the newest intent per node not (yet) in the member list."""

    __slots__ = ("_by_node", "timeout")

    def __init__(self, timeout: float = RECENT_INTENT_TIMEOUT) -> None:
        self._by_node: dict[str, Intent] = {}
        self.timeout = timeout

    def upsert(self, now: float, node: str, leave: bool, ltime: int) -> bool:
        """serf's upsertIntent: True if this is newer than what we hold (relay it)."""
        held = self._by_node.get(node)
        if held is not None and ltime <= held.ltime and now - held.at <= self.timeout:
            return False
        self._reap(now)
        if node not in self._by_node and len(self._by_node) >= MAX_INTENTS:
            del self._by_node[next(iter(self._by_node))]  # the oldest inserted
        self._by_node.pop(node, None)
        self._by_node[node] = Intent(leave, ltime, now)
        return True

    def take(self, now: float, node: str) -> Intent | None:
        """The node's intent, if one is recent (it now joined the member list)."""
        held = self._by_node.pop(node, None)
        if held is None or now - held.at > self.timeout:
            return None
        return held

    def __len__(self) -> int:
        return len(self._by_node)

    def _reap(self, now: float) -> None:
        stale = [n for n, i in self._by_node.items() if now - i.at > self.timeout]
        for n in stale:
            del self._by_node[n]
