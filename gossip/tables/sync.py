"""When and to whom network-scoped table messages go.

Owns: for each network the local node takes part in, the queues of endpoint-row
events and of scoped extension rows (``extrows``: endpoint aliases) and whether a first bulk sync has arrived; the gossip round (soon after
an idle queue fills, then every interval; queued events to up to
``gossip_nodes`` random network peers, each event ``transmit_limit`` times, in
messages that fit one UDP packet); bulk syncs over TCP (on joining a network
until one arrives, with a member that came back, and periodically with one
random peer); the timers of all that.
Does not: decide what rows mean or which peers exist (``replica.py`` passes
``peers`` and ``rows`` in), encode messages (``framing.py``).
Reference: networkdb's per-network gossip and bulk sync (memberlist.md §5).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gossip.broadcasts import Broadcasts
from gossip.config import retransmit_limit
from gossip.effects import Effect
from gossip.tables import framing
from gossip.tables.config import TablesConfig, TablesStats

if TYPE_CHECKING:
    from gossip.swim import Swim


def transmit_limit(base: int, n: int, fanout: int, miss: float) -> int:
    """How many times each node of an ``n``-node network sends one row: at least
    ``base`` (memberlist's RetransmitMult × ⌈log10(n+1)⌉), and enough that a given
    member is left out with probability ``miss / (n-1)``, so a row misses some member
    with probability about ``miss`` (docs/tables.md §3).

    Every one of the other n-1 holders sends the row S times to random peers,
    ``fanout`` distinct ones per round, so a member is skipped by all of them with
    probability q^((n-1)·S/fanout), q = 1 - fanout/(n-1): about e^-S for large n.
    Hence S = fanout·ln((n-1)/miss) / ((n-1)·-ln q), ≈ ln((n-1)/miss): 11 for 50
    nodes at miss = 0.001 (memberlist's rule gives 8, i.e. ≈ 49·e^-8 ≈ 1.6 %).
    """
    peers = n - 1
    if peers <= fanout or fanout <= 0:
        return base  # every round reaches every peer (or nobody): no random miss
    per_round = -math.log1p(-fanout / peers)
    sends = fanout * math.log(peers / miss) / (peers * per_round)
    return max(base, math.ceil(sends))


def fresh_targets(peers: list[str], fanout: int, rng: random.Random) -> list[str]:
    """Who gets a freshly written local row at once: every peer of a network of at most
    ``fanout`` peers (the row is then on every host after one datagram's transit, not
    after gossip rounds), else ``fanout`` random ones (a bounded burst per write; the
    rest hear it from them and from the gossip rounds). ``peers`` in a stable order
    (sorted names): the choice depends on ``rng`` alone."""
    if fanout <= 0 or not peers:
        return []
    if len(peers) <= fanout:
        return list(peers)
    return rng.sample(peers, fanout)


@dataclass(slots=True)
class _Joined:
    queue: Broadcasts = field(default_factory=Broadcasts)
    ext: Broadcasts = field(default_factory=Broadcasts)
    """Encoded scoped extension rows, sent in NET_GOSSIP's trailing field."""
    synced: bool = False


class NetSync:
    def __init__(
        self,
        node: str,
        rng: random.Random,
        config: TablesConfig,
        stats: TablesStats,
        peers: Callable[[str], list[str]],
        rows: Callable[[str, float], list[bytes]],
    ) -> None:
        self.node = node
        self.rng = rng
        self.config = config
        self.stats = stats
        self.swim: Swim | None = None
        self._peers = peers
        self._rows = rows
        self.ext_rows: Callable[[str, float], list[Any]] = lambda net, now: []
        """The network's extension rows (msgpack-ready) that ride on every bulk sync."""
        self.joined: dict[str, _Joined] = {}
        """Networks the local node takes part in, in joining order."""
        self._recent: dict[tuple[str, str], float] = {}
        """(net, peer) -> when we last sent it an unsolicited bulk sync"""
        self._gossip_at = math.inf
        self._last_round = -math.inf
        """When this node last sent network gossip (rounds are at least an interval apart)."""
        self._sync_at = -math.inf
        self._retry_at = math.inf

    # --------------------------------------------------------------- networks

    def join(self, now: float, net: str, effects: list[Effect]) -> None:
        self.joined[net] = _Joined()
        self.join_sync(now, net, effects)

    def leave(self, net: str) -> None:
        del self.joined[net]

    def queue(self, now: float, net: str, key: str, data: bytes) -> None:
        """Queue an encoded endpoint row for the network's gossip (newer news replaces older)."""
        joined = self.joined.get(net)
        if joined is not None:
            joined.queue.queue(key, data)
            self.arm(now)

    def queue_ext(self, now: float, net: str, key: str, data: bytes) -> None:
        """Queue an encoded scoped extension row for the network's gossip."""
        joined = self.joined.get(net)
        if joined is not None:
            joined.ext.queue(key, data)
            self.arm(now)

    def arm(self, now: float) -> None:
        """Schedule a round for queued events: soon after the first one on an idle node
        (a relay then costs ``gossip_coalesce`` rather than a whole interval), but at
        most one round per interval, so a busy node keeps its fixed pace."""
        if math.isinf(self._gossip_at):
            self._gossip_at = max(now + self.config.gossip_coalesce, self._last_round + self.gossip_interval())

    def new_peer(self, now: float, net: str, peer: str, effects: list[Effect]) -> None:
        """A node joined a network we are in: events queued while we had no peer can go,
        and if we are not synced yet, it can sync us."""
        joined = self.joined.get(net)
        if joined is None:
            return
        if joined.queue or joined.ext:
            self.arm(now)
        if not joined.synced:
            self.bulk_sync(now, net, peer, True, effects)

    # ------------------------------------------------------------------ sends

    def gossip(self, now: float, net: str, effects: list[Effect]) -> None:
        """One gossip round for one network."""
        joined = self.joined.get(net)
        swim = self.swim
        if joined is None or not (joined.queue or joined.ext):
            return
        peers = self._peers(net)
        if swim is None or not peers:
            return  # kept (one entry per row) until a peer's member row arrives
        limit = transmit_limit(retransmit_limit(swim.config, len(peers) + 1), len(peers) + 1,
                               self.config.gossip_nodes, self.config.gossip_miss)
        self._last_round = now
        budget = min(self.config.udp_payload, swim.config.udp_buffer_size - 100)
        budget -= framing.NET_GOSSIP_OVERHEAD
        for peer in self.rng.sample(peers, min(self.config.gossip_nodes, len(peers))):
            items = joined.queue.take(0, budget, limit)
            # The trailing field: at most an array header (3 bytes) beyond the rows.
            room = budget - sum(len(i) for i in items) - 3
            ext = joined.ext.take(0, room, limit) if joined.ext else []
            if not items and not ext:
                break
            payload = framing.encode_net_gossip(net, items, ext_encoded=ext)
            self.stats.gossip_sent += 1
            self.stats.gossip_bytes += len(payload)
            effects.extend(swim.send_user(peer, payload))
        if joined.queue or joined.ext:
            self.arm(now)

    def push_fresh(self, net: str, data: bytes, effects: list[Effect]) -> list[str]:
        """Send one freshly written local row (encoded) at once to ``fresh_targets`` of
        the network's peers, in a message of its own; returns the peers. The row stays
        queued for the regular rounds, which keep their pace and ``transmit_limit``
        (a datagram of this push may be lost). Sans-IO: the core decides, the effects
        it returns are the sends."""
        swim = self.swim
        if swim is None or net not in self.joined:
            return []
        budget = min(self.config.udp_payload, swim.config.udp_buffer_size - 100) - framing.NET_GOSSIP_OVERHEAD
        if len(data) > budget:
            return []  # cannot happen for a valid row; the rounds would skip it too
        targets = fresh_targets(self._peers(net), self.config.fresh_peers, self.rng)
        if not targets:
            return []
        payload = framing.encode_net_gossip(net, [data])
        for peer in targets:
            self.stats.fresh_sent += 1
            self.stats.gossip_bytes += len(payload)
            effects.extend(swim.send_user(peer, payload))
        return targets

    def bulk_sync(self, now: float, net: str, peer: str, unsolicited: bool, effects: list[Effect]) -> None:
        """Everything we hold for the network, over TCP (the peer answers an unsolicited one)."""
        if self.swim is None:
            return
        payload = framing.encode_bulk_sync(net, self.node, unsolicited, self._rows(net, now),
                                           self.ext_rows(net, now))
        self.stats.bulk_sent += 1
        self.stats.bulk_bytes += len(payload)
        if unsolicited:
            self._recent[(net, peer)] = now
        effects.extend(self.swim.stream_user(peer, payload))

    def on_bulk_sync(self, now: float, msg: framing.BulkSync, effects: list[Effect]) -> None:
        """After its rows were merged: we are synced; answer an unsolicited one."""
        joined = self.joined.get(msg.net)
        if joined is None:
            return
        joined.synced = True
        if msg.unsolicited:
            sent = self._recent.get((msg.net, msg.sender))
            # We just sent ours unsolicited to the same peer: its answer to that suffices.
            if sent is None or now - sent > self.config.sync_retry:
                self.bulk_sync(now, msg.net, msg.sender, False, effects)

    def join_sync(self, now: float, net: str, effects: list[Effect]) -> None:
        """Until a first bulk sync arrives for a network we joined, ask peers for one."""
        joined = self.joined.get(net)
        if joined is None or joined.synced:
            return
        peers = self._peers(net)
        for peer in self.rng.sample(peers, min(self.config.join_sync_peers, len(peers))):
            self.bulk_sync(now, net, peer, True, effects)
        self._retry_at = min(self._retry_at, now + self.config.sync_retry)

    def push(self, payload: bytes, candidates: list[str]) -> list[Effect]:
        """A cluster-wide event sent at once to a few members (it is also piggybacked)."""
        effects: list[Effect] = []
        if self.swim is None:
            return effects
        for peer in self.rng.sample(candidates, min(self.config.gossip_nodes, len(candidates))):
            effects.extend(self.swim.send_user(peer, payload))
        return effects

    # ----------------------------------------------------------------- timers

    def gossip_interval(self) -> float:
        if self.config.gossip_interval is not None:
            return self.config.gossip_interval
        return self.swim.config.gossip_interval if self.swim is not None else 0.2

    def sync_interval(self) -> float:
        if self.config.bulk_sync_interval is not None:
            return self.config.bulk_sync_interval
        return self.swim.config.push_pull_interval if self.swim is not None else 30.0

    def push_pull_interval(self) -> float:
        return self.swim.config.push_pull_interval if self.swim is not None else 30.0

    def next_deadline(self) -> float:
        return min(self._gossip_at, self._sync_at, self._retry_at)

    def tick(self, now: float, effects: list[Effect]) -> None:
        if self._sync_at <= now:
            if math.isinf(self._sync_at):  # first tick: stagger, as memberlist does
                self._sync_at = now + self.rng.uniform(0, self.sync_interval())
            else:
                self._sync_at = now + self.sync_interval()
                for net in list(self.joined):
                    peers = self._peers(net)
                    if peers:
                        self.bulk_sync(now, net, peers[self.rng.randrange(len(peers))], True, effects)
        if self._retry_at <= now:
            self._retry_at = math.inf
            for net in list(self.joined):
                self.join_sync(now, net, effects)
        if self._gossip_at <= now:
            self._gossip_at = math.inf
            self._last_round = now
            for net in list(self.joined):
                self.gossip(now, net, effects)

    def prune(self, now: float) -> None:
        stale = now - 2 * self.sync_interval()
        for key in [k for k, t in self._recent.items() if t < stale]:
            del self._recent[key]
