"""The SWIM core's timers: typed kinds in one heap.

Owns: the kinds of timer the core sets (``TimerKind``) and the heap they wait in.
Entries are ``(at, seq, kind, arg)``: ``seq`` grows with every timer set, so two
timers due at the same instant fire in the order they were set and ``kind`` and
``arg`` are never compared. Nothing is cancelled: whoever handles a timer
re-validates it against current state (a stale timer is a no-op).
Does not: decide what a timer does (``Swim.tick`` dispatches on the kind), read a
clock, or know the gossip beat (the core keeps that off the heap).
"""

from __future__ import annotations

import heapq
import math
from enum import IntEnum

TimerEntry = tuple[float, int, "TimerKind", object]
"""(due time, sequence number, kind, argument)."""


class TimerKind(IntEnum):
    """What a timer is for; ``arg`` is described per kind. The values index the
    core's handler table (``gossip/swim.py``)."""

    PROBE_TICK = 0
    """Start the next probe (arg None)."""
    PROBE_TIMEOUT = 1
    """No ack to the direct ping yet: probe indirectly (arg: the probe's seq no)."""
    PROBE_END = 2
    """The probe interval is over: the verdict (arg: the probe's seq no)."""
    RELAY_TIMEOUT = 3
    """A ping relayed for another member was not acked: nack it (arg: our seq no)."""
    GOSSIP_TICK = 4
    """An extra gossip round (arg "leave": the leave's last gossip)."""
    PUSH_PULL_TICK = 5
    """Push/pull with a random member (arg: the generation; only the current one runs)."""
    SUSPICION = 6
    """A suspicion may have timed out (arg: the member's name)."""
    REAP_TICK = 7
    """Forget long-dead and long-left members (arg None)."""
    REJOIN_TICK = 8
    """Re-join seeds and recently failed members (arg None)."""
    JOIN_RETRY = 9
    """Retry a join that reached nobody (arg None)."""
    QUERY_TIMEOUT = 10
    """One of our serf queries timed out (arg: the query id)."""


class Timers:
    """A heap of ``TimerEntry``; see the module docstring."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[TimerEntry] = []
        self._seq = 0

    def set(self, at: float, kind: TimerKind, arg: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, arg))

    def next_at(self) -> float:
        """When the earliest timer is due (inf: none set)."""
        heap = self._heap
        return heap[0][0] if heap else math.inf

    def pop_due(self, now: float) -> TimerEntry | None:
        """The earliest timer due at or before ``now``, removed; None if there is none."""
        heap = self._heap
        if heap and heap[0][0] <= now:
            return heapq.heappop(heap)
        return None

    def entries(self) -> list[TimerEntry]:
        """Every pending timer, in no particular order (tests and inspection)."""
        return list(self._heap)
