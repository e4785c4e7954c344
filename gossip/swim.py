"""SWIM + Lifeguard membership state machine (sans-IO), wire compatible with memberlist.

Owns: one node's entry points and its decisions about members: news of alive,
suspect, dead and left members (precedence only by ``members.supersedes``),
refuting news about itself, suspicions and their Lifeguard timeouts, the gossip
beat, the graceful leave in serf's order, and dispatching messages and
timers to its parts, each in its own module:

- ``membertable.py``: the members and memberlist's probe order;
- ``probe.py``: the probe cycle and Lifeguard's local health;
- ``antientropy.py``: push/pull, joins and rejoins;
- ``leaving.py``: the graceful leave's phases;
- ``capacity.py``: the member-table bound and reaping;
- ``outbox.py``: packing news into datagrams;
- ``timers.py``: the timer heap and its typed kinds;
- ``serf/layer.py``: serf's clocks and queries, for user payloads below 0x80
  (the delegate gets ours, 0x80 and above);
- ``wire/encryption.py``: the keyring and the encryption roll-out mode.

Does not: do I/O or read a clock: every entry point takes ``now`` and returns
effects (``Send``, ``StreamRequest``, member events) that the shell performs.
Randomness comes only from the ``rng`` given at construction.

Design notes
- Timers are data in one heap: ``(at, seq, kind, arg)``. Nothing is cancelled; each
  firing re-validates against current state (a stale timer is a no-op).
- One probe is in flight at a time, as in memberlist's probeNode: direct ping,
  after ``probe_timeout`` indirect pings (+ a TCP ping), at the end of the
  (awareness-scaled) probe interval the verdict.
- Beyond memberlist 0.2.2: dead/left members are reaped after
  ``reap_interval`` (memberlist#253); seeds and recently failed members are
  re-joined every ``rejoin_interval`` so long partitions heal (memberlist#222);
  a dead member may return from a new address (restarted node).

Driver obligations (MUST): one caller at a time; ``now`` from one monotonic
clock; perform the returned effects in order; call ``tick(now)`` whenever
``now >= next_deadline()``; report every ``StreamRequest`` outcome through
``handle_stream_reply``.

References: SWIM (DSN 2002), Lifeguard (arXiv 1707.00788), memberlist 0.2.2
``state.go`` (aliveNode, suspectNode, deadNode, refute); docs/design.md.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crypto.keyring import Keyring
from gossip import leaving
from gossip.antientropy import AntiEntropy, JoinBatch
from gossip.broadcasts import Broadcasts
from gossip.capacity import Capacity
from gossip.config import (
    Config,
    expected_confirmations,
    suspicion_bounds,
    suspicion_timeout,
)
from gossip.delegate import Delegate, NullDelegate
from gossip.effects import (
    Address,
    Effect,
    Log,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberSuspected,
    MemberUpdated,
    QueryFinished,
    StreamRequest,
)
from gossip.errors import DecodeError
from gossip.limits import INCARNATION_MAX, META_MAX
from gossip.members import Member, Status, ip_bytes, ip_text, supersedes
from gossip.membertable import MemberTable
from gossip.outbox import Outbox
from gossip.probe import Prober
from gossip.serf.layer import SerfLayer, query_key
from gossip.suspicion import Suspicion
from gossip.timers import TimerKind, Timers
from gossip.wire import codec as wire
from gossip.wire.encryption import GossipEncryption
from gossip.wire.messages import (
    DEFAULT_VSN,
    Ack,
    Alive,
    Dead,
    Err,
    IndirectPing,
    Message,
    Nack,
    Ping,
    PushPull,
    Suspect,
    UserMsg,
)

_DEAD = Status.DEAD  # a module constant: compared on the hot path

_META_LIMIT = META_MAX


@dataclass(slots=True)
class _Stream:
    kind: str  # "join", "pushpull", "tcp_ping", "user"
    to: Address
    batch: JoinBatch | None = None
    seq: int = 0


@dataclass(slots=True)
class SwimStats:
    probes: int = 0
    failed_probes: int = 0
    unreachable_probes: int = 0
    """Failed probes cut short by an ICMP port unreachable (``handle_unreachable``)."""
    indirect_probes: int = 0
    suspicions: int = 0
    refutes: int = 0
    deaths: int = 0
    push_pulls: int = 0
    refused_members: int = 0  # new members refused: the table was full (Config.max_members)
    packets_sent: int = 0
    bytes_sent: int = 0
    last_rtt: float | None = None


class Swim:
    """One node's view of the cluster. See the module docstring for the driver contract."""

    def __init__(
        self,
        config: Config,
        name: str,
        addr: Address,
        *,
        rng: random.Random,
        now: float,
        delegate: Delegate | None = None,
        keyring: Keyring | None = None,
        incarnation: int = 0,
    ) -> None:
        if not name:
            raise ValueError("node name must not be empty")
        if not 0 <= incarnation <= INCARNATION_MAX:
            raise ValueError(f"incarnation {incarnation} is not a uint32")
        ip_bytes(addr[0])  # validates the address (ValueError)
        self.config = config
        self.name = name
        self.rng = rng
        self.delegate: Delegate = delegate if delegate is not None else NullDelegate()
        self.encryption = GossipEncryption(keyring)
        """The keyring and the encryption roll-out mode (one state machine, shared with
        the serf layer's queries and ``agent/membership/keys.py``)."""
        self.stats = SwimStats()
        self.leaving = False
        self._leave_phase = 0
        self._leave_at = 0.0
        self._now = now
        self._broadcasts = Broadcasts()
        self._suspicions: dict[str, Suspicion] = {}
        self._suspicion_params: tuple[int, float, float, int] = (-1, 0.0, 0.0, 0)
        """(table size, Lifeguard's low and high timeout and k for that size)."""
        self._streams: dict[int, _Stream] = {}
        self._timers = Timers()
        self._seq_no = 0
        self._token = 0
        self._serf = SerfLayer(self.encryption, lambda: self._table.members, rng)
        self._prober = Prober(self)
        self._sync = AntiEntropy(self)
        self._capacity = Capacity(self)
        meta = self.delegate.node_meta(_META_LIMIT)
        me = Member(name, addr[0], addr[1], incarnation, Status.ALIVE, meta, DEFAULT_VSN, now)
        self._table = MemberTable(me, rng)
        self._out = Outbox(config, self._table, self._broadcasts, self.delegate, self.encryption, self.stats)
        self._queue_alive(me)
        # Every periodic task starts after a random stagger, as in memberlist.
        self._timers.set(now + self.rng.uniform(0, config.probe_interval), TimerKind.PROBE_TICK, None)
        self._next_gossip = now + self.rng.uniform(0, config.gossip_interval)
        """The gossip ticker's next beat; kept off the timer heap because a node with no
        news skips it (``next_deadline``): no wake-ups every 200 ms in a quiet cluster."""
        self._timers.set(now + self.rng.uniform(0, config.push_pull_interval), TimerKind.PUSH_PULL_TICK, 0)
        self._timers.set(now + self._capacity.period(), TimerKind.REAP_TICK, None)
        self._timers.set(now + self.rng.uniform(0.5, 1.0) * config.rejoin_interval, TimerKind.REJOIN_TICK, None)

    # ------------------------------------------------------------------ queries

    @property
    def local(self) -> Member:
        return self._table.members[self.name]

    @property
    def serf(self) -> SerfLayer:
        """Serf's layer (its clocks; the user events and intents the shell makes)."""
        return self._serf

    @property
    def keyring(self) -> Keyring | None:
        return self.encryption.keyring

    @keyring.setter
    def keyring(self, ring: Keyring | None) -> None:
        self.encryption.keyring = ring  # the mode stays (see GossipEncryption)

    @property
    def require_encryption(self) -> bool:
        return self.encryption.require_encryption

    @require_encryption.setter
    def require_encryption(self, require: bool) -> None:
        """The start-up setting; roll-out commands go to ``encryption.command``."""
        self.encryption.configure(require=require)

    @property
    def awareness(self) -> int:
        """Lifeguard's local health score (0: healthy); see ``gossip/probe.py``."""
        return self._prober.awareness

    def members(self) -> list[Member]:
        return list(self._table.members.values())

    def member(self, name: str) -> Member | None:
        return self._table.members.get(name)

    def num_members(self) -> int:
        return len(self._table.members)

    def next_deadline(self) -> float:
        own = self._timers.next_at()
        delegate = self.delegate
        if type(delegate) is NullDelegate:  # never has a deadline or news of its own
            if self.leaving or (self._broadcasts and len(self._table.members) > 1):
                return min(own, self._gossip_beat())
            return own  # called after every event by the driver: kept cheap
        if self._wants_gossip():
            own = min(own, self._gossip_beat())
        return min(own, delegate.next_deadline())

    def _wants_gossip(self) -> bool:
        """News and somebody to tell it (a node alone keeps its news for its first peer,
        which then gets it at once rather than on a beat)."""
        if self.leaving:
            return True
        if len(self._table.members) <= 1:
            return False
        return bool(self._broadcasts) or self._out.delegate_may_broadcast()  # has_news, inlined

    def _gossip_beat(self) -> float:
        """When to gossip next, given there is news (see Config.relay_at_once)."""
        beat = self._next_gossip
        if beat < self._now and not self.config.relay_at_once:
            interval = self.config.gossip_interval
            while beat <= self._now:
                beat += interval
            self._next_gossip = beat
        return beat

    def leave_done(self) -> bool:
        """True once our leave (serf intent, then dead-about-self) has been gossiped and
        had time to propagate; the shell may stop then."""
        if not self.leaving:
            return False
        if not any(m.status in (Status.ALIVE, Status.SUSPECT) for m in self._table.others()):
            return True
        return self._leave_phase == 3 and self._now >= self._leave_at

    def check_invariants(self) -> None:
        """For tests and the simulator: internal consistency of the tables."""
        self._table.check_invariants()
        for name, s in self._suspicions.items():
            m = self._table.members.get(name)
            assert m is not None and m.status == Status.SUSPECT and m.incarnation == s.incarnation

    # ----------------------------------------------------------------- commands

    def join(self, now: float, seeds: Sequence[Address]) -> list[Effect]:
        """Push/pull (Join=true) with every seed; ``JoinFinished`` reports the outcome.

        The seeds are remembered: re-joined periodically while we are alone, and while
        no member is known at a seed's address.
        """
        if now > self._now:
            self._now = now
        return self._sync.join(now, seeds)

    def leave(self, now: float) -> list[Effect]:
        """Graceful leave, in serf's order: the serf leave intent first; once it has been
        gossiped (or after ``LEAVE_INTENT_TIMEOUT``), memberlist's dead-about-self; then
        ``LEAVE_PROPAGATE`` more seconds of gossip before ``leave_done()``. Sending
        both at once lets some serf peers see the dead first and show us ``failed``."""
        if now > self._now:
            self._now = now
        return leaving.begin(self, now)

    def set_meta(self, now: float, meta: bytes) -> list[Effect]:
        """Announce new node meta (serf tags) with a higher incarnation."""
        if now > self._now:
            self._now = now
        if len(meta) > _META_LIMIT:
            raise ValueError(f"node meta is {len(meta)} bytes; the limit is {_META_LIMIT}")
        me = self.local
        updated = me.evolve(meta=meta, incarnation=min(me.incarnation + 1, INCARNATION_MAX), changed_at=now)
        self._table.set(updated)
        self._queue_alive(updated)
        return []

    def send_user(self, name: str, payload: bytes) -> list[Effect]:
        """A best-effort UDP user message to member ``name`` (delegates use this for
        scoped gossip). ``payload`` must start with a private type byte >= 0x80."""
        effects: list[Effect] = []
        peer = self._table.members.get(name)
        if peer is None or not payload or payload[0] < 0x80 or not self.delegate.accepts_user_data(peer):
            return effects
        self._out.send(peer, [b"\x08" + payload], effects)
        return effects

    def stream_user(self, name: str, payload: bytes) -> list[Effect]:
        """A reliable TCP user message to member ``name`` (bulk state); no reply expected."""
        effects: list[Effect] = []
        peer = self._table.members.get(name)
        if peer is None or not payload or payload[0] < 0x80 or not self.delegate.accepts_user_data(peer):
            return effects
        data = self._encode_stream(UserMsg(payload))
        effects.append(self._open_stream("user", peer.address, data, expect_reply=False))
        return effects

    def serf_message(self, now: float, payload: bytes) -> list[Effect]:
        """A serf message of our own (``SerfLayer.user_event``/``force_leave``): applied
        as if heard, so it is recorded, reported and relayed like serf's own."""
        if now > self._now:
            self._now = now
        effects: list[Effect] = []
        self._serf_message(now, payload, effects)
        effects.extend(self._gossip(now))
        return effects

    def send_query(
        self,
        now: float,
        name: str,
        payload: bytes,
        *,
        timeout: float,
        filters: Sequence[bytes] = (),
        want_ack: bool = True,
        relay_factor: int = 0,
    ) -> tuple[int, list[Effect]]:
        """Broadcast a serf query (e.g. ``_serf_install-key``) to every member.

        Members (serf agents and ours) answer by UDP; each answer comes back as a
        ``QueryResponse`` effect, and ``QueryFinished`` marks the timeout. Every
        member (serf's and ours) re-broadcasts the query, so it reaches the cluster.
        """
        if now > self._now:
            self._now = now
        query_id = self.rng.getrandbits(32)
        data = self._serf.new_query(
            now, query_id, self.local, name, payload, timeout=timeout, filters=filters, want_ack=want_ack,
            relay_factor=relay_factor,
        )
        self._broadcasts.queue(query_key(query_id), wire.encode(UserMsg(data)))
        self._timers.set(now + timeout, TimerKind.QUERY_TIMEOUT, query_id)
        return query_id, self._gossip(now)

    def bootstrap_members(
        self, now: float, members: Mapping[str, Member] | Iterable[Member]
    ) -> None:
        """Install already-known members without events or gossip (simulator start-up).

        The given values are shared, not copied: they are immutable. A mapping (name ->
        member) is copied at C speed, which matters at 10,000 nodes × 10,000 members.
        The table takes the given order (members we already hold keep our value), so
        nodes bootstrapped from one list encode identical push/pull states. Since the
        cluster is already converged: our own alive is not gossiped if the given
        members already hold us as we are, and the push/pull timer is re-staggered
        over the interval for this cluster size, as in a cluster that has run a while.
        """
        knows_us = self._table.install(members)
        if knows_us:
            self._broadcasts.discard(self.name)
        self._sync.restagger(now)

    # ------------------------------------------------------------ entry points

    def handle_packet(self, now: float, src: Address, data: bytes) -> list[Effect]:
        """One inbound UDP datagram. Raises DecodeError before touching any state."""
        messages = wire.decode_packet(
            data, self.encryption.incoming(), require_encryption=self.encryption.require_encryption
        )
        if now > self._now:
            self._now = now
        self._capacity.speaker = src[0]
        effects: list[Effect] = []
        # A failure storm is mostly repeated suspect and dead news (at 10,000 nodes ~29 M
        # suspects and ~20 M deads handled in 60 s), nearly all of it ignored: the
        # rejections of ``_suspect`` and ``_dead`` are tested here first, before any call.
        # Each test is exactly one the handler makes first and that returns at once:
        # a suspect while we hold a suspicion of that member that takes no confirmation
        # (full, another incarnation, or this accuser already counted); a suspect or
        # dead about a member we hold dead or left (``MemberTable`` keeps their names).
        suspicions = self._suspicions
        gone = self._table.gone_names
        for msg in messages:
            if type(msg) is Suspect:
                name = msg.node
                suspicion = suspicions.get(name)
                if suspicion is not None:
                    confirmers = suspicion.confirmers
                    if (
                        suspicion.incarnation != msg.incarnation
                        or len(confirmers) > suspicion.k
                        or msg.from_ in confirmers
                    ):
                        continue
                elif name in gone:
                    continue
                self._suspect(now, name, msg.incarnation, msg.from_, effects)
            elif type(msg) is Dead:
                if msg.node in gone:
                    continue
                self._dead(now, msg.node, msg.incarnation, msg.from_, effects)
            else:
                self._dispatch(now, src, msg, effects)
        return effects

    def handle_stream(
        self, now: float, src: Address, data: bytes
    ) -> tuple[bytes | None, list[Effect]]:
        """One complete inbound TCP stream message; returns (reply to write or None, effects)."""
        msg = wire.decode_stream(
            data, self.encryption.incoming(), require_encryption=self.encryption.require_encryption
        )
        if now > self._now:
            self._now = now
        self._capacity.speaker = src[0]
        effects: list[Effect] = []
        if isinstance(msg, PushPull):
            return self._sync.answer(now, msg, effects, src[0]), effects
        if isinstance(msg, Ping):
            if msg.node and msg.node != self.name:
                return None, effects
            return self._encode_stream(Ack(msg.seq_no, None)), effects
        if isinstance(msg, UserMsg):
            self._user_message(now, msg.payload, effects)
            return None, effects
        if isinstance(msg, Err):
            effects.append(Log("warning", f"peer {src[0]}:{src[1]} reported: {msg.error}"))
            return None, effects
        raise DecodeError(f"unexpected stream message {type(msg).__name__}")

    def handle_unreachable(self, now: float, addr: Address) -> list[Effect]:
        """A datagram to ``addr`` was answered with ICMP port unreachable: its host is up
        and nothing listens on the port. If that is the member being probed, the probe
        fails now rather than at the end of the probe interval (see
        Config.fail_probe_on_unreachable). Local health is not raised: the answer shows
        that our own network works."""
        if now > self._now:
            self._now = now
        effects: list[Effect] = []
        self._prober.unreachable(now, addr, effects)
        return effects

    def handle_stream_reply(self, now: float, token: int, reply: bytes | None) -> list[Effect]:
        """Outcome of a ``StreamRequest``: the reply bytes, or None if it failed."""
        if now > self._now:
            self._now = now
        effects: list[Effect] = []
        stream = self._streams.pop(token, None)
        if stream is None:
            return effects
        self._capacity.speaker = stream.to[0]
        msg: Message | None = None
        error = "no reply"
        if reply is not None and stream.kind != "user":
            try:
                msg = wire.decode_stream(
                    reply, self.encryption.incoming(), require_encryption=self.encryption.require_encryption
                )
            except DecodeError as exc:
                error = str(exc)
        if stream.kind in ("join", "pushpull"):
            self._sync.on_reply(now, stream.to, stream.batch, msg, error, effects)
        elif stream.kind == "tcp_ping" and isinstance(msg, Ack):
            self._prober.on_tcp_ack(stream.seq)
        return effects

    def tick(self, now: float) -> list[Effect]:
        """Run every timer due at or before ``now``."""
        effects: list[Effect] = []
        if now > self._now:
            self._now = now
        # memberlist's timing: a beat that passed while there was no news sent nothing,
        # even if this tick's timers (a failed probe) make news now; it waits a beat.
        beat_missed_quietly = (
            not self.config.relay_at_once and self._next_gossip < now and not self._wants_gossip()
        )
        pop_due = self._timers.pop_due
        while (timer := pop_due(now)) is not None:
            _ON_TIMER[timer[2]](self, now, timer[3], effects)
        if now >= self._next_gossip:
            # Beats missed while there was no news are dropped, as a Go ticker drops them;
            # news queued after a quiet spell thus goes out at once, then on the beat.
            interval = self.config.gossip_interval
            beat = self._next_gossip
            while beat <= now:  # repeated addition, exactly as a re-armed timer would
                beat += interval
            self._next_gossip = beat
            if not beat_missed_quietly and self._wants_gossip():
                effects.extend(self._gossip(now))
        delegate = self.delegate
        if type(delegate) is not NullDelegate and delegate.next_deadline() <= now:
            effects.extend(delegate.tick(now))
        return effects

    # ------------------------------------------------------------ dispatching

    def _dispatch(self, now: float, src: Address, msg: Message, effects: list[Effect]) -> None:
        # Exact-type tests, most frequent first: during a mass failure nearly every
        # piggybacked message is a suspect or dead (message types have no subclasses).
        if type(msg) is Suspect:
            self._suspect(now, msg.node, msg.incarnation, msg.from_, effects)
        elif type(msg) is Dead:
            self._dead(now, msg.node, msg.incarnation, msg.from_, effects)
        elif isinstance(msg, Ping):
            self._prober.on_ping(src, msg, effects)
        elif isinstance(msg, Ack):
            self._prober.on_ack(now, msg.seq_no, msg.payload, effects)
        elif isinstance(msg, Nack):
            self._prober.on_nack(msg.seq_no)
        elif isinstance(msg, IndirectPing):
            self._prober.on_indirect_ping(now, src, msg, effects)
        elif isinstance(msg, Alive):
            self._alive(now, msg, effects)
        elif isinstance(msg, UserMsg):
            self._user_message(now, msg.payload, effects)
        # PushPull/Err over UDP are not part of the protocol: ignored.

    def _user_message(self, now: float, payload: bytes, effects: list[Effect]) -> None:
        if not payload:
            return
        if payload[0] < 0x80:
            self._serf_message(now, payload, effects)
            return
        effects.extend(self.delegate.on_user_message(now, payload))

    def _serf_message(self, now: float, payload: bytes, effects: list[Effect]) -> None:
        """Serf's part of a user message or push/pull state: ``gossip/serf/layer.py``
        decides, we pass queries on and send its answers."""
        reply = self._serf.receive(now, payload, self.local)
        if reply is None:
            return
        if reply.relay is not None:
            self._broadcasts.queue(reply.relay_key, wire.encode(UserMsg(reply.relay)))
        for name in reply.left:  # serf's force-leave of a failed member
            current = self._table.members[name]
            gone = current.evolve(status=Status.LEFT)
            self._table.set(gone)
            effects.append(MemberLeft(gone))
            effects.extend(self.delegate.on_member_change(now, current, gone))
        for to, part in reply.sends:
            self._out.emit(to, [wire.encode(UserMsg(part))], self._prober.target_at(to), effects)
        if reply.to is not None:
            # Answers go bare, like memberlist's SendToAddress: piggybacking would spend
            # the relays of this very query on the querier, who already has it.
            peer = self._prober.target_at(reply.to)
            for answer in reply.answers:
                self._out.emit(reply.to, [wire.encode(UserMsg(answer))], peer, effects)
        effects.extend(reply.events)

    # ---------------------------------------------------------- state changes

    def _alive(self, now: float, msg: Alive, effects: list[Effect]) -> None:
        vsn = msg.vsn
        # memberlist ignores alives with impossible versions; an empty Vsn is tolerated.
        if vsn and (len(vsn) != 6 or vsn[0] == 0 or vsn[1] == 0 or vsn[0] > vsn[1]):
            return
        try:
            addr = ip_text(msg.addr)
        except ValueError:
            return
        current = self._table.members.get(msg.node)
        if msg.node == self.name:
            self._alive_about_self(now, msg, effects)
            return
        if current is None:
            if len(self._table.members) >= self.config.max_members and not self._capacity.make_room(
                addr, msg.node, effects
            ):
                return
            member = Member(msg.node, addr, msg.port, msg.incarnation, Status.ALIVE, msg.meta, msg.vsn, now)
            self._table.add(member)
            self._broadcasts.queue(msg.node, wire.encode(msg))
            effects.append(MemberJoined(member))
            effects.extend(self.delegate.on_member_change(now, None, member))
            return
        moved = (addr, msg.port) != current.address
        if moved:
            reclaimable = current.status in (Status.DEAD, Status.LEFT) and (
                now - current.changed_at >= self.config.dead_node_reclaim_time
            )
            if not reclaimable:
                effects.append(
                    Log(
                        "warning",
                        f"conflicting address for {msg.node}: {current.addr}:{current.port} "
                        f"is {current.status.label}, {addr}:{msg.port} claims the name",
                    )
                )
                return
        elif not supersedes(Status.ALIVE, msg.incarnation, current):
            return
        self._suspicions.pop(msg.node, None)
        updated = Member(msg.node, addr, msg.port, msg.incarnation, Status.ALIVE, msg.meta, msg.vsn,
                         now if current.status != Status.ALIVE else current.changed_at)
        self._table.set(updated)
        self._broadcasts.queue(msg.node, wire.encode(msg))
        if current.status in (Status.DEAD, Status.LEFT):
            effects.append(MemberJoined(updated))
        elif current.meta != msg.meta or moved:
            effects.append(MemberUpdated(updated))
        effects.extend(self.delegate.on_member_change(now, current, updated))

    def _alive_about_self(self, now: float, msg: Alive, effects: list[Effect]) -> None:
        me = self.local
        if self.leaving:
            return
        if msg.incarnation > me.incarnation or (
            msg.incarnation == me.incarnation and (msg.meta != me.meta or msg.vsn != me.vsn)
        ):
            self._refute(now, msg.incarnation, effects)

    def _suspect(self, now: float, name: str, incarnation: int, from_: str, effects: list[Effect]) -> None:
        # Hot path first (a mass failure makes most messages repeated suspicions): a
        # suspicion implies we hold the member as suspect at its incarnation
        # (check_invariants), so any other incarnation is stale or handled as before:
        # ignored. Inlines Suspicion.confirm (the accuser is never counted).
        suspicion = self._suspicions.get(name)
        if suspicion is not None:
            confirmers = suspicion.confirmers
            if (
                suspicion.incarnation != incarnation
                or len(confirmers) > suspicion.k
                or from_ in confirmers
            ):
                return
            confirmers.append(from_)
            self._broadcasts.queue(name, wire.encode_accusation(True, incarnation, name, from_))
            # Suspicion.deadline, inlined: confirmations = len(confirmers) - 1 here.
            timeout = suspicion_timeout(suspicion.low, suspicion.high, suspicion.k, len(confirmers) - 1)
            self._timers.set(suspicion.start + timeout, TimerKind.SUSPICION, name)
            return
        current = self._table.members.get(name)
        if current is None or incarnation < current.incarnation:
            return
        if current.status != Status.ALIVE:
            return
        if name == self.name:
            if not self.leaving:
                self._refute(now, incarnation, effects)
            return
        if not supersedes(Status.SUSPECT, incarnation, current):
            return
        self.stats.suspicions += 1
        suspected = Member(current.name, current.addr, current.port, incarnation, Status.SUSPECT,
                           current.meta, current.vsn, now)  # not evolve(): dataclasses.replace is slow
        self._table.set(suspected)
        self._broadcasts.queue(name, wire.encode_accusation(True, incarnation, name, from_))
        n = len(self._table.members)
        if n != self._suspicion_params[0]:  # per table size: a storm starts thousands
            low, high = suspicion_bounds(self.config, n)
            self._suspicion_params = (n, low, high, expected_confirmations(self.config, n))
        _, low, high, k = self._suspicion_params
        suspicion = Suspicion(incarnation, now, low, high if k > 0 else low, k, [from_])
        self._suspicions[name] = suspicion
        self._timers.set(suspicion.deadline, TimerKind.SUSPICION, name)
        effects.append(MemberSuspected(suspected))
        effects.extend(self.delegate.on_member_change(now, current, suspected))

    def _suspicion_fired(self, now: float, name: object, effects: list[Effect]) -> None:
        assert isinstance(name, str)
        suspicion = self._suspicions.get(name)
        if suspicion is None or suspicion.deadline > now:
            return
        current = self._table.members.get(name)
        if current is None or current.status != Status.SUSPECT:
            self._suspicions.pop(name, None)
            return
        self._dead(now, name, suspicion.incarnation, self.name, effects)

    def _dead(self, now: float, name: str, incarnation: int, from_: str, effects: list[Effect]) -> None:
        current = self._table.members.get(name)
        # Dead and left are final for an incarnation (and the hot, repeated case).
        if current is None or incarnation < current.incarnation or current.status >= _DEAD:
            return
        if name == self.name:
            if not self.leaving:
                self._refute(now, incarnation, effects)
            return
        self._suspicions.pop(name, None)
        status = Status.LEFT if from_ == name or self._serf.take_leaving(now, name) else Status.DEAD
        gone = Member(current.name, current.addr, current.port, incarnation, status,
                      current.meta, current.vsn, now)  # not evolve(): dataclasses.replace is slow
        self._table.set(gone)
        self._broadcasts.queue(name, wire.encode_accusation(False, incarnation, name, from_))
        if status == Status.LEFT:
            effects.append(MemberLeft(gone))
        else:
            self.stats.deaths += 1
            effects.append(MemberFailed(gone))
        effects.extend(self.delegate.on_member_change(now, current, gone))

    def _refute(self, now: float, accused: int, effects: list[Effect]) -> None:
        me = self.local
        # Saturates at the uint32 ceiling, where an alive wins (members.supersedes):
        # memberlist's Go arithmetic wraps to a small incarnation that peers ignore.
        incarnation = min(max(me.incarnation + 1, accused + 1), INCARNATION_MAX)
        self.stats.refutes += 1
        refuted = me.evolve(incarnation=incarnation, status=Status.ALIVE)
        self._table.set(refuted)
        self._queue_alive(refuted)
        self._prober.adjust_awareness(1)

    def _queue_alive(self, me: Member) -> None:
        alive = Alive(me.incarnation, me.name, ip_bytes(me.addr), me.port, me.meta, me.vsn)
        self._broadcasts.queue(me.name, wire.encode(alive))

    # ----------------------------------------------------------- dissemination

    def _gossip(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        if self.leaving:
            leaving.advance(self, now, effects)
        if not self._out.has_news():
            return effects  # the usual gossip tick of a quiet cluster
        dead_window = self.config.gossip_to_the_dead_time

        def target(m: Member) -> bool:
            status = m.status
            if status < _DEAD:  # alive or suspect
                return True
            return status == _DEAD and now - m.changed_at < dead_window

        for peer in self._table.k_random(self.config.gossip_nodes, target):
            # No news for a peer: the next may take the delegate's (a serf one does not).
            self._out.gossip_to(peer, effects)
        return effects

    def _send(self, to: Address, data: bytes, effects: list[Effect], peer: Member | None = None) -> None:
        """Send one message, piggybacking pending broadcasts in the remaining space."""
        if peer is None:
            peer = self._prober.target_at(to)
        self._out.send(peer, [data], effects, to)

    # ------------------------------------------------------------------ misc

    def _next_seq(self) -> int:
        self._seq_no = (self._seq_no + 1) & 0xFFFFFFFF
        return self._seq_no

    def _encode_stream(self, msg: Message) -> bytes:
        return wire.encode_stream(
            msg, compress=self.config.enable_compression, keyring=self.encryption.outgoing()
        )

    def _open_stream(
        self, kind: str, to: Address, data: bytes, *, batch: JoinBatch | None = None, seq: int = 0,
        expect_reply: bool = True,
    ) -> StreamRequest:
        """A ``StreamRequest`` whose outcome ``handle_stream_reply`` will match to ``kind``."""
        self._token += 1
        self._streams[self._token] = _Stream(kind, to, batch=batch, seq=seq)
        return StreamRequest(to, data, self._token, expect_reply)


def _on_query_timeout(swim: Swim, now: float, query_id: object, effects: list[Effect]) -> None:
    assert isinstance(query_id, int)
    if swim._serf.query_finished(query_id):
        effects.append(QueryFinished(query_id))


_TIMER_HANDLERS: dict[TimerKind, Callable[[Swim, float, Any, list[Effect]], None]] = {
    TimerKind.PROBE_TICK: lambda s, now, _, fx: s._prober.tick(now, fx),
    TimerKind.PROBE_TIMEOUT: lambda s, now, seq, fx: s._prober.timeout(now, seq, fx),
    TimerKind.PROBE_END: lambda s, now, seq, fx: s._prober.end(now, seq, fx),
    TimerKind.RELAY_TIMEOUT: lambda s, now, seq, fx: s._prober.relay_timeout(now, seq, fx),
    TimerKind.GOSSIP_TICK: lambda s, now, _, fx: fx.extend(s._gossip(now)),  # the leave's last
    TimerKind.PUSH_PULL_TICK: lambda s, now, generation, fx: s._sync.tick(now, generation, fx),
    TimerKind.SUSPICION: lambda s, now, name, fx: s._suspicion_fired(now, name, fx),
    TimerKind.REAP_TICK: lambda s, now, _, fx: s._capacity.reap(now, fx),
    TimerKind.REJOIN_TICK: lambda s, now, _, fx: s._sync.rejoin(now, fx),
    TimerKind.JOIN_RETRY: lambda s, now, _, fx: s._sync.join_retry(now, fx),
    TimerKind.QUERY_TIMEOUT: _on_query_timeout,
}
_ON_TIMER = tuple(_TIMER_HANDLERS[kind] for kind in TimerKind)
"""The handler of each timer kind, indexed by the kind's value (a tuple index is a C
lookup; an enum-keyed dict hashes the member's name in Python)."""
