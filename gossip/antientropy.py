"""Push/pull anti-entropy and joining: whole-state exchanges over TCP.

Owns: memberlist's push/pull: our half of the exchange (byte for byte
``encode_stream(PushPull(...))``, built from each member's cached encoded state),
merging a remote state into ours through the core's alive/suspect/dead handlers
(so precedence is decided in one place; push/pull never kills directly: dead and
suspect become our suspicion), and which peers get the delegate's state (only
those known to run our agent). The periodic push/pull with a random alive member,
backed off with the cluster size and re-staggered after ``bootstrap_members``.
Joins: a batch of seeds and its ``JoinFinished``, a retry with backoff when it
reached nobody. Beyond memberlist 0.2.2 (memberlist#222): the rejoin that heals
partitions, of one recently failed member, and of a seed when we are alone or
when nobody is known at some seed's address.
Does not: open connections or decode (the core returns ``StreamRequest`` effects and
matches their replies by token), or decide about a member (``gossip/swim.py``).
Reference: memberlist 0.2.2 ``state.go`` (pushPull, mergeState), ``memberlist.go``
(Join), ``util.go`` (pushPullScale).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from typing import TYPE_CHECKING

from gossip.config import push_pull_scale
from gossip.effects import Address, Effect, JoinFinished, Log, StreamRequest
from gossip.limits import INCARNATION_MAX
from gossip.members import Member, Status, ip_bytes, ip_text
from gossip.timers import TimerKind
from gossip.wire import codec as wire
from gossip.wire.messages import Alive, Err, Message, NodeState, PushNodeState, PushPull

if TYPE_CHECKING:
    from gossip.membertable import MemberImage
    from gossip.swim import Swim

_DEAD = Status.DEAD  # a module constant: compared on the hot path
_wire_state_of = operator.attrgetter("wire_state")
_name_of = operator.attrgetter("name")
_addr_of = operator.attrgetter("addr")
_MERGE_BATCHES = 8
"""Batched lookups per merge (each costs a C-level pass over the rest of the state)."""

_quiet: dict[int, Member] = {}
"""Pairs (a remote alive state, the alive member a table holds) that the merge's fast
path found to be no news, by identity: ``id(state)`` -> the member (the last one found
for that state; keyed by the state alone, a lookup is one dict probe with no tuple to
build), the state pinned in ``_quiet_pins`` so the id stays its own. Whether a state
changes a member is a function of the two values alone (for
a table that is not the state's own member), and in one process both are shared: the
states by the push/pull decoder, the members by the tables of a simulator's nodes. So
a merge passes over the unchanged part of a 10,000-member state by C-level passes
instead of 10,000 Python comparisons. Off (0) unless ``set_merge_memo_size`` is
called: the simulator turns it on; an agent's merges stay as they were."""
_quiet_pins: dict[int, PushNodeState] = {}
_quiet_max = 0
_MISS = object()
"""What a ``_quiet`` lookup of a state not in it gives: never a table's member (nor None)."""


def set_merge_memo_size(entries: int) -> None:
    """Keep up to ``entries`` pairs in the merge memo (0: off); emptied when full."""
    global _quiet_max
    _quiet_max = max(0, entries)
    _quiet.clear()
    _quiet_pins.clear()


@dataclass(slots=True)
class JoinBatch:
    """The seeds of one ``join`` call, until every one has answered or failed."""

    outstanding: int
    contacted: int = 0
    failed: list[Address] = field(default_factory=list)


class AntiEntropy:
    """Push/pull and joins of one ``Swim`` node (a part of it: it uses the core's member
    table, timers, streams and state-change handlers)."""

    __slots__ = ("_join_attempt", "_seeds", "_swim", "generation")

    def __init__(self, swim: Swim) -> None:
        self._swim = swim
        self._seeds: list[Address] = []
        self._join_attempt = 0
        self.generation = 0
        """Only the push/pull timer carrying this generation is live (re-staggering)."""

    # ------------------------------------------------------------ joining

    def join(self, now: float, seeds: Sequence[Address]) -> list[Effect]:
        """Push/pull (Join=true) with every seed, remembered for rejoins."""
        for seed in seeds:
            if seed not in self._seeds:
                self._seeds.append(seed)
        effects: list[Effect] = []
        if not seeds:
            effects.append(JoinFinished(0, ()))
            return effects
        batch = JoinBatch(outstanding=len(seeds))
        for seed in seeds:
            effects.append(self._request(seed, join=True, kind="join", batch=batch))
        return effects

    def _after_join(self, now: float, batch: JoinBatch) -> None:
        """A join that reached nobody is retried soon with backoff (seeds that start at
        the same moment as we do), until the periodic rejoin takes over."""
        swim = self._swim
        if batch.contacted > 0 or swim.leaving:
            self._join_attempt = 0
            return
        delay = 0.5 * 2**self._join_attempt
        if delay >= swim.config.rejoin_interval:
            return
        self._join_attempt += 1
        swim._timers.set(now + delay, TimerKind.JOIN_RETRY, None)

    def join_retry(self, now: float, effects: list[Effect]) -> None:
        """``JOIN_RETRY``: join the seeds again unless somebody answered meanwhile."""
        swim = self._swim
        if swim.leaving or any(m.status == Status.ALIVE for m in swim._table.others()):
            return
        effects.extend(self.join(now, list(self._seeds)))

    def rejoin(self, now: float, effects: list[Effect]) -> None:
        """``REJOIN_TICK``: heal partitions: re-join one recently failed member, and a
        seed when alone or when no member is known at some seed's address."""
        swim = self._swim
        swim._timers.set(now + swim.config.rejoin_interval, TimerKind.REJOIN_TICK, None)
        if swim.leaving:
            return
        window = swim.config.rejoin_failed_for
        failed = [m for m in swim._table.gone() if m.status == Status.DEAD and now - m.changed_at < window]
        if failed:
            target = failed[swim.rng.randrange(len(failed))]
            ours = swim.delegate.accepts_user_data(target)
            effects.append(self._request(target.address, join=True, kind="pushpull", ours=ours))
        alone = not any(m.status == Status.ALIVE for m in swim._table.others())
        # Not alone, only seeds nobody is known at: hosts that started while the
        # network was cut each join the seeds they can reach, and the seeds behind the
        # cut are nobody they know (not even as failed), so no probe and no
        # failed-member rejoin would ever reach them.
        pool = self._seeds if alone else self._unknown_seeds()
        if pool:
            seed = pool[swim.rng.randrange(len(pool))]
            effects.append(self._request(seed, join=True, kind="pushpull"))

    def _unknown_seeds(self) -> list[Address]:
        """Seeds at whose address no member (ourselves included) is known."""
        knows = self._swim._table.knows_address  # not a set of N addresses per tick
        return [s for s in self._seeds if not knows(s)]

    # ------------------------------------------------------------ push/pull

    def tick(self, now: float, generation: object, effects: list[Effect]) -> None:
        """``PUSH_PULL_TICK``: push/pull with a random alive member."""
        if generation != self.generation:
            return  # re-staggered since (bootstrap_members)
        swim = self._swim
        interval = push_pull_scale(swim.config.push_pull_interval, len(swim._table.members))
        swim._timers.set(now + interval, TimerKind.PUSH_PULL_TICK, self.generation)
        peers = swim._table.k_random(1, lambda m: m.status == Status.ALIVE)
        if peers:
            swim.stats.push_pulls += 1
            ours = swim.delegate.accepts_user_data(peers[0])
            effects.append(self._request(peers[0].address, join=False, kind="pushpull", ours=ours))

    def restagger(self, now: float) -> None:
        """The next push/pull at a random point of the interval for this cluster size,
        as in a cluster that has run a while (``bootstrap_members``)."""
        swim = self._swim
        self.generation += 1
        interval = push_pull_scale(swim.config.push_pull_interval, len(swim._table.members))
        swim._timers.set(now + swim.rng.uniform(0, interval), TimerKind.PUSH_PULL_TICK, self.generation)

    def _request(
        self, to: Address, *, join: bool, kind: str, batch: JoinBatch | None = None, ours: bool = False
    ) -> StreamRequest:
        """``ours``: the peer is known to run our agent, so the delegate's state may go.
        A join to a seed address does not know; the seed's answer brings its state."""
        return self._swim._open_stream(kind, to, self.stream(join, ours), batch=batch)

    def stream(self, join: bool, ours: bool) -> bytes:
        """Our push/pull half, ready to write: ``encode_stream(PushPull(...))`` byte for
        byte, built from each member's cached encoded state (``Member.wire_state``;
        a changed member is a new value, so a cached state is never stale). The stream
        layer memoises the compression of an unchanged table."""
        swim = self._swim
        user = swim.delegate.local_state(join) if ours else b""
        table = swim._table
        patches = table.image_patches(_state_of)
        if patches is not None:  # a table sharing a converged image (the simulator)
            return _image_stream(swim, patches, join, user)
        values = table.members.values()
        # C-level passes over N members; Python work only for the states not cached yet
        # (the members changed since the last push/pull: a few hundred of 10,000 during
        # a crash storm, found by C-level scans rather than a Python pass over all).
        states: list[bytes | None] = list(map(_wire_state_of, values))
        i = -1
        try:
            while True:
                i = states.index(None, i + 1)
                states[i] = _encode_state(values[i])
        except ValueError:
            pass
        body = wire.encode_push_pull_body(join, states, user)  # type: ignore[arg-type]
        return wire.frame_stream(
            body, compress=swim.config.enable_compression, keyring=swim.encryption.outgoing()
        )

    def answer(self, now: float, msg: PushPull, effects: list[Effect], src_ip: str = "") -> bytes:
        """A push/pull a peer opened from ``src_ip``: our half to write back, then theirs merged."""
        # Serf always sends its own state (first byte < 0x80); ours send none or ours.
        ours = not msg.user_state or msg.user_state[0] >= 0x80
        reply = self.stream(msg.join, ours)
        self.merge(now, msg, effects)
        self._heard_over_tcp(msg, src_ip)
        return reply

    def on_reply(
        self, now: float, to: Address, batch: JoinBatch | None, msg: Message | None, error: str,
        effects: list[Effect],
    ) -> None:
        """The outcome of our push/pull or join to ``to``: the decoded reply or None."""
        ok = isinstance(msg, PushPull)
        if isinstance(msg, PushPull):
            self.merge(now, msg, effects)
            self._heard_over_tcp(msg, to[0])
        elif isinstance(msg, Err):
            error = msg.error
        if batch is None:
            return
        batch.outstanding -= 1
        if ok:
            batch.contacted += 1
        else:
            batch.failed.append(to)
            effects.append(Log("warning", f"join {to[0]}:{to[1]} failed: {error}"))
        if batch.outstanding == 0:
            effects.append(JoinFinished(batch.contacted, tuple(batch.failed)))
            self._after_join(now, batch)

    def merge(self, now: float, msg: PushPull, effects: list[Effect]) -> None:
        """A remote state, member by member, then its user state (serf's or ours)."""
        swim = self._swim
        table = swim._table
        get = table.members.get
        me = swim.name
        alive_state = NodeState.ALIVE
        quiet_max = _quiet_max

        def merge_one(ns: PushNodeState, current: Member | None) -> None:
            # Fast path: news that cannot change what we hold (a converged 10,000-node
            # state is 10,000 of these). Exactly the cases the handlers below ignore:
            # an alive from the same address that is not newer; suspect/dead/left about
            # a member we already hold dead or left (no suspicion can exist for it).
            if current is not None and ns.name != me:
                if ns.state == alive_state:
                    if (
                        ns.incarnation <= current.incarnation
                        and ns.port == current.port
                        and ip_text(ns.addr) == current.addr
                        # at the ceiling an alive still beats suspect/dead (supersedes)
                        and (ns.incarnation < INCARNATION_MAX or current.status == Status.ALIVE)
                    ):
                        if quiet_max and current.status == Status.ALIVE:
                            if len(_quiet) >= quiet_max:
                                _quiet.clear()
                                _quiet_pins.clear()
                            key = id(ns)
                            _quiet[key] = current
                            _quiet_pins[key] = ns
                        return
                elif current.status >= _DEAD:
                    return
            if ns.state == NodeState.ALIVE:
                swim._alive(now, Alive(ns.incarnation, ns.name, ns.addr, ns.port, ns.meta, ns.vsn), effects)
            elif ns.state == NodeState.LEFT:
                swim._dead(now, ns.name, ns.incarnation, ns.name, effects)
            elif ns.name in swim._table.members:
                # Push/pull never kills directly: dead and suspect become our suspicion.
                swim._suspect(now, ns.name, ns.incarnation, me, effects)

        nodes = msg.nodes
        names = list(map(_name_of, nodes))
        n = len(nodes)
        quiet = _quiet
        # Every member looked up at once (C-level), valid while the table is unchanged;
        # after a change (news merged) the rest is looked up again, a few times at most,
        # then one by one. Pairs (state, member) known to be no news (``_quiet``) are
        # passed over by C-level passes; our own state never is.
        i = 0
        batches = 0
        while i < n:
            if batches < _MERGE_BATCHES and (batches == 0 or n - i > 256):
                batches += 1
                version = table.version
                rest = nodes[i:] if i else nodes
                held = table.get_many(names[i:] if i else names)
                if quiet_max:
                    # Not known to be no news: the member the memo holds for the state
                    # (``_MISS`` if none) is not the one we hold.
                    news = list(map(operator.is_not, map(quiet.get, map(id, rest), repeat(_MISS)), held))
                    j = -1
                    rest_names = names[i:] if i else names
                    try:
                        while True:
                            j = rest_names.index(me, j + 1)
                            news[j] = True
                    except ValueError:
                        pass
                    pending: Iterable[int] = compress(range(len(news)), news)
                else:
                    pending = range(len(held))
                base = i
                i = n
                for j in pending:
                    merge_one(nodes[base + j], held[j])
                    if table.version != version:
                        i = base + j + 1
                        break
            else:
                for ns in nodes[i:]:
                    merge_one(ns, get(ns.name))
                i = n
        if msg.user_state:
            if msg.user_state[0] < 0x80:
                swim._serf_message(now, msg.user_state, effects)
            else:
                effects.extend(swim.delegate.merge_remote_state(now, msg.user_state, msg.join))


    def _heard_over_tcp(self, msg: PushPull, peer_ip: str) -> None:
        """A completed push/pull over TCP shows its peer exists (a TCP handshake cannot
        be spoofed from off the path, unlike a UDP source): the one alive member in it at
        the peer's IP counts as heard, like one that answered a probe, so a full table
        never evicts it for a newcomer (``Capacity.make_room``). Several members at that IP
        (agents sharing a host): none is marked, as we cannot tell which one spoke."""
        if not peer_ip:
            return
        alive = NodeState.ALIVE
        nodes = msg.nodes
        # The states whose address reads as ``peer_ip`` (``ip_text(ns.addr) == peer_ip``),
        # found by C-level scans for the only raw forms that read so (4 bytes or
        # IPv4-mapped for IPv4, the 16 bytes for IPv6): a Python pass over 10,000 states
        # per push/pull was ~1 % of a 10,000-node simulation.
        addrs = list(map(_addr_of, nodes))
        found: list[int] = []
        for raw in _raw_forms(peer_ip):
            i = -1
            try:
                while True:
                    i = addrs.index(raw, i + 1)
                    found.append(i)
            except ValueError:
                pass
        found.sort()
        at_ip = [nodes[i].name for i in found if nodes[i].state == alive]
        if len(at_ip) != 1 or at_ip[0] == self._swim.name:
            return
        # What the message claims is not enough (a spoofer can claim any name is at its own
        # IP): the member as OUR table holds it must be alive at that IP, and alone there.
        table = self._swim._table
        member = table.get(at_ip[0])
        if member is None or member.status != Status.ALIVE or member.addr != peer_ip:
            return
        # Members other than us at that IP, by C-level passes (a Python pass over 10,000
        # members per push/pull was ~1 % of a 10,000-node simulation).
        at_peer = list(map(_addr_of, table.members.values())).count(peer_ip)
        if table.members[table.me].addr == peer_ip:
            at_peer -= 1
        if at_peer == 1:
            table.mark_heard(member.name)


def _raw_forms(ip: str) -> list[bytes]:
    """Every wire address ``raw`` with ``ip_text(raw) == ip`` (none if ``ip`` is not an
    address in ``ip_text``'s canonical form)."""
    try:
        packed = ip_bytes(ip)
    except ValueError:
        return []
    forms = [packed]
    if len(packed) == 4:
        forms.append(b"\x00" * 10 + b"\xff\xff" + packed)
    return [raw for raw in forms if ip_text(raw) == ip]


_recent_image_streams: dict[tuple[int, tuple[tuple[int, bytes], ...], bool, bytes, bool], tuple[object, bytes]] = {}
"""The last few push/pull halves built from a shared image, by (image id, the table's
changes to it, join, user state, compression), each pinned with its image. In a
simulated crash storm most nodes' tables end up changed alike (every observer marks
the same crashed members dead): 97 % of the halves of a 3,000-node run repeat one of
the last 8, and a key of a few hundred small states is far cheaper than building,
hashing and compressing ~0.7 MB at 10,000 nodes."""
_RECENT_IMAGE_STREAMS = 8


def _image_stream(
    swim: Swim, patches: tuple[MemberImage, tuple[tuple[int, bytes], ...]], join: bool, user: bytes
) -> bytes:
    """``stream`` for a table sharing a converged image: the image's joined states with
    the table's changes patched in, framed; unencrypted halves are memoised (an
    encrypted one has a fresh nonce each time)."""
    image, changes = patches
    compress = swim.config.enable_compression
    keyring = swim.encryption.outgoing()
    plain = keyring is None or keyring.primary is None
    key = (id(image), changes, join, user, compress)
    if plain:
        hit = _recent_image_streams.get(key)
        if hit is not None and hit[0] is image:
            return hit[1]
    body = wire.encode_push_pull_joined(join, len(image), image.patched_states(_state_of, changes), user)
    frame = wire.frame_stream(body, compress=compress, keyring=keyring)
    if plain:
        _recent_image_streams[key] = (image, frame)
        if len(_recent_image_streams) > _RECENT_IMAGE_STREAMS:
            del _recent_image_streams[next(iter(_recent_image_streams))]
    return frame


def _state_of(m: Member) -> bytes:
    """``m``'s push/pull node state, encoded once per (immutable) member."""
    state = m.wire_state
    return state if state is not None else _encode_state(m)


def _encode_state(m: Member) -> bytes:
    """Encode ``m``'s push/pull node state once and keep it on the (immutable) value."""
    data = wire.encode_node_state(
        PushNodeState(m.name, ip_bytes(m.addr), m.port, m.meta, m.incarnation, NodeState(int(m.status)), m.vsn)
    )
    object.__setattr__(m, "wire_state", data)  # a cache, not state: see Member.wire_state
    return data
