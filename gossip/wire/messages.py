"""Wire messages of the memberlist protocol (as spoken by serf 0.9.4 / memberlist 0.2.2).

Owns: the value types for every message the core sends or receives, and the
message-type numbers. Does not: encode or decode bytes (``messagecodec.py``,
``codec.py``).

The type numbers are protocol: append-only, never renumber.
Reference: memberlist 0.2.2 ``net.go`` (messageType and the message structs); docs/wire.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class MessageType(IntEnum):
    """memberlist message type byte (an iota sequence in Go; values are protocol)."""

    PING = 0
    INDIRECT_PING = 1
    ACK = 2
    SUSPECT = 3
    ALIVE = 4
    DEAD = 5
    PUSH_PULL = 6
    COMPOUND = 7
    USER = 8
    COMPRESS = 9
    ENCRYPT = 10
    NACK = 11
    HAS_CRC = 12
    ERR = 13
    HAS_LABEL = 244


class NodeState(IntEnum):
    """State numbers used in push/pull node states (``pushNodeState.State``)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


# What serf advertises: memberlist protocol 1..5 speaking 2, serf delegate 2..5 speaking 5.
# Always exactly 6 bytes: a shorter Vsn crashes memberlist 0.2.2 (docs/wire.md, "Serf hazards").
DEFAULT_VSN = bytes([1, 5, 2, 2, 5, 5])


@dataclass(frozen=True, slots=True)
class Ping:
    seq_no: int
    node: str
    source_addr: bytes | None = None
    source_port: int | None = None
    source_node: str | None = None


@dataclass(frozen=True, slots=True)
class IndirectPing:
    seq_no: int
    target: bytes
    port: int
    node: str
    nack: bool = False
    source_addr: bytes | None = None
    source_port: int | None = None
    source_node: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    seq_no: int
    payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class Nack:
    seq_no: int


@dataclass(frozen=True, slots=True)
class Suspect:
    incarnation: int
    node: str
    from_: str


@dataclass(frozen=True, slots=True)
class Alive:
    incarnation: int
    node: str
    addr: bytes
    port: int
    meta: bytes
    vsn: bytes = DEFAULT_VSN


@dataclass(frozen=True, slots=True)
class Dead:
    incarnation: int
    node: str
    from_: str


@dataclass(frozen=True, slots=True)
class PushNodeState:
    name: str
    addr: bytes
    port: int
    meta: bytes
    incarnation: int
    state: NodeState
    vsn: bytes = DEFAULT_VSN


@dataclass(frozen=True, slots=True)
class PushPull:
    """A whole push/pull exchange half: header, node states and raw user state."""

    join: bool
    nodes: tuple[PushNodeState, ...]
    user_state: bytes = b""


@dataclass(frozen=True, slots=True)
class UserMsg:
    """A memberlist user message; ``payload`` excludes the 0x08 type byte."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Err:
    error: str


Message = (
    Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead | PushPull | UserMsg | Err
)
"""Every decoded message. Compound, compress, CRC and encryption are framing, not messages."""
