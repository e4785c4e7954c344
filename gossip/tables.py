"""Replicated ``networks`` and ``endpoints`` tables on the gossip core's delegate seam.

Owns: one node's replica of the networks (cluster-wide), of who takes part in
which network (cluster-wide member rows), of IPAM block claims (cluster-wide)
and of the endpoints of the networks this node takes part in; the Lamport
clock; owner authority; network-scoped gossip and bulk sync; and the
synchronous API the agent calls. Sans-IO: every entry point takes ``now`` and
returns effects; randomness only from the ``rng`` given.

Does not: store rows (``tablestore.py``), encode them (``records.py``,
``netgossip.py``), do address math (``ipam.py``) or resolve conflicts
(``conflicts.py``); touch the kernel (the dataplane watches ``version``).

Rules in one place (docs/tables.md has the why):
- Every row is last-writer-wins by (lamport, writer); the clock witnesses every
  received row. Member, claim and endpoint rows are written only by their owner.
- Owner authority: an owner that hears a version of its own row newer than
  the one it holds (a life before a restart, a lost delete) re-publishes its
  truth above it, so peers converge on what the owner really has.
- An endpoint row is visible when its owner is alive or suspect, has joined the
  network and the network exists; rows of owners gone for ``owner_reap`` are dropped.
- A node takes part in a network while it has a local endpoint there: only then
  it stores, gossips (UDP, to ``gossip_nodes`` random network peers per
  interval) and bulk-syncs (TCP) that network's endpoint rows.

Wiring: ``tables = Tables(node=..., vtep=..., rng=...)``;
``swim = Swim(..., delegate=tables)``; ``tables.attach(swim)``.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from gossip import conflicts, ipam, netgossip
from gossip.broadcasts import Broadcasts
from gossip.config import retransmit_limit
from gossip.effects import Effect, Log
from gossip.errors import DecodeError
from gossip.members import Member, Status
from gossip.records import (
    AnyRow,
    ClaimRow,
    Conflict,
    Endpoint,
    EndpointRow,
    MemberRow,
    Network,
    NetworkRow,
    TableError,
    check_name,
    encode_row,
    is_hex_id,
    newer,
)
from gossip.tablestore import TableStore

if TYPE_CHECKING:
    from gossip.swim import Swim

__all__ = ["Block", "Conflict", "Endpoint", "Network", "TableError", "Tables", "TablesConfig"]

_UP = (Status.ALIVE, Status.SUSPECT)


@dataclass(frozen=True, slots=True)
class TablesConfig:
    """Durations in float seconds; None means "take it from the Swim config"."""

    tombstone_ttl: float = 1800.0
    """How long a delete is remembered (networkdb: 30 min). A partition longer than
    this can bring back a deleted network (endpoints are protected by their owner)."""
    owner_reap: float = 1800.0
    """Rows of a member that died or left are hidden at once and dropped after this."""
    gossip_interval: float | None = None
    gossip_nodes: int = 3
    bulk_sync_interval: float | None = None
    """Per-network anti-entropy with one random network peer (None: push_pull_interval)."""
    join_sync_peers: int = 3
    sync_retry: float = 1.0
    """How often a network not yet synced retries its join sync."""
    reap_period: float = 5.0
    udp_payload: int = 1300
    default_mtu: int = 1450
    vni_min: int = 4096
    vni_max: int = ipam.VNI_MAX
    ipam_block: int = 16
    ipam_min_blocks: int = 64

    def __post_init__(self) -> None:
        if self.ipam_block < 4 or self.ipam_block & (self.ipam_block - 1):
            raise ValueError("ipam_block must be a power of two >= 4")
        if not 1 <= self.vni_min <= self.vni_max <= ipam.VNI_MAX:
            raise ValueError(f"VNI range must lie within 1-{ipam.VNI_MAX}")
        if self.tombstone_ttl <= 0 or self.owner_reap <= 0 or self.reap_period <= 0:
            raise ValueError("tombstone_ttl, owner_reap and reap_period must be positive")

    def with_(self, **changes: object) -> TablesConfig:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Block:
    """An IPAM block claim as seen by this node."""

    network: str
    cidr: str
    node: str
    owner: bool
    """True if this claim wins the block (the claimant allocates from it)."""


@dataclass(slots=True)
class TablesStats:
    gossip_sent: int = 0
    gossip_bytes: int = 0
    bulk_sent: int = 0
    bulk_bytes: int = 0
    rows_applied: int = 0
    reasserts: int = 0
    decode_errors: int = 0


@dataclass(slots=True)
class _Joined:
    """A network this node takes part in."""

    queue: Broadcasts = field(default_factory=Broadcasts)
    synced: bool = False


class Tables:
    """One node's replica and API. See the module docstring."""

    def __init__(
        self,
        *,
        node: str,
        vtep: str,
        rng: random.Random,
        config: TablesConfig | None = None,
        meta: bytes = b"",
        now: float = -math.inf,
    ) -> None:
        if not node:
            raise ValueError("node name must not be empty")
        try:
            self.vtep = str(ipaddress.ip_address(vtep))
        except ValueError:
            raise ValueError(f"invalid VTEP address {vtep!r}") from None
        self.node = node
        self.rng = rng
        self.config = config or TablesConfig()
        self.meta = meta
        """Node meta (serf tags) advertised through Swim."""
        self.swim: Swim | None = None
        self.clock = 0
        """Lamport clock of this node's table writes (persist it with the local endpoints)."""
        self.version = 0
        """Incremented on every change that may alter a view (networks, endpoints,
        peers, conflicts): the dataplane reconciler watches it."""
        self.stats = TablesStats()
        self.store = TableStore()
        self._now = now
        self._local: dict[str, Endpoint] = {}
        self._joined: dict[str, _Joined] = {}
        self._bcast = Broadcasts()
        self._gone: dict[str, float] = {}
        self._recent_sync: dict[tuple[str, str], float] = {}
        self._net_view: tuple[list[Network], list[Conflict]] | None = None
        self._addr_views: dict[str, tuple[dict[str, str], list[Conflict]]] = {}
        self._reported: dict[str, Conflict] = {}
        self._reported_version = 0
        self._gossip_at = math.inf
        self._sync_at = -math.inf
        self._retry_at = math.inf
        self._reap_at = -math.inf

    def attach(self, swim: Swim) -> None:
        """Second wiring step: the core this delegate sends through."""
        self.swim = swim

    # ================================================================ delegate

    def node_meta(self, limit: int) -> bytes:
        return self.meta[:limit]

    def on_user_message(self, now: float, data: bytes) -> list[Effect]:
        self._now = now
        effects: list[Effect] = []
        try:
            msg = netgossip.decode(data, now)
        except DecodeError as exc:
            self._bad_input(exc, effects)
            return effects
        if isinstance(msg, netgossip.Event):
            self._merge_cluster(now, msg.row, effects, rebroadcast=True)
        elif isinstance(msg, netgossip.NetGossip):
            self._merge_endpoints(now, msg.net, msg.rows, effects, rebroadcast=True)
        elif isinstance(msg, netgossip.BulkSync):
            self._on_bulk_sync(now, msg, effects)
        elif isinstance(msg, netgossip.State):
            for row in msg.rows:
                self._merge_cluster(now, row, effects, rebroadcast=False)
        self._finish(effects)
        return effects

    def take_broadcasts(self, overhead: int, budget: int) -> list[bytes]:
        if self.swim is None or not self._bcast:
            return []
        limit = retransmit_limit(self.swim.config, self.swim.num_members())
        return self._bcast.take(overhead, budget, limit)

    def local_state(self, join: bool) -> bytes:
        now = self._now
        rows = [
            encode_row(r, now)
            for r in self.store.cluster_rows()
            if isinstance(r, NetworkRow) or not self._reaped(r.writer)
        ]
        # Nothing to say: stay silent (serf peers log user state they cannot parse).
        return netgossip.encode_state(rows) if rows else b""

    def merge_remote_state(self, now: float, data: bytes, join: bool) -> list[Effect]:
        self._now = now
        effects: list[Effect] = []
        try:
            msg = netgossip.decode(data, now)
        except DecodeError as exc:
            self._bad_input(exc, effects)
            return effects
        if isinstance(msg, netgossip.State):
            for row in msg.rows:
                self._merge_cluster(now, row, effects, rebroadcast=False)
        self._finish(effects)
        return effects

    def on_member_change(self, now: float, old: Member | None, new: Member) -> list[Effect]:
        self._now = now
        effects: list[Effect] = []
        name = new.name
        if name == self.node:
            return effects
        was_up = old is not None and old.status in _UP
        if new.status in _UP:
            self._gone.pop(name, None)
            if not was_up:
                self._touch_all()
                # A member (re)appeared: exchange the networks we share with it now
                # rather than at the next anti-entropy round (networkdb does the same).
                for net in self._joined:
                    if self.store.joined(net, name):
                        self._bulk_sync(now, net, name, True, effects)
        else:
            self._gone.setdefault(name, now)
            if was_up:
                self._gone[name] = now
                self._touch_all()
        self._finish(effects)
        return effects

    def next_deadline(self) -> float:
        return min(self._gossip_at, self._sync_at, self._retry_at, self._reap_at)

    def tick(self, now: float) -> list[Effect]:
        self._now = now
        effects: list[Effect] = []
        if self._reap_at <= now:
            self._reap_at = now + self.config.reap_period
            self._reap(now)
        if self._sync_at <= now:
            if math.isinf(self._sync_at):
                self._sync_at = now + self.rng.uniform(0, self._sync_interval())
            else:
                self._sync_at = now + self._sync_interval()
                self._periodic_sync(now, effects)
        if self._retry_at <= now:
            self._retry_at = math.inf
            for net in list(self._joined):
                self._join_sync(now, net, effects)
        if self._gossip_at <= now:
            self._gossip_at = math.inf
            for net in list(self._joined):
                self._gossip_net(now, net, effects)
        self._finish(effects)
        return effects

    # ============================================================== agent API

    def networks(self) -> list[Network]:
        """Networks in force (conflict losers are left out; see ``conflicts``), by name."""
        return list(self._networks_view()[0])

    def find_network(self, ref: str) -> Network:
        """By exact id, name, or unique id prefix. Raises TableError."""
        if not isinstance(ref, str) or not ref:
            raise TableError("no network given")
        live = [r.value for r in self.store.networks.values() if not r.deleted and r.value]
        for n in live:
            if n.id == ref:
                return n
        for n in self._networks_view()[0]:
            if n.name == ref:
                return n
        named = [n for n in live if n.name == ref]
        if named:
            return min(named, key=lambda n: (n.created, n.creator, n.id))
        prefix = ref.lower()
        if all(c in "0123456789abcdef" for c in prefix):
            hits = [n for n in live if n.id.startswith(prefix)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise TableError(f"network id prefix {ref!r} is ambiguous ({len(hits)} networks)")
        raise TableError(f"no such network: {ref}")

    def create_network(
        self,
        now: float,
        name: str,
        subnets: Sequence[str],
        vni: int | None = None,
        encrypted: bool = False,
        mtu: int | None = None,
        created_at: float | None = None,
    ) -> tuple[Network, list[Effect]]:
        """A new cluster-wide network; it spreads with the gossip. Raises TableError."""
        self._now = now
        check_name(name, "network")
        nets = ipam.parse_subnets(subnets)
        live = [r.value for r in self.store.networks.values() if not r.deleted and r.value]
        for other in live:
            if other.name == name:
                raise TableError(f"network {name!r} already exists (id {other.id[:12]})")
            for s in nets:
                for o in other.subnets:
                    if ipam.overlapping(s, o):
                        raise TableError(f"subnet {s} overlaps {o} of network {other.name!r}")
        used_vnis = {n.vni for n in live}
        if vni is not None:
            if isinstance(vni, bool) or not isinstance(vni, int) or not 1 <= vni <= ipam.VNI_MAX:
                raise TableError(f"invalid VNI {vni!r}: expected 1-{ipam.VNI_MAX}")
            if vni in used_vnis:
                holder = next(n for n in live if n.vni == vni)
                raise TableError(f"VNI {vni} is already used by network {holder.name!r}")
        if mtu is None:
            mtu = self.config.default_mtu
        low = 1280 if any(":" in s for s in nets) else 68
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not low <= mtu <= 65535:
            raise TableError(f"invalid MTU {mtu!r}: expected {low}-65535")
        net_id = self._new_id(lambda i: i in self.store.networks)
        if vni is None:
            vni = ipam.pick_vni(net_id, used_vnis, self.config.vni_min, self.config.vni_max)
        created = self._tick()
        network = Network(
            net_id, name, nets, vni, bool(encrypted), mtu,
            float(now if created_at is None else created_at), self.node, created,
        )
        row = NetworkRow(net_id, created, self.node, False, network)
        self._write(now, row)
        effects = self._push_now(now, row)
        self._finish(effects)
        return network, effects

    def remove_network(self, now: float, ref: str) -> tuple[Network, list[Effect]]:
        """Delete a network; refused while any endpoint or node uses it. Raises TableError."""
        self._now = now
        network = self.find_network(ref)
        users = [e for e in self._local.values() if e.network == network.id]
        users += [e for e in self._visible_remote(network.id)]
        nodes = sorted({e.owner for e in users} | {n for n, _ in self.network_peers(network.id)})
        if users or nodes:
            where = ", ".join(nodes[:5]) + (" ..." if len(nodes) > 5 else "")
            raise TableError(
                f"network {network.name!r} is in use ({len(users)} endpoints; nodes: {where}); "
                "remove its endpoints first"
            )
        row = NetworkRow(network.id, self._tick(), self.node, True, network,
                         now + self.config.tombstone_ttl)
        self._write(now, row)
        effects = self._push_now(now, row)
        self._finish(effects)
        return network, effects

    def create_endpoint(
        self,
        now: float,
        network: str,
        name: str | None = None,
        ipv4: str | None = None,
        ipv6: str | None = None,
        mac: str | None = None,
    ) -> tuple[Endpoint, list[Effect]]:
        """A local endpoint; addresses are allocated when not given. Raises TableError."""
        self._now = now
        net = self.find_network(network)
        winners, lost = self._networks_view()
        if all(w.id != net.id for w in winners):
            why = next((c for c in lost if c.loser == net.id), None)
            detail = f": {why.text}" if why else ""
            raise TableError(f"network {net.name!r} ({net.id[:12]}) is disabled{detail}")
        if name is not None:
            check_name(name, "endpoint")
            if any(e.name == name for e in self._local.values()):
                raise TableError(f"an endpoint named {name!r} already exists on this node")
        used = self._used(net.id)
        addrs: dict[int, str | None] = {4: None, 6: None}
        for family, given, subnet in ((4, ipv4, net.subnet_v4), (6, ipv6, net.subnet_v6)):
            if given is not None:
                addr = ipam.parse_address(given, subnet, family)
                if int(addr) in used[family]:
                    raise TableError(f"address {addr} is already in use in network {net.name!r}")
                addrs[family] = str(addr)
            elif subnet is not None:
                addrs[family] = self._allocate(net, family, used[family])
        if mac is None:
            mac = ipam.default_mac(addrs[4], addrs[6])
        else:
            mac = ipam.parse_mac(mac)
        if mac in self._macs(net.id):
            raise TableError(f"MAC address {mac} is already in use in network {net.name!r}")
        ep_id = self._new_id(lambda i: i in self._local)
        effects: list[Effect] = []
        if net.id not in self._joined:
            self._join(now, net.id, effects)
        created = self._tick()
        ep = Endpoint(ep_id, name or f"ep-{ep_id[:12]}", net.id, addrs[4], addrs[6], mac,
                      self.node, self.vtep, created)
        self._local[ep_id] = ep
        self._write(now, EndpointRow(net.id, self.node, ep_id, created, False, ep, since=now))
        self._tidy_claims(now, net.id)
        self._gossip_net(now, net.id, effects)
        self._finish(effects)
        return ep, effects

    def remove_endpoint(self, now: float, ref: str) -> tuple[Endpoint, list[Effect]]:
        """Remove a local endpoint (by id, id prefix or name). Raises TableError."""
        self._now = now
        ep = self._find_local(ref)
        del self._local[ep.id]
        effects: list[Effect] = []
        self._write(now, self._endpoint_tombstone(now, ep.network, ep.id))
        self._gossip_net(now, ep.network, effects)
        if any(e.network == ep.network for e in self._local.values()):
            self._tidy_claims(now, ep.network)
        else:
            self._leave(now, ep.network)
        self._finish(effects)
        return ep, effects

    def endpoints(self, network: str | None = None) -> list[Endpoint]:
        """Visible endpoints (local and remote) of the networks this node takes part in;
        ``conflict`` is set on rows that lost an address/MAC conflict."""
        nets = [self.find_network(network).id] if network is not None else list(self._joined)
        out: list[Endpoint] = []
        for net in nets:
            losers = self._address_view(net)[0]
            for ep in self._visible(net):
                out.append(replace(ep, conflict=True) if ep.id in losers else ep)
        out.sort(key=lambda e: (e.network, e.owner, e.name, e.id))
        return out

    def find_endpoint(self, ref: str) -> Endpoint:
        """A visible endpoint by exact id, local name, or unique id prefix."""
        if not isinstance(ref, str) or not ref:
            raise TableError("no endpoint given")
        eps = self.endpoints()
        for ep in eps:
            if ep.id == ref:
                return ep
        for ep in eps:
            if ep.owner == self.node and ep.name == ref:
                return ep
        hits = [ep for ep in eps if ep.id.startswith(ref.lower())]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise TableError(f"endpoint id prefix {ref!r} is ambiguous ({len(hits)} endpoints)")
        raise TableError(f"no such endpoint: {ref}")

    def local_endpoints(self) -> list[Endpoint]:
        """This node's endpoints: what the agent persists (with ``clock`` and
        ``local_networks()``) and hands back to ``restore_local_endpoints``."""
        return sorted(self._local.values(), key=lambda e: (e.network, e.name, e.id))

    def local_networks(self) -> list[Network]:
        """Definitions of the networks the local endpoints are on (for persistence)."""
        out = []
        for net in sorted({e.network for e in self._local.values()}):
            r = self.store.networks.get(net)
            if r is not None and r.value is not None:
                out.append(r.value)
        return out

    def network_peers(self, network: str) -> list[tuple[str, str]]:
        """(node, VTEP) of the other live nodes taking part in the network, by node name."""
        net = network if network in self.store.members else self.find_network(network).id
        return self._peer_rows(net)

    def conflicts(self) -> list[Conflict]:
        """Network conflicts, then address conflicts of the networks this node is in."""
        out = list(self._networks_view()[1])
        for net in self._joined:
            out.extend(self._address_view(net)[1])
        return out

    def claims(self, network: str) -> list[Block]:
        """The IPAM block claims of a network, by block."""
        net = self.find_network(network)
        rows = [c for c in self.store.claims.get(net.id, {}).values() if not c.deleted]
        owners = ipam.block_owners(rows)
        out = []
        for c in sorted(rows, key=lambda c: (c.family, c.block, c.node)):
            lay = self._layout(net, c.family)
            if lay is not None:
                out.append(Block(net.id, lay.block_cidr(c.block), c.node,
                                 owners[(c.family, c.block)] == c.node))
        return out

    def stored_endpoints(self, network: str) -> list[Endpoint]:
        """Every live endpoint row held for a network, hidden ones included (diagnostics)."""
        rows = self.store.endpoints.get(network, {})
        return [r.value for r in rows.values() if r.value is not None and not r.deleted]

    def restore_local_endpoints(
        self,
        now: float,
        endpoints: Iterable[Endpoint],
        networks: Iterable[Network] = (),
        clock: int = 0,
    ) -> list[Effect]:
        """After a restart: re-publish this node's persisted endpoints with fresh
        Lamport times (owner, VTEP and conflict flag are reset to this node's).
        ``networks`` are their definitions, so a network deleted meanwhile can be
        re-published while in use. Call before ``Swim.join``. Raises TableError
        (and restores nothing) if a row is malformed."""
        self._now = now
        eps = list(endpoints)
        nets = list(networks)
        for n in nets:
            if not isinstance(n, Network) or not is_hex_id(n.id):
                raise TableError(f"cannot restore network {n!r}")
            check_name(n.name, "network")
        seen: dict[str, None] = {}
        for e in eps:
            self._check_restored(e, seen)
        if isinstance(clock, int) and not isinstance(clock, bool):
            self.clock = max(self.clock, clock)
        self.clock = max([self.clock, *(e.created for e in eps), *(n.created for n in nets)])
        in_use = {e.network for e in eps}
        for n in nets:
            if n.id not in self.store.networks and n.id in in_use:
                # Publish the definition at once: if the network was deleted (or even
                # forgotten) meanwhile, it comes back because it is in use; any other
                # version held elsewhere is the same network with the same content.
                self._write(now, NetworkRow(n.id, self._tick(), self.node, False, n))
        effects: list[Effect] = []
        touched: dict[str, None] = {}
        for e in eps:
            if e.id in self._local:
                continue
            ep = replace(e, owner=self.node, vtep=self.vtep, conflict=False)
            if ep.network not in self._joined:
                self._join(now, ep.network, effects)
            self._local[ep.id] = ep
            self._write(now, EndpointRow(ep.network, self.node, ep.id, self._tick(), False, ep,
                                         since=now))
            touched[ep.network] = None
        for net in touched:
            self._tidy_claims(now, net)
            self._keep_in_use(now, net, effects)
        self._finish(effects)
        return effects

    def check_invariants(self) -> None:
        """For tests: internal consistency."""
        nets = {e.network for e in self._local.values()}
        assert nets == set(self._joined), (nets, set(self._joined))
        assert set(self.store.endpoints) == set(self._joined)
        for ep in self._local.values():
            row = self.store.endpoints[ep.network].get((self.node, ep.id))
            assert row is not None and not row.deleted and row.value == ep, ep
            assert self.store.joined(ep.network, self.node)
        for net in self._joined:
            for (owner, _), row in self.store.endpoints[net].items():
                if owner == self.node and not row.deleted:
                    assert row.id in self._local
        assert self.clock >= max((r.lamport for r in self.store.cluster_rows()), default=0)

    # ========================================================== merge (remote)

    def _merge_cluster(self, now: float, row: AnyRow, effects: list[Effect], *, rebroadcast: bool) -> None:
        self._witness(row.lamport)
        if not isinstance(row, NetworkRow):
            if row.writer == self.node:
                self._own_echo(now, row, effects)
                return
            if self._reaped(row.writer):
                return
        if not self.store.merge(row):
            return
        self.stats.rows_applied += 1
        if rebroadcast:
            self._bcast.queue(_key(row), netgossip.encode_event(encode_row(row, now)))
        if isinstance(row, NetworkRow):
            self._touch(row.id, networks=True)
            self._keep_in_use(now, row.id, effects)
            if not row.deleted:
                self._tidy_claims(now, row.id)
        else:
            self._note_owner(row.writer, now)
            self._touch(row.net)
            if isinstance(row, ClaimRow) and row.net in self._joined:
                self._tidy_claims(now, row.net)

    def _merge_endpoints(
        self, now: float, net: str, rows: Sequence[EndpointRow], effects: list[Effect], *, rebroadcast: bool
    ) -> None:
        joined = self._joined.get(net)
        if joined is None:
            return  # scoping: we do not take part in this network
        changed = False
        for row in rows:
            self._witness(row.lamport)
            if row.owner == self.node:
                self._own_echo(now, row, effects)
                continue
            if self._reaped(row.owner):
                continue
            row.since = now
            if not self.store.merge(row):
                continue
            self.stats.rows_applied += 1
            self._note_owner(row.owner, now)
            changed = True
            if rebroadcast:
                joined.queue.queue(_key(row), encode_row(row, now))
        if changed:
            self._touch(net)
            if rebroadcast:
                self._arm_gossip(now)

    def _on_bulk_sync(self, now: float, msg: netgossip.BulkSync, effects: list[Effect]) -> None:
        joined = self._joined.get(msg.net)
        if joined is None:
            return
        self._merge_endpoints(now, msg.net, msg.rows, effects, rebroadcast=False)
        joined.synced = True
        if msg.unsolicited:
            sent = self._recent_sync.get((msg.net, msg.sender))
            # Just sent ours unsolicited to the same peer: it answers that one.
            if sent is None or now - sent > self.config.sync_retry:
                self._bulk_sync(now, msg.net, msg.sender, False, effects)

    def _own_echo(self, now: float, row: AnyRow, effects: list[Effect]) -> None:
        """Owner authority: a version of our own row we do not hold supersedes ours
        (a life before a restart, or a delete whose tombstone we reaped): publish
        our truth above it."""
        cur = self.store.current(row)
        if cur is not None and not newer(row, cur):
            return
        self.stats.reasserts += 1
        if isinstance(row, MemberRow):
            joined = row.net in self._joined
            self._write(now, self._member_row(now, row.net, joined))
            if joined and row.deleted:
                # Peers dropped our rows older than that leave: publish them above it.
                for ep in self._local.values():
                    if ep.network == row.net:
                        self._write(now, EndpointRow(ep.network, self.node, ep.id, self._tick(),
                                                     False, ep, since=now))
                self._gossip_net(now, row.net, effects)
        elif isinstance(row, ClaimRow):
            live = cur is not None and not cur.deleted
            self._write(now, ClaimRow(row.net, row.family, row.block, self.node, self._tick(),
                                      not live, math.inf if live else now + self.config.tombstone_ttl))
        elif isinstance(row, EndpointRow):
            mine = self._local.get(row.id)
            if mine is not None and mine.network == row.net:
                self._write(now, EndpointRow(row.net, self.node, mine.id, self._tick(), False, mine,
                                             since=now))
            else:
                self._write(now, self._endpoint_tombstone(now, row.net, row.id))
            self._arm_gossip(now)

    def _keep_in_use(self, now: float, net: str, effects: list[Effect]) -> None:
        """A network deleted elsewhere while we have endpoints on it is re-published
        (in use wins over a concurrent delete)."""
        row = self.store.networks.get(net)
        if row is None or not row.deleted or row.value is None:
            return
        if not any(e.network == net for e in self._local.values()):
            return
        self._write(now, NetworkRow(net, self._tick(), self.node, False, row.value))
        effects.append(Log("warning", f"tables: network {row.value.name!r} ({net[:12]}) was removed "
                                      "elsewhere while local endpoints use it; re-published it"))

    # ========================================================= local writes

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    def _witness(self, lamport: int) -> None:
        if lamport > self.clock:
            self.clock = lamport

    def _write(self, now: float, row: AnyRow) -> None:
        """Store a row we wrote and queue it for gossip (cluster-wide or network-scoped)."""
        stored = self.store.merge(row)
        assert stored, f"local write did not supersede: {row}"
        if isinstance(row, EndpointRow):
            joined = self._joined.get(row.net)
            if joined is not None:
                joined.queue.queue(_key(row), encode_row(row, now))
                self._arm_gossip(now)
            self._touch(row.net)
            return
        self._bcast.queue(_key(row), netgossip.encode_event(encode_row(row, now)))
        if isinstance(row, NetworkRow):
            self._touch(row.id, networks=True)
        else:
            self._touch(row.net)

    def _member_row(self, now: float, net: str, joined: bool) -> MemberRow:
        if joined:
            return MemberRow(net, self.node, self._tick(), False, self.vtep)
        return MemberRow(net, self.node, self._tick(), True, "", now + self.config.tombstone_ttl)

    def _endpoint_tombstone(self, now: float, net: str, ep_id: str) -> EndpointRow:
        return EndpointRow(net, self.node, ep_id, self._tick(), True, None,
                           now + self.config.tombstone_ttl, now)

    def _join(self, now: float, net: str, effects: list[Effect]) -> None:
        self._joined[net] = _Joined()
        self.store.endpoints.setdefault(net, {})
        self._write(now, self._member_row(now, net, True))
        self._join_sync(now, net, effects)

    def _leave(self, now: float, net: str) -> None:
        # The tombstones went out already; our leave obsoletes our rows at every peer
        # even if that gossip is lost.
        self._write(now, self._member_row(now, net, False))
        for c in list(self.store.claims.get(net, {}).values()):
            if c.node == self.node and not c.deleted:
                self._write(now, self._claim_row(now, net, c.family, c.block, False))
        del self._joined[net]
        self.store.forget_endpoints(net)
        self._addr_views.pop(net, None)

    def _claim_row(self, now: float, net: str, family: int, block: int, live: bool) -> ClaimRow:
        return ClaimRow(net, family, block, self.node, self._tick(), not live,
                        math.inf if live else now + self.config.tombstone_ttl)

    # ================================================================= IPAM

    def _layout(self, net: Network, family: int) -> ipam.Layout | None:
        subnet = net.subnet_v4 if family == 4 else net.subnet_v6
        if subnet is None:
            return None
        return ipam.layout(subnet, self.config.ipam_block, self.config.ipam_min_blocks)

    def _used(self, net: str) -> dict[int, set[int]]:
        """Addresses held by any endpoint row we know in the network (hidden ones too:
        their owner may come back)."""
        used: dict[int, set[int]] = {4: set(), 6: set()}
        eps = [*self.stored_endpoints(net), *(e for e in self._local.values() if e.network == net)]
        for ep in eps:
            if ep.ipv4:
                used[4].add(int(ipaddress.IPv4Address(ep.ipv4)))
            if ep.ipv6:
                used[6].add(int(ipaddress.IPv6Address(ep.ipv6)))
        return used

    def _macs(self, net: str) -> set[str]:
        return {e.mac for e in self.stored_endpoints(net)} | {
            e.mac for e in self._local.values() if e.network == net
        }

    def _allocate(self, net: Network, family: int, used: set[int]) -> str:
        lay = self._layout(net, family)
        assert lay is not None
        claims = [c for c in self.store.claims.get(net.id, {}).values() if not c.deleted]
        owners = ipam.block_owners(claims)
        mine = sorted(b for (f, b), node in owners.items() if f == family and node == self.node)
        value = ipam.allocate(lay, mine, used)
        if value is not None:
            return lay.text(value)
        claimed = {c.block for c in claims if c.family == family}
        start = ipam.start_block(self.node, net.id, family, lay.count)
        while True:
            block = ipam.free_block(lay, claimed, start)
            if block is None:
                raise TableError(
                    f"no free address block in {lay.subnet} of network {net.name!r} "
                    f"({lay.count} blocks of {lay.size} addresses, all claimed); "
                    "use a larger subnet or give an address"
                )
            value = ipam.allocate(lay, [block], used)
            if value is not None:
                return lay.text(value)
            claimed.add(block)

    def _tidy_claims(self, now: float, net: str) -> None:
        """Hold a claim on every block with a local endpoint address, plus one empty
        block we own per family (for the next allocation); release the rest."""
        if net not in self._joined:
            return
        row = self.store.networks.get(net)
        if row is None or row.value is None:
            return
        network = row.value
        want: dict[tuple[int, int], None] = {}
        for ep in self._local.values():
            if ep.network != net:
                continue
            for family, text in ((4, ep.ipv4), (6, ep.ipv6)):
                lay = self._layout(network, family)
                if text and lay is not None:
                    addr = ipaddress.ip_address(text)
                    if addr in lay.subnet:
                        want[(family, lay.block_of(addr))] = None
        claims = self.store.claims.get(net, {})
        owners = ipam.block_owners(claims.values())
        mine = sorted((c.family, c.block) for c in claims.values() if c.node == self.node and not c.deleted)
        for family in (4, 6):
            if any(k[0] == family and owners.get(k) == self.node for k in want):
                continue
            spare = next((k for k in mine if k[0] == family and owners.get(k) == self.node), None)
            if spare is not None:
                want[spare] = None
        for key in mine:
            if key not in want:
                self._write(now, self._claim_row(now, net, key[0], key[1], False))
        for key in want:
            cur = claims.get((key[0], key[1], self.node))
            if cur is None or cur.deleted:
                self._write(now, self._claim_row(now, net, key[0], key[1], True))

    # ============================================================ gossip, sync

    def _gossip_interval(self) -> float:
        if self.config.gossip_interval is not None:
            return self.config.gossip_interval
        return self.swim.config.gossip_interval if self.swim is not None else 0.2

    def _sync_interval(self) -> float:
        if self.config.bulk_sync_interval is not None:
            return self.config.bulk_sync_interval
        return self.swim.config.push_pull_interval if self.swim is not None else 30.0

    def _arm_gossip(self, now: float) -> None:
        if math.isinf(self._gossip_at):
            self._gossip_at = now + self._gossip_interval()

    def _peer_rows(self, net: str) -> list[tuple[str, str]]:
        return sorted(
            (node, m.vtep)
            for node, m in self.store.members.get(net, {}).items()
            if not m.deleted and node != self.node and self._up(node)
        )

    def _peers(self, net: str) -> list[str]:
        return [node for node, _ in self._peer_rows(net)]

    def _gossip_net(self, now: float, net: str, effects: list[Effect]) -> None:
        """One round of network-scoped gossip: queued rows to up to ``gossip_nodes``
        random network peers, each row sent a limited number of times."""
        joined = self._joined.get(net)
        swim = self.swim
        if joined is None or not joined.queue:
            return
        peers = self._peers(net)
        if swim is None or not peers:
            joined.queue = Broadcasts()  # nobody to tell; a later joiner bulk-syncs
            return
        limit = retransmit_limit(swim.config, len(peers) + 1)
        budget = min(self.config.udp_payload, swim.config.udp_buffer_size - 100)
        budget -= netgossip.NET_GOSSIP_OVERHEAD
        for peer in self.rng.sample(peers, min(self.config.gossip_nodes, len(peers))):
            items = joined.queue.take(0, budget, limit)
            if not items:
                break
            payload = netgossip.encode_net_gossip(net, items)
            self.stats.gossip_sent += 1
            self.stats.gossip_bytes += len(payload)
            effects.extend(swim.send_user(peer, payload))
        if joined.queue:
            self._arm_gossip(now)

    def _push_now(self, now: float, row: NetworkRow) -> list[Effect]:
        """Send a network change to a few members at once (it is also piggybacked), so
        an agent that dies right after the call has probably not lost it."""
        effects: list[Effect] = []
        swim = self.swim
        if swim is None:
            return effects
        others = sorted(m.name for m in swim.members() if m.name != self.node and m.status in _UP)
        payload = netgossip.encode_event(encode_row(row, now))
        for peer in self.rng.sample(others, min(self.config.gossip_nodes, len(others))):
            effects.extend(swim.send_user(peer, payload))
        return effects

    def _bulk_sync(self, now: float, net: str, peer: str, unsolicited: bool, effects: list[Effect]) -> None:
        """Everything we hold for the network, over TCP (the peer answers an unsolicited one)."""
        if self.swim is None:
            return
        rows = [
            encode_row(r, now)
            for (owner, _), r in self.store.endpoints.get(net, {}).items()
            if owner == self.node or self._up(owner)
        ]
        payload = netgossip.encode_bulk_sync(net, self.node, unsolicited, rows)
        self.stats.bulk_sent += 1
        self.stats.bulk_bytes += len(payload)
        if unsolicited:
            self._recent_sync[(net, peer)] = now
        effects.extend(self.swim.stream_user(peer, payload))

    def _join_sync(self, now: float, net: str, effects: list[Effect]) -> None:
        """Until a first bulk sync arrives for a network we joined, ask peers for one."""
        joined = self._joined.get(net)
        if joined is None or joined.synced:
            return
        peers = self._peers(net)
        for peer in self.rng.sample(peers, min(self.config.join_sync_peers, len(peers))):
            self._bulk_sync(now, net, peer, True, effects)
        self._retry_at = min(self._retry_at, now + self.config.sync_retry)

    def _periodic_sync(self, now: float, effects: list[Effect]) -> None:
        for net in list(self._joined):
            peers = self._peers(net)
            if peers:
                self._bulk_sync(now, net, peers[self.rng.randrange(len(peers))], True, effects)

    # ============================================================ visibility

    def _up(self, node: str) -> bool:
        if node == self.node:
            return True
        m = self.swim.member(node) if self.swim is not None else None
        return m is not None and m.status in _UP

    def _note_owner(self, node: str, now: float) -> None:
        if not self._up(node):
            self._gone.setdefault(node, now)

    def _reaped(self, node: str) -> bool:
        since = self._gone.get(node)
        return since is not None and self._now - since >= self.config.owner_reap and not self._up(node)

    def _visible_remote(self, net: str) -> list[Endpoint]:
        if not self.store.live_network(net):
            return []
        out = []
        for (owner, _), row in self.store.endpoints.get(net, {}).items():
            if owner == self.node or row.deleted or row.value is None:
                continue
            if self._up(owner) and self.store.joined(net, owner):
                out.append(row.value)
        return out

    def _visible(self, net: str) -> list[Endpoint]:
        local = [e for e in self._local.values() if e.network == net]
        return local + self._visible_remote(net)

    def _networks_view(self) -> tuple[list[Network], list[Conflict]]:
        if self._net_view is None:
            live = [r.value for r in self.store.networks.values() if not r.deleted and r.value]
            self._net_view = conflicts.resolve_networks(live)
        return self._net_view

    def _address_view(self, net: str) -> tuple[dict[str, str], list[Conflict]]:
        view = self._addr_views.get(net)
        if view is None:
            view = conflicts.resolve_addresses(self._visible(net))
            self._addr_views[net] = view
        return view

    def _touch(self, net: str, *, networks: bool = False) -> None:
        self.version += 1
        self._addr_views.pop(net, None)
        if networks:
            self._net_view = None

    def _touch_all(self) -> None:
        self.version += 1
        self._addr_views.clear()
        self._net_view = None

    def _finish(self, effects: list[Effect]) -> None:
        """Log conflicts that appeared or went away since the last entry point."""
        if self.version == self._reported_version:
            return
        self._reported_version = self.version
        current = {c.text: c for c in self.conflicts()}
        for text in current:
            if text not in self._reported:
                effects.append(Log("warning", f"tables: {text}"))
        for text in self._reported:
            if text not in current:
                effects.append(Log("info", f"tables: resolved: {text}"))
        self._reported = current

    # ================================================================== misc

    def _reap(self, now: float) -> None:
        if self.store.reap(now, self._reaped, now - self.config.owner_reap, self.node):
            self._touch_all()
        horizon = 2 * self.config.owner_reap
        for node in [n for n, t in self._gone.items() if now - t >= horizon]:
            if self.swim is None or self.swim.member(node) is None:
                del self._gone[node]
        stale = now - 2 * self._sync_interval()
        for key in [k for k, t in self._recent_sync.items() if t < stale]:
            del self._recent_sync[key]

    def _bad_input(self, exc: DecodeError, effects: list[Effect]) -> None:
        self.stats.decode_errors += 1
        n = self.stats.decode_errors
        if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th, ...: a bad peer cannot flood the log
            effects.append(Log("warning", f"tables: dropped a malformed message ({n} so far): {exc}"))

    def _new_id(self, taken: object) -> str:
        assert callable(taken)
        while True:
            ident = f"{self.rng.getrandbits(256):064x}"
            if not taken(ident):
                return ident

    def _find_local(self, ref: str) -> Endpoint:
        if not isinstance(ref, str) or not ref:
            raise TableError("no endpoint given")
        if ref in self._local:
            return self._local[ref]
        named = [e for e in self._local.values() if e.name == ref]
        if named:
            return named[0]
        hits = [e for e in self._local.values() if e.id.startswith(ref.lower())]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise TableError(f"endpoint id prefix {ref!r} is ambiguous ({len(hits)} endpoints)")
        remote = next((e for e in self.endpoints() if e.id == ref or e.id.startswith(ref)), None)
        if remote is not None:
            raise TableError(f"endpoint {ref} belongs to node {remote.owner}; remove it there")
        raise TableError(f"no such endpoint: {ref}")

    def _check_restored(self, e: Endpoint, seen: dict[str, None]) -> None:
        if not isinstance(e, Endpoint) or not is_hex_id(e.id) or not is_hex_id(e.network):
            raise TableError(f"cannot restore endpoint {e!r}: bad id")
        if e.id in seen:
            raise TableError(f"cannot restore endpoint {e.id[:12]} twice")
        seen[e.id] = None
        check_name(e.name, "endpoint")
        if e.ipv4 is None and e.ipv6 is None:
            raise TableError(f"cannot restore endpoint {e.id[:12]}: no address")
        try:
            if e.ipv4 is not None:
                ipaddress.IPv4Address(e.ipv4)
            if e.ipv6 is not None:
                ipaddress.IPv6Address(e.ipv6)
        except ValueError:
            raise TableError(f"cannot restore endpoint {e.id[:12]}: bad address") from None
        if ipam.parse_mac(e.mac) != e.mac:
            raise TableError(f"cannot restore endpoint {e.id[:12]}: MAC not canonical")
        if isinstance(e.created, bool) or not isinstance(e.created, int) or e.created < 0:
            raise TableError(f"cannot restore endpoint {e.id[:12]}: bad creation time")


def _key(row: AnyRow) -> str:
    """Broadcast-queue key: news about a row replaces older news about it."""
    if isinstance(row, NetworkRow):
        return f"n\0{row.id}"
    if isinstance(row, MemberRow):
        return f"m\0{row.net}\0{row.node}"
    if isinstance(row, ClaimRow):
        return f"c\0{row.net}\0{row.family}\0{row.block}\0{row.node}"
    return f"e\0{row.owner}\0{row.id}"
