"""What the core asks its shell to do, and what it tells the shell happened.

Owns: the effect and event values returned from every core entry point; the shell
performs them in order. Effects are nouns (``Send``), events are past tense
(``MemberFailed``).
Does not: perform anything (the agent's driver and the simulator's world do).
"""

from __future__ import annotations

from dataclasses import dataclass

from gossip.members import Member

Address = tuple[str, int]
"""(IP address as text, port). IPv6 addresses without brackets."""


@dataclass(frozen=True, slots=True)
class Send:
    """Send one UDP datagram."""

    to: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """Open a TCP connection to ``to``, write ``data``, read one stream message back.

    The shell MUST report the outcome with ``Swim.handle_stream_reply(now, token,
    reply)`` where ``reply`` is the raw reply bytes, or None on any failure
    (connect refused, timeout after ``Config.tcp_timeout``, EOF before a complete
    message). ``expect_reply`` False means write and close (a TCP user message);
    the shell still reports success (b"") or failure (None).
    """

    to: Address
    data: bytes
    token: int
    expect_reply: bool = True


@dataclass(frozen=True, slots=True)
class MemberJoined:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberFailed:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberLeft:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberReaped:
    member: Member


@dataclass(frozen=True, slots=True)
class JoinFinished:
    """Outcome of ``Swim.join``: how many seeds answered the join push/pull."""

    contacted: int
    failed: tuple[Address, ...]


@dataclass(frozen=True, slots=True)
class KeyringChanged:
    """The gossip keyring was changed by a remote request (serf keys); persist it."""


@dataclass(frozen=True, slots=True)
class QueryResponse:
    """A member answered one of our serf queries (``ack`` True: just the acknowledgement)."""

    query_id: int
    node: str
    ack: bool
    payload: bytes


@dataclass(frozen=True, slots=True)
class QueryFinished:
    """A query's timeout passed; later responses are ignored."""

    query_id: int


@dataclass(frozen=True, slots=True)
class UserEvent:
    """A serf user event new to this node (``serf event``, ``agentctl event``)."""

    name: str
    payload: bytes
    ltime: int
    coalesce: bool


@dataclass(frozen=True, slots=True)
class Log:
    """A noteworthy thing the shell should log (not on the hot path)."""

    level: str
    message: str


MemberEvent = MemberJoined | MemberUpdated | MemberSuspected | MemberFailed | MemberLeft | MemberReaped
Effect = (
    Send
    | StreamRequest
    | MemberEvent
    | JoinFinished
    | KeyringChanged
    | QueryResponse
    | QueryFinished
    | UserEvent
    | Log
)
