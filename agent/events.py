"""In-process publish/subscribe of agent events (member changes).

Owns: ``EventHub``. The driver publishes synchronously (it never waits on a
reader); each subscriber has its own bounded channel. A subscriber that falls
behind by more than its buffer is cut off (its channel is closed after an
``overflow`` marker) rather than slowing the membership loop or growing memory.
Used by the control API's ``events`` stream (``agentctl events --follow``).
Does not: decide what is an event (``agent.membership.driver`` publishes) or
serialise it (``agent.control.protocol``). Not the core's effects
(``gossip.effects``) nor the dataplane's kernel events (``dataplane.events``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

Event = dict[str, Any]
OVERFLOW: Event = {"type": "overflow"}
"""Last item a lagging subscriber receives before its channel ends."""


class EventHub:
    def __init__(self, buffer: int = 256) -> None:
        self.buffer = buffer
        self.dropped_subscribers = 0
        self._subscribers: list[trio.MemorySendChannel[Event]] = []

    @contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[Event]]:
        # One spare slot so the overflow marker always fits.
        send, receive = trio.open_memory_channel[Event](self.buffer + 1)
        self._subscribers.append(send)
        try:
            yield receive
        finally:
            if send in self._subscribers:
                self._subscribers.remove(send)
            send.close()
            receive.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, event: Event) -> None:
        for send in list(self._subscribers):
            lagging = send.statistics().current_buffer_used >= self.buffer
            try:
                send.send_nowait(OVERFLOW if lagging else event)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                lagging = True  # the reader went away: forget it all the same
            if lagging:
                self._subscribers.remove(send)
                self.dropped_subscribers += 1
                send.close()
