"""Replicated ``networks`` and ``endpoints`` tables on the gossip core's delegate seam.

Owns: one node's replica (cluster-wide network, member and claim rows; endpoint
rows of the networks it takes part in), the Lamport clock, the merge rules,
owner authority, the change counter ``version`` and the synchronous API the agent
calls. Sans-IO: every entry point takes ``now`` and returns effects; randomness
only from ``rng``.

Delegates to: ``remote`` (what a row from a peer does), ``startup`` (restoring
persisted rows, converged starts), ``store`` (rows and LWW merge), ``visibility`` (what this node
shows, owner liveness, cached views), ``sync`` (network-scoped gossip and bulk
sync), ``blocks``/``ipam`` (addresses), ``conflicts`` (deterministic winners),
``validation`` (checks, lookups), ``rows``, ``framing`` and ``ipsecrows`` (bytes),
``extras`` (the rows network options make it write: options copies, host endpoints).
Does not touch the kernel: the dataplane watches ``version``.

Rules in one place (docs/tables.md has the why):
- Every row is last-writer-wins by (lamport, writer); the clock witnesses every
  received row. Member, claim and endpoint rows are written only by their owner.
- Owner authority: an owner that hears a version of its own row newer than the
  one it holds (a life before a restart, a lost delete) re-publishes its truth
  above it, so peers converge on what the owner really has.
- Visibility (``gossip.tables.visibility``): an endpoint row is shown when its owner
  is alive or suspect, has joined the network, and the network exists; rows of
  owners gone ``owner_reap`` are dropped.
- A node takes part in a network while it has a local endpoint there; only then
  it stores, gossips and bulk-syncs that network's endpoint rows.

Wiring: ``tables = Tables(node=..., vtep=..., rng=...)``;
``swim = Swim(..., delegate=tables)``; ``tables.attach(swim)``.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from gossip.broadcasts import Broadcasts
from gossip.config import retransmit_limit
from gossip.effects import Effect, Log
from gossip.errors import DecodeError
from gossip.members import Member
from gossip.tables import agenttag, extrows, framing, ipsecrows, remote, startup
from gossip.tables.changes import Changes, Listener
from gossip.tables.config import TablesConfig, TablesStats
from gossip.tables.rows import (
    AnyRow,
    ClaimRow,
    Conflict,
    Endpoint,
    EndpointRow,
    MemberRow,
    Network,
    NetworkOptions,
    NetworkRow,
    TableError,
    check_name,
    encode_row,
    queue_key,
)
from gossip.tables.store import TableStore
from gossip.tables.sync import NetSync
from gossip.tables.visibility import UP, Visibility

if TYPE_CHECKING:
    from gossip.swim import Swim
    from gossip.tables.blocks import Block
    from gossip.tables.extras import Extras

__all__ = ["Conflict", "Endpoint", "Network", "TableError", "Tables", "TablesConfig"]


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
        self.meta = agenttag.with_agent_tag(meta)
        """Node meta (serf tags) advertised through Swim, always with the agent tag that
        tells our agents from serf's (``gossip.tables.agenttag``). ValueError if over 512 bytes."""
        self.swim: Swim | None = None
        self.clock = 0
        """Lamport clock of this node's writes (persist it with the local endpoints)."""
        self.stats = TablesStats()
        self.store = TableStore()
        self._local: dict[str, Endpoint] = {}
        self.visibility = Visibility(node, self.store, self._local, self.config.owner_reap)
        """Who is up, what this node shows, the cached views (``gossip.tables.visibility``)."""
        self.sync = NetSync(node, rng, self.config, self.stats, self.visibility.peers, self._sync_rows)
        self._now = -math.inf
        self._bcast = Broadcasts()
        self._unconfirmed: dict[str, float] = {}
        """Networks re-published from local state that no peer has mentioned since,
        with when we stop waiting for one."""
        self._reap_at = -math.inf
        self.ipsec = ipsecrows.IpsecKeyStore()
        """Every node's IPsec public-key row (``gossip.tables.ipsecrows``); ``ipsec_rows()`` hides
        those of members that are not up. Its own ``version`` signals changes."""
        self.changes = Changes(self.ipsec)
        """The change signal: ``version`` and the subscribers (``gossip.tables.changes``)."""
        self.ext = extrows.ExtensionStore()
        """Rows of kinds this build does not know, kept and relayed (``gossip.tables.extrows``)."""
        self.sync.ext_rows = lambda net, now: extrows.objs(self.ext.scoped_rows(net), now)
        self._extras: Extras | None = None
        self.trace: Callable[[str, str, str], None] | None = None
        """Stage marks for ``bench/propagation.py``, set by the shell when it measures:
        ``trace(stage, endpoint id, detail)`` when ``create_endpoint`` starts ("call",
        detail the network), a local endpoint row is written ("write") and sent at once
        ("push", detail the peers, comma-separated), and a peer's endpoint row is merged
        ("merge", detail its owner). The shell stamps the time; None costs one test."""

    @property
    def extras(self) -> Extras:
        """The rows network options make this node write (``gossip.tables.extras``), made
        on first use: with the first network row, extension row, network or endpoint
        call. Its modules (network options, host access, aliases, IPAM blocks) are what
        only networks need, so an agent that has none does not load them (~0.25 MiB,
        docs/performance.md); until then every call below that would reach it is a no-op
        (``_tidy_opts``, ``_tidy_hosts``, ``host_endpoint``)."""
        if self._extras is None:
            from gossip.tables.extras import Extras

            self._extras = Extras(self)
        return self._extras

    def _tidy_opts(self, now: float) -> None:
        """``Extras.tidy_opts``, which has nothing to do while this node takes part in no
        network and holds no extension row (its options copies and alias rows are those)."""
        if self._extras is not None or self.sync.joined or len(self.ext):
            self.extras.tidy_opts(now)

    def _tidy_hosts(self, now: float) -> None:
        """``Extras.tidy_hosts``, which has nothing to do while this node takes part in no
        network and holds no host endpoint."""
        if self._extras is not None or self.sync.joined:
            self.extras.tidy_hosts(now)

    def attach(self, swim: Swim) -> None:
        """Second wiring step: the core this delegate sends through."""
        self.swim = swim
        self.sync.swim = swim
        self.visibility.attach(swim)

    @property
    def version(self) -> int:
        """Incremented on every change that may alter a view (networks, endpoints,
        peers, conflicts)."""
        return self.changes.version

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(now)`` at the end of every entry point (delegate or API call)
        after which ``version`` or ``ipsec.version`` moved: the dataplane's change signal."""
        self.changes.subscribe(listener)

    # ================================================================ delegate

    def node_meta(self, limit: int) -> bytes:
        return self.meta[:limit]

    def accepts_user_data(self, peer: Member) -> bool:
        return agenttag.has_agent_tag(peer.meta)

    def on_user_message(self, now: float, data: bytes) -> list[Effect]:
        return self._receive(now, data, push_pull=False)

    def _receive(self, now: float, data: bytes, *, push_pull: bool) -> list[Effect]:
        """A user message, or (``push_pull``) the user state of a push/pull, which
        carries only a STATE message (anything else there is ignored)."""
        self._now = now
        effects: list[Effect] = []
        try:
            if not push_pull and data[:1] == bytes([ipsecrows.IPSEC_EVENT]):
                remote.merge_ipsec(self, now, ipsecrows.decode_event(data), effects, rebroadcast=True)
                self._finish(effects)
                return effects
            msg = framing.decode(data, now)
            extra = ipsecrows.rows_in_state(data) if isinstance(msg, framing.State) else []
        except DecodeError as exc:
            self._bad_input(exc, effects)
            return effects
        for ipsec_row in extra:
            remote.merge_ipsec(self, now, ipsec_row, effects, rebroadcast=False)
        if isinstance(msg, framing.State):
            for row in msg.rows:
                remote.merge_cluster(self, now, row, effects, rebroadcast=False)
        elif push_pull:
            pass  # push/pull state carries STATE only
        elif isinstance(msg, framing.Event):
            remote.merge_cluster(self, now, msg.row, effects, rebroadcast=True)
        elif isinstance(msg, framing.NetGossip):
            remote.merge_endpoints(self, now, msg.net, msg.rows, effects, rebroadcast=True)
        elif isinstance(msg, framing.BulkSync) and msg.net in self.sync.joined:
            remote.merge_endpoints(self, now, msg.net, msg.rows, effects, rebroadcast=False)
            self.sync.on_bulk_sync(now, msg, effects)
        self._merge_ext(now, msg, push_pull)
        self._finish(effects)
        return effects

    def _merge_ext(self, now: float, msg: framing.Message | None, push_pull: bool) -> None:
        """Extension rows of a message: kept and relayed, never interpreted (``extrows``)."""
        rows, event = framing.extension_rows(msg, push_pull, self.sync.joined)
        for row in rows:
            self._witness(row.lamport)
            if self.visibility.reaped(row.writer, now) or not self.ext.merge(row):
                continue
            self.stats.rows_applied += 1
            if event:  # re-broadcast once, like a known cluster-wide row
                self._bcast.queue(extrows.queue_key(row), extrows.encode_event(row, now))
            extras = self.extras  # loads the options and aliases code (``extras``)
            extras.on_ext(now, row, relay=isinstance(msg, framing.NetGossip))
            from gossip.tables import netopts

            if row.kind == netopts.KIND:
                extras.refresh_opts()

    def protocol_version(self, network: str | None = None) -> int:
        """The highest tables protocol every agent member that is up (or, with ``network``,
        every live peer of it) and this node speak (``gossip.tables.protocol``)."""
        return self.visibility.protocol_version(network)

    def has_broadcasts(self) -> bool:
        return bool(self._bcast)

    def take_broadcasts(self, overhead: int, budget: int) -> list[bytes]:
        if self.swim is None or not self._bcast:
            return []
        limit = retransmit_limit(self.swim.config, self.swim.num_members())
        parts = self._bcast.take(overhead, budget, limit)
        self.stats.piggyback_bytes += sum(len(p) for p in parts) + overhead * len(parts)
        return parts

    def local_state(self, join: bool) -> bytes:
        rows = [
            encode_row(r, self._now)
            for r in self.store.cluster_rows()
            if isinstance(r, NetworkRow) or not self.visibility.reaped(r.writer, self._now)
        ]
        keys = [r for r in self.ipsec if not self.visibility.reaped(r.node, self._now)]
        ext = extrows.objs(self.ext.cluster_rows(), self._now)
        # Field [2] must be the IPsec list whenever [3] is there (release 0.1.0 reads [2]).
        extra = [ipsecrows.state_field(keys), ext] if ext else [ipsecrows.state_field(keys)] if keys else []
        # Nothing to say: stay silent (serf peers log user state they cannot parse).
        data = framing.encode_state(rows, extra) if rows or extra else b""
        self.stats.state_bytes += len(data)
        return data

    def merge_remote_state(self, now: float, data: bytes, join: bool) -> list[Effect]:
        return self._receive(now, data, push_pull=True)

    def on_member_change(self, now: float, old: Member | None, new: Member) -> list[Effect]:
        self._now = now
        effects: list[Effect] = []
        name = new.name
        if name == self.node:
            return effects
        up = new.status in UP
        if self.visibility.owner_changed(now, name, was_up=old is not None and old.status in UP, up=up):
            self._touch_all()
            if up:
                # A member (re)appeared: exchange the networks we share with it now
                # rather than at the next anti-entropy round (networkdb does the same).
                for net in self.sync.joined:
                    if self.store.joined(net, name):
                        self.sync.bulk_sync(now, net, name, True, effects)
        self._finish(effects)
        return effects

    def next_deadline(self) -> float:
        return min(self._reap_at, self.sync.next_deadline())

    def tick(self, now: float) -> list[Effect]:
        self._now = now
        effects: list[Effect] = []
        if self._reap_at <= now:
            self._reap_at = now + self.config.reap_period
            self._reap(now)
        self.sync.tick(now, effects)
        self._finish(effects)
        return effects

    # ============================================================== agent API

    def networks(self) -> list[Network]:
        """Networks in force (conflict losers are left out; see ``conflicts``), by name."""
        return list(self.visibility.networks_view()[0])

    def find_network(self, ref: str) -> Network:
        """By exact id, name, or unique id prefix (losers by id too). Raises TableError."""
        from gossip.tables import validation

        return validation.find_network(self.visibility.live_networks(), self.visibility.networks_view()[0], ref)

    def create_network(
        self,
        now: float,
        name: str,
        subnets: Sequence[str],
        vni: int | None = None,
        encrypted: bool = False,
        mtu: int | None = None,
        created_at: float | None = None,
        options: NetworkOptions | None = None,
        underlay: Sequence[str] = (),
    ) -> tuple[Network, list[Effect]]:
        """A new cluster-wide network (``created_at``: the agent's wall-clock time, shown
        by inspect; ``options``: ``netopts.parse_options``, whose subnets replace
        ``subnets``; ``underlay``: this host's underlay prefixes, refused as subnets).
        It spreads with the gossip. Raises TableError."""
        from gossip.tables import ipam, netopts, validation

        self._now = now
        live = self.visibility.live_networks()
        if options is not None:
            subnets = netopts.check_usable(options, self.protocol_version())
        nets, mtu = validation.check_new_network(live, name, subnets, vni, mtu, self.config.default_mtu,
                                                 options, underlay)
        net_id = self._new_id(lambda i: i in self.store.networks)
        if vni is None:
            vni = ipam.pick_vni(net_id, {n.vni for n in live}, self.config.vni_min, self.config.vni_max)
        created = self._tick()
        network = Network(net_id, name, nets, vni, bool(encrypted), mtu,
                          float(now if created_at is None else created_at), self.node, created)
        row = NetworkRow(net_id, created, self.node, False, network)
        self._write(now, row)
        if options is not None:
            self.extras.write_opts(now, net_id, options)
            network = replace(network, options=options)
        effects = self._push_now(now, row)
        self._follow_unscoped(now, net_id, effects)
        self._finish(effects)
        return network, effects

    def remove_network(self, now: float, ref: str) -> tuple[Network, list[Effect]]:
        """Delete a network; refused while any endpoint or node uses it. Raises TableError."""
        self._now = now
        network = self.find_network(ref)
        if self._unconfirmed.get(network.id, -math.inf) > now:
            # Our version came from our own state file and may be older than the
            # cluster's; a delete written now could lose to it (LWW).
            raise TableError(
                f"network {network.name!r} was restored from local state and is not confirmed "
                "by the cluster yet; try again in a few seconds"
            )
        users = [e.owner for e in self._local.values() if e.network == network.id]
        users += [e.owner for e in self.visibility.visible_remote(network.id)]
        nodes = sorted({*users, *self.visibility.peers(network.id)})
        if nodes:
            where = ", ".join(nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
            raise TableError(f"network {network.name!r} is in use by endpoints on {where}; remove them first")
        row = NetworkRow(network.id, self._tick(), self.node, True, replace(network, options=None),
                         now + self.config.tombstone_ttl)
        self._write(now, row)
        self._tidy_opts(now)
        effects = self._push_now(now, row)
        self._follow_unscoped(now, network.id, effects)
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
        """A local endpoint; addresses are allocated when not given, the MAC defaults to
        Docker's 02:42 + IPv4. Its row goes to the network's peers. Raises TableError."""
        from gossip.tables import blocks, ipam

        self._now = now
        if self.trace is not None:
            self.trace("call", "", network)
        net = self.find_network(network)
        winners, lost = self.visibility.networks_view()
        if all(w.id != net.id for w in winners):
            why = next((c for c in lost if c.loser == net.id), None)
            detail = f": {why.text}" if why else ""
            raise TableError(f"network {net.name!r} ({net.id[:12]}) is disabled{detail}")
        if name is not None:
            check_name(name, "endpoint")
            if any(e.name == name for e in self._local.values()):
                raise TableError(f"an endpoint named {name!r} already exists on this node")
        # Addresses held by any row we know, hidden ones too: their owner may come back.
        known = [*self.stored_endpoints(net.id), *self.visibility.local_on(net.id)]
        used = blocks.used_addresses(known)
        claims = self.store.claims.get(net.id, {}).values()
        addrs: dict[int, str | None] = {4: None, 6: None}
        for family, given, subnet in ((4, ipv4, net.subnet_v4), (6, ipv6, net.subnet_v6)):
            if given is not None:
                addr = blocks.check_address(net, given, family)
                if int(addr) in used[family]:
                    raise TableError(f"address {addr} is already in use in network {net.name!r}")
                addrs[family] = str(addr)
            elif subnet is not None:
                addrs[family] = blocks.allocate(claims, self.node, net, family, used[family], self.config)
        mac = ipam.default_mac(addrs[4], addrs[6]) if mac is None else ipam.parse_mac(mac)
        if any(e.mac == mac for e in known):
            raise TableError(f"MAC address {mac} is already in use in network {net.name!r}")
        ep_id = self._new_id(lambda i: i in self._local)
        effects: list[Effect] = []
        if net.id not in self.sync.joined:
            self._join(now, net.id, effects)
        created = self._tick()
        ep = Endpoint(ep_id, name or f"ep-{ep_id[:12]}", net.id, addrs[4], addrs[6], mac,
                      self.node, self.vtep, created)
        self._local[ep_id] = ep
        row = EndpointRow(net.id, self.node, ep_id, created, False, ep, since=now)
        self._write(now, row)
        if self.trace is not None:
            self.trace("write", ep_id, net.id)
        self._tidy_hosts(now)
        self._tidy_claims(now, net.id)
        self._send_fresh(now, row, effects)
        self._finish(effects)
        return ep, effects

    def rename_endpoint(self, now: float, ref: str, name: str) -> tuple[Endpoint, list[Effect]]:
        """Give a local endpoint another name (the Docker plugin learns the container's
        name only after the row is out): the row goes out again, same id, addresses and
        creation time, at a new Lamport time. Raises TableError (a name taken here)."""
        self._now = now
        ep = self._find_local(ref)
        check_name(name, "endpoint")
        if name == ep.name:
            return ep, []
        if any(e.name == name for e in self._local.values()):
            raise TableError(f"an endpoint named {name!r} already exists on this node")
        ep = self._local[ep.id] = replace(ep, name=name)
        effects: list[Effect] = []
        row = EndpointRow(ep.network, self.node, ep.id, self._tick(), False, ep, since=now)
        self._write(now, row)
        self._send_fresh(now, row, effects)
        self._finish(effects)
        return ep, effects

    def remove_endpoint(self, now: float, ref: str) -> tuple[Endpoint, list[Effect]]:
        """Remove a local endpoint (by id, id prefix or name). Raises TableError."""
        self._now = now
        ep = self._find_local(ref)
        del self._local[ep.id]
        effects: list[Effect] = []
        tombstone = self._endpoint_tombstone(now, ep.network, ep.id)
        self._write(now, tombstone)
        self.extras.drop_aliases(now, ep)
        self._tidy_hosts(now)
        self._send_fresh(now, tombstone, effects)
        if self.visibility.local_on(ep.network) or not self._scoped(ep.network):
            self._tidy_claims(now, ep.network)
        else:
            self.sync.gossip(now, ep.network, effects)  # the queue goes with the leave: send it now
            self._leave(now, ep.network)
        self._finish(effects)
        return ep, effects

    def endpoints(self, network: str | None = None) -> list[Endpoint]:
        """Visible endpoints (local and remote) of the networks this node takes part in;
        ``conflict`` is set on rows that lost an address/MAC conflict."""
        nets = [self.find_network(network).id] if network is not None else list(self.sync.joined)
        out: list[Endpoint] = []
        for net in nets:
            losers = self.visibility.address_view(net)[0]
            for ep in self.visibility.visible(net):
                out.append(replace(ep, conflict=True) if ep.id in losers else ep)
        out.sort(key=lambda e: (e.network, e.owner, e.name, e.id))
        return out

    def find_endpoint(self, ref: str) -> Endpoint:
        """A visible endpoint by exact id, local name, or unique id prefix. Raises TableError."""
        from gossip.tables import validation

        return validation.find_endpoint(self.endpoints(), ref, self.node)

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
                out.append(self.visibility.with_options(r.value))
        return out

    def network_peers(self, network: str) -> list[tuple[str, str]]:
        """(node, VTEP) of the other live nodes taking part in the network, by node name."""
        net = network if network in self.store.members else self.find_network(network).id
        return self.visibility.peer_rows(net)

    def conflicts(self) -> list[Conflict]:
        """Network conflicts, then address conflicts of the networks this node is in."""
        out = list(self.visibility.networks_view()[1])
        for net in self.sync.joined:
            out.extend(self.visibility.address_view(net)[1])
        return out

    def claims(self, network: str) -> list[Block]:
        """The IPAM block claims of a network, by block."""
        from gossip.tables import blocks

        net = self.find_network(network)
        return blocks.block_view(self.store.claims.get(net.id, {}).values(), net, self.config)

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
        """After a restart: re-publish this node's persisted endpoints with fresh Lamport
        times; ``networks`` are their definitions (``local_networks()``), ``clock`` the
        persisted ``clock``. Call before ``Swim.join``. Raises TableError, restoring
        nothing, if any row is malformed (``startup.restore_local_endpoints``)."""
        return startup.restore_local_endpoints(self, now, endpoints, networks, clock)

    def bootstrap_rows(self, rows: Iterable[AnyRow]) -> None:
        """Install rows as an already converged start, without traffic: for simulators
        and tests only (``startup.bootstrap_rows``)."""
        startup.bootstrap_rows(self, rows)

    def publish_ipsec_keys(self, now: float, keys: Sequence[tuple[int, bytes]]) -> list[Effect]:
        """This node's IPsec public keys, (epoch, X25519 public) ascending: replaces the
        previous row cluster-wide (an empty list: no keys). Raises TableError."""
        self._now = now
        try:
            row = ipsecrows.IpsecKeysRow(self.node, self._tick(), self.vtep, tuple(keys))
            ipsecrows.row_from_obj(ipsecrows.state_field([row])[0])  # same checks as a receiver's
        except DecodeError as exc:
            raise TableError(str(exc)) from None
        self._store_ipsec(row)
        self.changes.announce(now)
        return []

    def ipsec_rows(self) -> list[ipsecrows.IpsecKeysRow]:
        """IPsec key rows of this node and of members that are alive or suspect, by node."""
        return [r for r in self.ipsec if self.visibility.up(r.node)]

    def _store_ipsec(self, row: ipsecrows.IpsecKeysRow) -> None:
        merged = self.ipsec.merge(row)
        assert merged, f"local write did not supersede: {row}"
        self._bcast.queue(f"k\0{row.node}", ipsecrows.encode_event(row))

    def check_invariants(self) -> None:
        """For tests: internal consistency."""
        nets = {e.network for e in self._local.values()}
        if self.config.scoped:
            assert nets == set(self.sync.joined), (nets, set(self.sync.joined))
        assert nets <= set(self.sync.joined)
        assert set(self.store.endpoints) == set(self.sync.joined)
        for ep in self._local.values():
            row = self.store.endpoints[ep.network].get((self.node, ep.id))
            assert row is not None and not row.deleted and row.value == ep, ep
            assert self.store.joined(ep.network, self.node)
        for net in self.sync.joined:
            for (owner, _), row in self.store.endpoints[net].items():
                if owner == self.node and not row.deleted:
                    assert row.id in self._local or row.value == self.host_endpoint(net), row
        assert self.clock >= max((r.lamport for r in self.store.cluster_rows()), default=0)

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
            self.sync.queue(now, row.net, queue_key(row), encode_row(row, now))
            self._touch(row.net)
            return
        self._bcast.queue(queue_key(row), framing.encode_event(encode_row(row, now)))
        if isinstance(row, NetworkRow):
            self._touch(row.id, networks=True)
        elif isinstance(row, MemberRow):
            self.visibility.forget_peers(row.net)
            self._touch(row.net)
        # Claims change no view: no version bump.

    def _member_row(self, now: float, net: str, joined: bool) -> MemberRow:
        if joined:
            return MemberRow(net, self.node, self._tick(), False, self.vtep)
        return MemberRow(net, self.node, self._tick(), True, "", now + self.config.tombstone_ttl)

    def _claim_row(self, now: float, net: str, family: int, block: int, live: bool) -> ClaimRow:
        return ClaimRow(net, family, block, self.node, self._tick(), not live,
                        math.inf if live else now + self.config.tombstone_ttl)

    def _endpoint_tombstone(self, now: float, net: str, ep_id: str) -> EndpointRow:
        return EndpointRow(net, self.node, ep_id, self._tick(), True, None, now + self.config.tombstone_ttl, now)

    def _join(self, now: float, net: str, effects: list[Effect]) -> None:
        self.store.endpoints.setdefault(net, {})
        self._write(now, self._member_row(now, net, True))
        self.sync.join(now, net, effects)
        self._tidy_opts(now)

    def _leave(self, now: float, net: str) -> None:
        # Our tombstones went out already; the leave obsoletes our rows at every peer
        # even if that gossip is lost.
        self._write(now, self._member_row(now, net, False))
        for c in list(self.store.claims.get(net, {}).values()):
            if c.node == self.node and not c.deleted:
                self._write(now, self._claim_row(now, net, c.family, c.block, False))
        self.sync.leave(net)
        self.store.forget_endpoints(net)
        self.visibility.forget(net)

    def _scoped(self, net: str) -> bool:
        return self.config.scoped or not self.store.live_network(net)

    def _follow_unscoped(self, now: float, net: str, effects: list[Effect]) -> None:
        """Without scoping, take part in every live network (and leave deleted ones)."""
        if self.config.scoped:
            return
        if self.store.live_network(net) and net not in self.sync.joined:
            self._join(now, net, effects)
        elif not self.store.live_network(net) and net in self.sync.joined and not self.visibility.local_on(net):
            self._leave(now, net)

    def _tidy_claims(self, now: float, net: str) -> None:
        """Make our claims on a network we take part in what ``blocks.claim_changes`` wants."""
        row = self.store.networks.get(net)
        if net not in self.sync.joined or row is None or row.value is None:
            return
        from gossip.tables import blocks

        claims = self.store.claims.get(net, {})
        take, drop = blocks.claim_changes(claims, self.node, self.visibility.with_options(row.value),
                                          self.extras.mine_on(net), self.config)
        for family, block in drop:
            self._write(now, self._claim_row(now, net, family, block, False))
        for family, block in take:
            self._write(now, self._claim_row(now, net, family, block, True))

    def _send_fresh(self, now: float, row: EndpointRow, effects: list[Effect]) -> None:
        """A local endpoint row just written goes at once to the network's peers (all of
        a small network's, ``TablesConfig.fresh_peers`` of a larger one's) rather than
        waiting for gossip rounds: the time to every host is then one datagram's
        transit. With ``fresh_peers`` = 0, a gossip round now to ``gossip_nodes`` peers."""
        if not self.config.fresh_peers:
            self.sync.gossip(now, row.net, effects)
            return
        sent = self.sync.push_fresh(row.net, encode_row(row, now), effects)
        if self.trace is not None:
            self.trace("push", row.id, ",".join(sent))

    def _push_now(self, now: float, row: NetworkRow) -> list[Effect]:
        """A network change goes to a few members at once, so an agent that dies right
        after the call has probably not lost it."""
        if self.swim is None:
            return []
        others = sorted(m.name for m in self.swim.members()
                        if m.name != self.node and m.status in UP and self.accepts_user_data(m))
        return self.sync.push(framing.encode_event(encode_row(row, now)), others)

    def host_endpoint(self, network: str) -> Endpoint | None:
        """This node's own address in a network with host access (``hostaccess``), if any."""
        return self._extras.hosts.get(network) if self._extras is not None else None

    # ============================================================ what changed

    def _sync_rows(self, net: str, now: float) -> list[bytes]:
        """What a bulk sync carries: our rows of the network, tombstones included,
        except those of owners we consider gone."""
        return [
            encode_row(r, now)
            for (owner, _), r in self.store.endpoints.get(net, {}).items()
            if self.visibility.up(owner)
        ]

    def _touch(self, net: str, *, networks: bool = False) -> None:
        self.changes.bump()
        self.visibility.forget(net, networks=networks)

    def _touch_all(self) -> None:
        self.changes.bump()
        self.visibility.forget_all()

    def _finish(self, effects: list[Effect]) -> None:
        """End of an entry point: log conflict news, tell the subscribers."""
        self.changes.finish(self._now, self.conflicts, effects)

    # ================================================================== misc

    def _reap(self, now: float) -> None:
        vis = self.visibility
        if self.store.reap(now, lambda node: vis.reaped(node, now), now - self.config.owner_reap, self.node):
            self._touch_all()
        self.ipsec.drop([r.node for r in self.ipsec if r.node != self.node and vis.reaped(r.node, now)])
        if self.ext.reap(now, lambda node: vis.reaped(node, now), self.sync.joined):
            self.extras.refresh_opts()
        self._tidy_opts(now)
        vis.forget_gone(now)
        for net in [n for n, t in self._unconfirmed.items() if t <= now]:
            del self._unconfirmed[net]
        self.sync.prune(now)

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
        from gossip.tables import validation

        try:
            return validation.find_endpoint(self.local_endpoints(), ref, self.node)
        except TableError:
            prefix = ref.lower() if isinstance(ref, str) and ref else None
            remote = next((e for e in self.endpoints() if prefix and e.id.startswith(prefix)), None)
            if remote is not None:
                raise TableError(f"endpoint {ref} belongs to node {remote.owner}; remove it there") from None
            raise
