"""The seam where application state (networks, endpoints, keys) rides on gossip.

Owns: the ``Delegate`` protocol the core calls and ``NullDelegate``. Does not:
implement one (the replicated tables do, ``gossip/tables/``).

``Swim`` calls its delegate synchronously. It mirrors memberlist's Delegate:
node meta, user messages, broadcasts piggybacked on gossip, and the user state
exchanged during push/pull. Our own user messages begin with a private byte
(>= 0x80). Serf peers cannot parse them and log each one, so ``Swim`` sends the
delegate's bytes (broadcasts, push/pull state, ``send_user``/``stream_user``) only to
members the delegate ``accepts_user_data`` for, and answers a push/pull with
delegate state only when the asker's own state is not serf's (docs/wire.md).
"""

from __future__ import annotations

from typing import Protocol

from gossip.effects import Effect
from gossip.members import Member


class Delegate(Protocol):
    def node_meta(self, limit: int) -> bytes:
        """Node meta to advertise (serf tag format), at most ``limit`` bytes."""
        ...

    def on_user_message(self, now: float, data: bytes) -> list[Effect]:
        """A memberlist user message (without the 0x08 byte) that is not serf's."""
        ...

    def accepts_user_data(self, peer: Member) -> bool:
        """Whether ``peer`` runs our agent and may get this delegate's user messages,
        broadcasts and push/pull state (serf agents may not). Asked per packet: cheap."""
        ...

    def take_broadcasts(self, overhead: int, budget: int) -> list[bytes]:
        """User broadcasts to piggyback, each costing len + ``overhead`` of ``budget``.
        Called only for packets to members ``accepts_user_data`` accepts."""
        ...

    def has_broadcasts(self) -> bool:
        """Whether ``take_broadcasts`` has anything. Asked after every event: cheap.
        While neither the core nor the delegate has news, gossip ticks are skipped."""
        ...

    def local_state(self, join: bool) -> bytes:
        """User state to send in a push/pull (only to peers known to be ours)."""
        ...

    def merge_remote_state(self, now: float, data: bytes, join: bool) -> list[Effect]:
        """User state received in a push/pull (serf's begins with 0x02)."""
        ...

    def on_member_change(self, now: float, old: Member | None, new: Member) -> list[Effect]:
        """A member was added or changed status/meta (used to hide rows of dead owners)."""
        ...

    def next_deadline(self) -> float:
        """When the delegate next needs ``tick`` (math.inf for never)."""
        ...

    def tick(self, now: float) -> list[Effect]:
        ...


class NullDelegate:
    """A delegate with no application state; meta is set explicitly."""

    def __init__(self, meta: bytes = b"") -> None:
        self.meta = meta

    def node_meta(self, limit: int) -> bytes:
        return self.meta[:limit]

    def accepts_user_data(self, peer: Member) -> bool:
        return False

    def on_user_message(self, now: float, data: bytes) -> list[Effect]:
        return []

    def take_broadcasts(self, overhead: int, budget: int) -> list[bytes]:
        return []

    def has_broadcasts(self) -> bool:
        return False

    def local_state(self, join: bool) -> bytes:
        return b""

    def merge_remote_state(self, now: float, data: bytes, join: bool) -> list[Effect]:
        return []

    def on_member_change(self, now: float, old: Member | None, new: Member) -> list[Effect]:
        return []

    def next_deadline(self) -> float:
        return float("inf")

    def tick(self, now: float) -> list[Effect]:
        return []
