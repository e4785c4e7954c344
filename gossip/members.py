"""Member values and the one rule that decides which news about a member wins.

Owns: ``Status``, the immutable ``Member`` value and ``supersedes``. Nothing
else decides status precedence. Members are shared, immutable values so that a
simulator with 10,000 nodes can hold them cheaply.
Does not: hold the table of members (``membertable.py``) or change it (``swim.py``).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field, replace
from enum import IntEnum

from gossip.limits import INCARNATION_MAX


class Status(IntEnum):
    """Ordered so that, at equal incarnation, a higher value overrides a lower one."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    addr: str
    port: int
    incarnation: int
    status: Status
    meta: bytes
    vsn: bytes
    changed_at: float
    """Driver time of the last status change (used for reaping and gossip-to-the-dead)."""
    wire_state: bytes | None = field(default=None, init=False, repr=False, compare=False)
    """This value's encoded push/pull node state, filled in by the first push/pull that
    sends it (``swim``). Members are immutable and shared between the tables of a
    simulator's nodes, so each state is encoded once, not once per push/pull."""

    @property
    def address(self) -> tuple[str, int]:
        return (self.addr, self.port)

    @property
    def pmax(self) -> int:
        return self.vsn[1] if len(self.vsn) == 6 else 0

    def evolve(self, **changes: object) -> Member:
        return replace(self, **changes)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=65536)
def ip_bytes(addr: str) -> bytes:
    """Wire form of an address: 4 bytes for IPv4, 16 for IPv6 (memberlist uses To4).

    Memoised: push/pull encodes every member's address, and ``ipaddress`` parsing was
    ~40 % of that cost in 10,000-node simulations."""
    return ipaddress.ip_address(addr).packed


@functools.lru_cache(maxsize=65536)
def ip_text(raw: bytes) -> str:
    """Inverse of ``ip_bytes``; IPv4-mapped IPv6 becomes plain IPv4. Raises ValueError."""
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if len(raw) == 16:
        v6 = ipaddress.IPv6Address(raw)
        return str(v6.ipv4_mapped) if v6.ipv4_mapped else str(v6)
    raise ValueError(f"address of {len(raw)} bytes")


def supersedes(status: Status, incarnation: int, current: Member) -> bool:
    """Whether news (status, incarnation) about a known member overrides what we hold.

    SWIM's precedence: a higher incarnation wins; at equal incarnation suspect
    beats alive, and dead/left beat both. Dead and left are final for an
    incarnation: an alive must carry a strictly higher one to resurrect.

    Except at the ceiling, ``INCARNATION_MAX``, where no higher one exists: there an
    alive beats the rest, so a member whose incarnation someone pushed to the top can
    still refute (and a restart still brings it back); suspect beats alive there too,
    so a member that stops refuting still fails (docs/design.md).
    """
    if incarnation != current.incarnation:
        return incarnation > current.incarnation
    if incarnation == INCARNATION_MAX and status == Status.ALIVE:
        return current.status != Status.ALIVE
    return status > current.status and not (
        current.status >= Status.DEAD and status >= Status.DEAD
    )
