"""Serf's layer on our SWIM core: what a serf member keeps besides memberlist's state.

Owns: serf's three Lamport clocks (member intents, user events, queries), the
recent-message buffers that make each intent, user event and query new exactly once
(``recent.py``), serf's member status times and the ``leaving`` mark a leave intent
puts on a live member (so its memberlist dead makes it ``left``, not ``failed``), our
own intents (leave, the join that refutes a stale leave, force-leave of another node)
and user events, the queries we sent (until their timeout), the answers to queries
addressed to us (``queries.py``, including the key changes and encryption roll-out
commands they carry, applied to the node's ``GossipEncryption``), relay factor both
ways (our answers also go through random members; relay messages are forwarded).
Does not: send, gossip or schedule anything: ``receive`` returns a ``SerfReply``
(what to pass on, what to send to whom, which members became ``left``, which events
to report) and ``Swim`` puts it on its broadcast queue, sends it or applies it; the
core's ``QUERY_TIMEOUT`` timer asks ``query_finished``. It reads the member table
(``members``) but never changes it.
Reference: serf ``serf/serf.go`` (handleNodeLeaveIntent, handleNodeJoinIntent,
handleUserEvent, handleQuery, UserEvent, forceLeave, the Lamport clocks),
``serf/delegate.go`` (NotifyMsg: what is rebroadcast, the relay message),
``serf/query.go`` (relayResponse), ``serf/internal_query.go``; docs/wire.md.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gossip.effects import Address, Effect, KeyringChanged, QueryResponse, UserEvent
from gossip.errors import DecodeError
from gossip.members import Member, Status, ip_bytes, ip_text
from gossip.serf import coordinate as vivaldi
from gossip.serf import payloads as serfcompat
from gossip.serf import queries as serfquery
from gossip.serf.payloads import Query, SerfType
from gossip.serf.recent import EVENT_BUFFER, QUERY_BUFFER, Intents, LamportClock, LtimeBuffer
from gossip.wire.encryption import GossipEncryption

LEAVE_INTENT_KEY = "\x00serf-leave-intent"
"""The broadcast key of our leave intent."""
LEAVE_INTENT_TIMEOUT = 5.0
"""serf's BroadcastTimeout: the dead-about-self follows the intent at the latest then."""
LEAVE_PROPAGATE = 1.0
"""serf's LeavePropagateDelay: gossip this long after the dead before stopping."""
LEAVE_INTENT_MIN = 0.5
"""Let serf peers relay the intent before the dead follows it."""
USER_EVENT_SIZE_LIMIT = 512
"""serf DefaultConfig UserEventSizeLimit: name + payload, and the encoded message."""
_MAX_STATUS = 65536
"""Status times kept for members that left the table (ours; bounded remote input)."""

Members = Callable[[], Mapping[str, Member]]


def query_key(query_id: int) -> str:
    """The broadcast key of a query (ours or one we pass on)."""
    return f"\x00query:{query_id}"


def intent_key(node: str) -> str:
    """The broadcast key of a join/leave intent about ``node`` (a newer one replaces it)."""
    return f"\x00intent:{node}"


def event_key(ltime: int, index: int) -> str:
    """The broadcast key of the ``index``-th user event seen at ``ltime``."""
    return f"\x00event:{ltime}:{index}"


@dataclass(frozen=True, slots=True)
class SerfReply:
    """What the core does for one serf message; every part is optional."""

    relay: bytes | None = None
    """A message to pass on (gossiped under ``relay_key``), as every serf member
    rebroadcasts a new intent, user event or query: the sender alone transmits it only
    retransmit-limit times, which reaches a few dozen members, not the cluster."""
    relay_key: str = ""
    to: Address | None = None
    answers: tuple[bytes, ...] = ()
    """Serf payloads for ``to``, each in a packet of its own."""
    sends: tuple[tuple[Address, bytes], ...] = ()
    """More serf payloads, each to its own address (relay-factor copies, forwards)."""
    left: tuple[str, ...] = ()
    """Failed members a leave intent (serf's force-leave) makes ``left``."""
    events: tuple[Effect, ...] = ()
    """``QueryResponse``, ``KeyringChanged`` or ``UserEvent``, reported after the sends."""


class SerfLayer:
    """One node's serf state; see the module docstring."""

    __slots__ = (
        "_ack_payload", "_clock", "_coord_cache", "_coords", "_encryption", "_event_clock", "_events", "_intents", "_leaving",
        "_leaving_self", "_members", "_my_queries", "_queries", "_query_clock", "_rng",
        "_status_ltime",
    )

    def __init__(self, encryption: GossipEncryption, members: Members, rng: random.Random) -> None:
        self._encryption = encryption
        self._members = members
        self._rng = rng
        self._clock = LamportClock()
        self._event_clock = LamportClock()
        self._query_clock = LamportClock()
        for clock in (self._clock, self._event_clock, self._query_clock):
            clock.increment()  # serf starts each at 1, so an intent at 0 is never news
        self._events = LtimeBuffer(EVENT_BUFFER)
        self._queries = LtimeBuffer(QUERY_BUFFER)
        self._intents = Intents()
        self._status_ltime: dict[str, int] = {}
        """serf's memberState.statusLTime: the newest intent time applied per member."""
        self._leaving: dict[str, None] = {}
        """Live members whose leave intent we applied (serf's StatusLeaving)."""
        self._leaving_self = False
        self._my_queries: dict[int, tuple[float, set[tuple[str, bool]]]] = {}
        """Our queries still waiting for answers: id -> (timeout, (node, ack) seen)."""
        self._coords: vivaldi.CoordinateClient | None = None
        """Our network coordinate (off unless the shell turns it on: the simulator's
        traces stay those of memberlist's core without ack payloads)."""
        self._coord_cache: dict[str, vivaldi.Coordinate] = {}
        self._ack_payload: bytes | None = None

    # ------------------------------------------------------------ coordinates

    def enable_coordinates(self, name: str) -> None:
        """Carry serf's network coordinate in ping acks and learn from peers' acks. The
        client's randomness is seeded from the node name (not the core's rng)."""
        if self._coords is None:
            self._coords = vivaldi.CoordinateClient(random.Random(f"vivaldi:{name}"))
            self._ack_payload = vivaldi.encode_ack_payload(self._coords.coord)
            self._coord_cache[name] = self._coords.coord  # serf caches its own at start

    def ack_payload(self) -> bytes | None:
        """serf's AckPayload for a ping we answer (None: coordinates are off)."""
        return self._ack_payload

    def ping_complete(self, me: str, node: str, rtt: float, payload: bytes | None) -> None:
        """serf's NotifyPingComplete: a direct ping of ``node`` was acked after ``rtt``
        seconds carrying ``payload``; a bad payload or round trip is ignored, as serf does."""
        coords = self._coords
        if coords is None or not payload:
            return
        try:
            theirs = vivaldi.decode_ack_payload(payload)
        except DecodeError:
            return
        ours = coords.update(node, theirs, rtt)
        if ours is None:
            return
        cache = self._coord_cache
        if node not in cache and len(cache) >= vivaldi.MAX_FILTERED_NODES:
            del cache[next(iter(cache))]
        cache[node] = theirs
        cache[me] = ours
        self._ack_payload = vivaldi.encode_ack_payload(ours)

    def coordinate(self, name: str) -> vivaldi.Coordinate | None:
        """The last coordinate known for ``name`` (ours once a ping completed)."""
        return self._coord_cache.get(name)

    # ------------------------------------------------------------ our messages

    @property
    def clocks(self) -> tuple[int, int, int]:
        """(member, event, query) Lamport times."""
        return self._clock.time, self._event_clock.time, self._query_clock.time

    def leave_intent(self, name: str, incarnation: int) -> bytes:
        """Our leave intent, at a Lamport time past every one we saw (and past our
        incarnation, so a restarted node's intent is newer than its last one)."""
        self._leaving_self = True
        ltime = max(self._clock.time, incarnation + 1)
        self._clock.witness(ltime)
        self._status_ltime[name] = ltime
        return serfcompat.encode_leave_intent(ltime, name, False)

    def force_leave(self, node: str) -> bytes:
        """serf's forceLeave: a leave intent about another node at the clock's time (then
        incremented). The caller hands it to ``receive`` like a message heard, which
        applies it (a failed member becomes ``left``) and relays it."""
        msg = serfcompat.encode_leave_intent(self._clock.time, node, False)
        self._clock.increment()
        return msg

    def user_event(self, name: str, payload: bytes, coalesce: bool = True) -> bytes:
        """serf's UserEvent: the message at the event clock's time (then incremented).
        The caller hands it to ``receive``, which records, reports and relays it.
        ValueError (serf's wording) if it exceeds serf's size limit."""
        if len(name.encode()) + len(payload) > USER_EVENT_SIZE_LIMIT:
            raise ValueError(
                f"user event exceeds configured limit of {USER_EVENT_SIZE_LIMIT} bytes before encoding"
            )
        msg = serfcompat.encode_user_event(self._event_clock.time, name, payload, coalesce)
        if len(msg) > USER_EVENT_SIZE_LIMIT:
            raise ValueError(
                f"encoded user event exceeds configured limit of {USER_EVENT_SIZE_LIMIT} bytes after encoding"
            )
        self._event_clock.increment()
        return msg

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
        relay_factor: int = 0,
    ) -> bytes:
        """A query of ours: the serf payload to gossip (under ``query_key(query_id)``).
        Answers come to ``me``'s address until ``now + timeout``."""
        ltime = self._query_clock.time
        self._query_clock.increment()
        data = serfcompat.encode_query(
            ltime=ltime,
            query_id=query_id,
            addr=ip_bytes(me.addr),
            port=me.port,
            source_node=me.name,
            name=name,
            payload=payload,
            timeout_ns=int(timeout * 1e9),
            filters=filters,
            want_ack=want_ack,
            relay_factor=relay_factor,
        )
        self._queries.add(ltime, query_id)
        self._my_queries[query_id] = (now + timeout, set())
        return data

    def query_finished(self, query_id: int) -> bool:
        """The query's timeout passed: True if it was ours and still open."""
        return self._my_queries.pop(query_id, None) is not None

    def take_leaving(self, now: float, name: str) -> bool:
        """``name`` is dead now: True if a leave intent came first (serf's Leaving, so
        the member is ``left``, not ``failed``). The mark is used up."""
        self._adopt(now, name)
        return self._leaving.pop(name, 0) is None

    # ------------------------------------------------------------ messages heard

    def receive(self, now: float, payload: bytes, me: Member) -> SerfReply | None:
        """A serf message (a user message or push/pull state whose first byte < 0x80)."""
        kind = payload[0]
        if kind == SerfType.QUERY:
            return self._query(payload, me)
        try:
            t, body = serfcompat.decode_serf_message(payload)
        except DecodeError:
            return None
        if t is SerfType.LEAVE:
            return self._leave_intent(now, body["LTime"], body["Node"], me, payload)
        if t is SerfType.JOIN:
            return self._join_intent(now, body["LTime"], body["Node"], payload)
        if t is SerfType.USER_EVENT:
            return self._user_event(body, payload)
        if t is SerfType.QUERY_RESPONSE:
            return self._response(body)
        if t is SerfType.RELAY:
            return self._forward(payload)
        if t is SerfType.PUSH_PULL:
            return self._push_pull(now, body, me)
        return None

    def _adopt(self, now: float, name: str) -> None:
        """serf's handleNodeJoin: a member new to us takes a recent intent about it."""
        if name in self._status_ltime:
            return
        intent = self._intents.take(now, name)
        if intent is not None:
            self._status_ltime[name] = intent.ltime
            if intent.leave:
                self._leaving[name] = None

    def _set_status_ltime(self, name: str, ltime: int) -> None:
        status = self._status_ltime
        if name not in status and len(status) >= _MAX_STATUS:
            members = self._members()
            for gone in [n for n in status if n not in members]:
                del status[gone]
                self._leaving.pop(gone, None)
        status[name] = ltime

    def _leave_intent(self, now: float, ltime: int, node: str, me: Member, raw: bytes | None) -> SerfReply | None:
        """serf's handleNodeLeaveIntent; ``raw`` None: from a push/pull (not relayed)."""
        self._clock.witness(ltime)
        member = self._members().get(node)
        if member is None:
            new = self._intents.upsert(now, node, True, ltime)
            return SerfReply(raw, intent_key(node)) if new and raw is not None else None
        self._adopt(now, node)
        if ltime <= self._status_ltime.get(node, 0):
            return None
        if node == me.name and not self._leaving_self:
            # An old leave intent about us while we are alive: refute it with a join.
            join_ltime = self._clock.time
            self._set_status_ltime(node, join_ltime)
            return SerfReply(serfcompat.encode_join_intent(join_ltime, node), intent_key(node))
        self._set_status_ltime(node, ltime)
        left: tuple[str, ...] = ()
        if member.status in (Status.ALIVE, Status.SUSPECT):
            self._leaving[node] = None
        elif member.status == Status.DEAD:
            left = (node,)
        if raw is None:
            return SerfReply(left=left) if left else None
        return SerfReply(raw, intent_key(node), left=left)

    def _join_intent(self, now: float, ltime: int, node: str, raw: bytes | None) -> SerfReply | None:
        """serf's handleNodeJoinIntent."""
        self._clock.witness(ltime)
        if node not in self._members():
            new = self._intents.upsert(now, node, False, ltime)
            return SerfReply(raw, intent_key(node)) if new and raw is not None else None
        self._adopt(now, node)
        if ltime <= self._status_ltime.get(node, 0):
            return None
        self._set_status_ltime(node, ltime)
        self._leaving.pop(node, None)  # the leave it knew of was older
        return SerfReply(raw, intent_key(node)) if raw is not None else None

    def _user_event(self, body: dict[str, object], raw: bytes) -> SerfReply | None:
        """serf's handleUserEvent: new once within the buffer's window, then relayed."""
        ltime, name, payload = body["LTime"], body["Name"], body["Payload"]
        assert isinstance(ltime, int) and isinstance(name, str) and isinstance(payload, bytes)
        self._event_clock.witness(ltime)
        if self._events.too_old(ltime, self._event_clock.time):
            return None
        index = self._events.add(ltime, (name, payload))
        if index is None:
            return None
        event = UserEvent(name, payload, ltime, bool(body["CC"]))
        return SerfReply(raw, event_key(ltime, index), events=(event,))

    def _response(self, body: dict[str, object]) -> SerfReply | None:
        qid, node, flags = body["ID"], body["From"], body["Flags"]
        assert isinstance(qid, int) and isinstance(node, str) and isinstance(flags, int)
        mine = self._my_queries.get(qid)
        if mine is None:
            return None
        ack = bool(flags & serfcompat.QUERY_FLAG_ACK)
        if (node, ack) in mine[1]:
            return None  # a relayed copy (relay factor) of an answer we have
        mine[1].add((node, ack))
        payload = body["Payload"]
        assert isinstance(payload, bytes)
        return SerfReply(events=(QueryResponse(qid, node, ack, payload),))

    def _forward(self, raw: bytes) -> SerfReply | None:
        """serf's relay message: send the inner message to its destination. Only query
        responses are forwarded (all serf relays), so a relay cannot make us send
        arbitrary messages to arbitrary addresses."""
        try:
            relay = serfcompat.decode_relay(raw)
            to = (ip_text(relay.addr), relay.port)
        except (DecodeError, ValueError):
            return None
        if not relay.message or relay.message[0] != SerfType.QUERY_RESPONSE or relay.port == 0:
            return None
        return SerfReply(to=to, answers=(relay.message,))

    def _push_pull(self, now: float, body: dict[str, object], me: Member) -> SerfReply | None:
        """serf's mergeRemoteState: clocks, then left members' leave intents and the
        others' join intents (not relayed). Recent events are not merged (see wire.md)."""
        for clock, key in ((self._clock, "LTime"), (self._event_clock, "EventLTime"),
                           (self._query_clock, "QueryLTime")):
            value = body.get(key)
            if isinstance(value, int) and value > 0:
                clock.witness(value - 1)
        status = body["StatusLTimes"]
        left_names = body["LeftMembers"]
        assert isinstance(status, dict) and isinstance(left_names, list)
        left: list[str] = []
        relay: SerfReply | None = None
        leaving = set(left_names)
        for name in left_names:
            reply = self._leave_intent(now, status.get(name, 0), name, me, None)
            if reply is not None:
                left.extend(reply.left)
                if reply.relay is not None:
                    relay = reply  # our refuting join
        for name, ltime in status.items():
            if name not in leaving:
                self._join_intent(now, ltime, name, None)
        if relay is None and not left:
            return None
        if relay is None:
            return SerfReply(left=tuple(left))
        return SerfReply(relay.relay, relay.relay_key, left=tuple(left))

    # ---------------------------------------------------------------- queries

    def _query(self, payload: bytes, me: Member) -> SerfReply | None:
        """serf's handleQuery: new once within the buffer's window; relayed unless
        NoBroadcast; answered (and the answers relayed) if its filters match us."""
        try:
            query = serfcompat.decode_query(payload)
            to = (ip_text(query.addr), query.port)
            tags = serfcompat.decode_tags(me.meta)
        except (DecodeError, ValueError):
            return None
        clock = self._query_clock
        clock.witness(query.ltime)
        if self._queries.too_old(query.ltime, clock.time):
            return None
        if self._queries.add(query.ltime, query.id) is None:
            return None  # serf re-gossips queries; answer once
        relay = None if query.flags & serfcompat.QUERY_FLAG_NO_BROADCAST else payload
        if not serfquery.addressed_to_us(query, me.name, tags):
            return SerfReply(relay, query_key(query.id)) if relay is not None else None
        answers, events = self._answer(query, me.name)
        sends = self._relay_answers(query, to, answers, me.name)
        return SerfReply(relay, query_key(query.id), to, answers, sends, events=events)

    def _relay_answers(
        self, query: Query, to: Address, answers: tuple[bytes, ...], name: str
    ) -> tuple[tuple[Address, bytes], ...]:
        """serf's relayResponse: each answer also through ``RelayFactor`` random alive
        members that speak protocol 5 (not us), if there are that many others."""
        k = query.relay_factor
        members = self._members()
        if k == 0 or not answers or len(members) < k + 1:
            return ()
        candidates = [
            m for m in members.values()
            if m.status == Status.ALIVE and m.pmax >= 5 and m.name != name
        ]
        chosen = self._rng.sample(candidates, min(k, len(candidates)))
        return tuple(
            ((m.addr, m.port), serfcompat.encode_relay(query.addr, query.port, query.source_node, a))
            for a in answers
            for m in chosen
        )

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
