"""Serf's layer on our SWIM core: what a serf member keeps besides memberlist's state.

Owns: serf's two Lamport clocks as far as we keep them (the event clock, witnessed
from every serf message so that our leave intent is never stale to serf, and the
query clock), our leave intent, the queries we sent (until their timeout), the
memory of recent queries that makes us answer and pass on each query once, and
the answers to queries addressed to us (``queries.py``), including the key changes
and encryption roll-out commands they carry, applied to the node's
``GossipEncryption``.
Does not: send, gossip or schedule anything: ``receive`` returns a ``SerfReply``
(what to pass on, what to answer to whom, which events to report) and ``Swim``
puts it on its broadcast queue or sends it; the core's ``QUERY_TIMEOUT`` timer
asks ``query_finished``. It does not see the member table either.
Reference: serf 0.9.4 ``serf.go`` (handleQuery, handleNodeLeaveIntent, the
Lamport clocks), ``query.go``, ``internal_query.go``; docs/wire.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gossip.effects import Address, Effect, KeyringChanged, QueryResponse
from gossip.errors import DecodeError
from gossip.members import Member, ip_bytes, ip_text
from gossip.serf import payloads as serfcompat
from gossip.serf import queries as serfquery
from gossip.serf.payloads import Query, SerfType
from gossip.wire.encryption import GossipEncryption

LEAVE_INTENT_KEY = "\x00serf-leave-intent"
"""The broadcast key of our leave intent."""
LEAVE_INTENT_TIMEOUT = 5.0
"""serf's BroadcastTimeout: the dead-about-self follows the intent at the latest then."""
LEAVE_PROPAGATE = 1.0
"""serf's LeavePropagateDelay: gossip this long after the dead before stopping."""
LEAVE_INTENT_MIN = 0.5
"""Let serf peers relay the intent before the dead follows it."""
_RECENT_QUERIES = 256


def query_key(query_id: int) -> str:
    """The broadcast key of a query (ours or one we pass on)."""
    return f"\x00query:{query_id}"


@dataclass(frozen=True, slots=True)
class SerfReply:
    """What the core does for one serf message; every part is optional."""

    relay: bytes | None = None
    """A query to pass on (gossiped under ``query_key``), as every serf member does:
    the querier alone transmits it only retransmit-limit times, which reaches a few
    dozen members, not the cluster."""
    relay_key: str = ""
    to: Address | None = None
    answers: tuple[bytes, ...] = ()
    """Serf payloads for ``to``, each in a packet of its own."""
    events: tuple[Effect, ...] = ()
    """``QueryResponse`` or ``KeyringChanged``, reported after the answers are sent."""


class SerfLayer:
    """One node's serf state; see the module docstring."""

    __slots__ = ("_encryption", "_ltime", "_my_queries", "_query_ltime", "_seen_queries")

    def __init__(self, encryption: GossipEncryption) -> None:
        self._encryption = encryption
        self._ltime = 0
        self._query_ltime = 0
        self._seen_queries: dict[tuple[int, int], None] = {}
        """(LTime, ID) of recent queries, oldest first, at most ``_RECENT_QUERIES``."""
        self._my_queries: dict[int, float] = {}
        """Our queries still waiting for answers: id -> timeout."""

    def leave_intent(self, name: str, incarnation: int) -> bytes:
        """Our leave intent, at a Lamport time past every one we saw (and past our
        incarnation, so a restarted node's intent is newer than its last one)."""
        self._ltime = max(self._ltime, incarnation) + 1
        return serfcompat.encode_leave_intent(self._ltime, name, False)

    def new_query(
        self,
        now: float,
        query_id: int,
        me: Member,
        name: str,
        payload: bytes,
        *,
        timeout: float,
        filters: Sequence[bytes],
        want_ack: bool,
    ) -> bytes:
        """A query of ours: the serf payload to gossip (under ``query_key(query_id)``).
        Answers come to ``me``'s address until ``now + timeout``."""
        self._query_ltime += 1
        data = serfcompat.encode_query(
            ltime=self._query_ltime,
            query_id=query_id,
            addr=ip_bytes(me.addr),
            port=me.port,
            source_node=me.name,
            name=name,
            payload=payload,
            timeout_ns=int(timeout * 1e9),
            filters=filters,
            want_ack=want_ack,
        )
        self._seen_queries[(self._query_ltime, query_id)] = None
        self._my_queries[query_id] = now + timeout
        return data

    def query_finished(self, query_id: int) -> bool:
        """The query's timeout passed: True if it was ours and still open."""
        return self._my_queries.pop(query_id, None) is not None

    def receive(self, payload: bytes, me: Member) -> SerfReply | None:
        """A serf message (a user message or push/pull state whose first byte < 0x80)."""
        if payload[0] == SerfType.QUERY:
            return self._query(payload, me)
        try:
            kind, body = serfcompat.decode_serf_message(payload)
        except DecodeError:
            return None
        if kind == SerfType.QUERY_RESPONSE:
            qid = body["ID"]
            if qid not in self._my_queries:
                return None
            ack = bool(body["Flags"] & serfcompat.QUERY_FLAG_ACK)
            return SerfReply(events=(QueryResponse(qid, body["From"], ack, body["Payload"] or b""),))
        if kind == SerfType.PUSH_PULL:
            qltime = body.get("QueryLTime")
            if isinstance(qltime, int) and qltime > self._query_ltime:
                self._query_ltime = qltime
        ltime = body.get("LTime")
        if isinstance(ltime, int) and ltime > self._ltime:
            self._ltime = ltime
        return None

    def _query(self, payload: bytes, me: Member) -> SerfReply | None:
        try:
            query = serfcompat.decode_query(payload)
            to = (ip_text(query.addr), query.port)
            tags = serfcompat.decode_tags(me.meta)
        except (DecodeError, ValueError):
            return None
        self._query_ltime = max(self._query_ltime, query.ltime)
        if not self._first_sight(query):
            return None  # serf re-gossips queries; answer once
        if not serfquery.addressed_to_us(query, me.name, tags):
            return SerfReply(relay=payload, relay_key=query_key(query.id))
        answers, events = self._answer(query, me.name)
        return SerfReply(payload, query_key(query.id), to, answers, events)

    def _first_sight(self, query: Query) -> bool:
        seen = self._seen_queries
        key = (query.ltime, query.id)
        if key in seen:
            return False
        seen[key] = None
        if len(seen) > _RECENT_QUERIES:
            del seen[next(iter(seen))]
        return True

    def _answer(self, query: Query, name: str) -> tuple[tuple[bytes, ...], tuple[Effect, ...]]:
        enc = self._encryption
        was_enabled = enc.enabled
        result = serfquery.answer(query, enc.keyring)
        if not was_enabled and enc.keyring is not None and enc.enabled:
            enc.enable(enc.keyring)  # switched on remotely: the roll-out window starts
        if result.mode is not None:
            enc.command(result.mode)
        answers: list[bytes] = []
        if result.ack:
            answers.append(serfcompat.encode_query_response(query.ltime, query.id, name, None, True))
        if result.response is not None:
            answers.append(
                serfcompat.encode_query_response(query.ltime, query.id, name, result.response, False)
            )
        return tuple(answers), (KeyringChanged(),) if result.keyring_changed else ()
