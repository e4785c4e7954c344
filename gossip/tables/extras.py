"""The rows network options make a node write, beside its endpoints.

Owns: this node's copies of options rows (``gossip.tables.netopts``: one per network it
created or takes part in, tombstoned once the network is gone), the options in force
(``Visibility.netopts``, recomputed when an options or network row changes) and this
node's host endpoints (``gossip.tables.hostaccess``: allocated, written and withdrawn
here, held in ``hosts``) and the alias rows of this node's endpoints
(``gossip.tables.aliases``: written on request, tombstoned with the endpoint, relayed
with the network's gossip). Called by ``Tables`` at the points where those can change
(create/remove of networks and endpoints, joins, merges, restore, the reap tick).
Does not: merge remote rows (``replica``) or decide what options or aliases mean
(``netopts``, ``aliases``, ``hostaccess``, ``blocks``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gossip.effects import Effect
from gossip.tables import aliases, blocks, extrows, hostaccess, netopts
from gossip.tables.extrows import ExtensionRow
from gossip.tables.rows import Endpoint, EndpointRow, Network, NetworkOptions, TableError

if TYPE_CHECKING:
    from gossip.tables.replica import Tables


class Extras:
    """See the module docstring."""

    def __init__(self, tables: Tables) -> None:
        self.t = tables
        self.hosts: dict[str, Endpoint] = {}
        """Network id -> this node's host endpoint there: written like a local endpoint's
        row, but no veth, not persisted (re-created after a restart), not shown here."""

    def write_opts(self, now: float, net: str, opts: NetworkOptions | None) -> None:
        """Our copy of a network's options row (None: its tombstone), spread cluster-wide."""
        t = self.t
        row = netopts.row(net, t.node, t._tick(), opts,
                          math.inf if opts is not None else now + t.config.tombstone_ttl)
        stored = t.ext.merge(row)
        assert stored or opts is None, f"local write did not supersede: {row}"
        t._bcast.queue(extrows.queue_key(row), extrows.encode_event(row, now))
        self.refresh_opts()

    def tidy_opts(self, now: float) -> None:
        """Our copies: one per network we take part in, none of networks that are gone
        (and our alias rows: none for endpoints we no longer have)."""
        t = self.t
        self.tidy_aliases(now)
        for net, opts in netopts.own_changes(t.ext.cluster_rows(), t.node, t.sync.joined,
                                             t.store.live_network, t.visibility.netopts):
            self.write_opts(now, net, opts)

    def mine_on(self, net: str) -> list[Endpoint]:
        """This node's endpoints of ``net`` with its host endpoint (what it claims blocks for)."""
        t = self.t
        host = self.hosts.get(net)
        return t.visibility.local_on(net) + ([host] if host is not None else [])

    def tidy_hosts(self, now: float) -> None:
        """Hold a host endpoint in each network with host access we have endpoints on."""
        t = self.t
        add, drop = hostaccess.wanted(t.sync.joined, self._shown_network,
                                      lambda n: bool(t.visibility.local_on(n)), self.hosts)
        for net_id in drop:
            ep = self.hosts.pop(net_id)
            if net_id in t.sync.joined:
                t._write(now, t._endpoint_tombstone(now, net_id, ep.id))
        for net in add:
            known = [*t.stored_endpoints(net.id), *t.visibility.local_on(net.id)]
            used = blocks.used_addresses(known)
            claims = t.store.claims.get(net.id, {}).values()
            try:
                addrs = {f: blocks.allocate(claims, t.node, net, f, used[f], t.config)
                         for f in (4, 6) if blocks.layout_for(net, f, t.config) is not None}
            except TableError:
                continue  # a full network: no host access on this host until an address frees
            ep = Endpoint(hostaccess.endpoint_id(net.id, t.node), hostaccess.name(t.node), net.id,
                          addrs.get(4), addrs.get(6), hostaccess.mac(net.id, t.node), t.node, t.vtep,
                          t._tick())
            self.hosts[net.id] = ep
            t._write(now, EndpointRow(net.id, t.node, ep.id, ep.created, False, ep, since=now))
            t._tidy_claims(now, net.id)

    def _shown_network(self, net: str) -> Network | None:
        t = self.t
        row = t.store.networks.get(net)
        return t.visibility.with_options(row.value) if row is not None and row.value and not row.deleted else None

    def refresh_opts(self) -> None:
        t = self.t
        nets = {r.id: r.value for r in t.store.networks.values() if not r.deleted and r.value is not None}
        opts = netopts.pick(t.ext.cluster_rows(), nets) if len(t.ext) else {}
        if opts != t.visibility.netopts:
            t.visibility.netopts = opts
            t._touch_all()
            self.tidy_hosts(t._now)

    # -- endpoint aliases ----------------------------------------------------------------------

    def set_aliases(self, now: float, ref: str, names: Iterable[str]) -> tuple[tuple[str, ...], list[Effect]]:
        """Publish the aliases of local endpoint ``ref`` (replacing earlier ones; none:
        withdraw them) and send them to the network's peers at once. Raises TableError."""
        t = self.t
        t._now = now
        wanted = aliases.check(names)
        ep = t._find_local(ref)
        effects: list[Effect] = []
        if wanted != self.own_aliases(ep):
            if not wanted:
                self.drop_aliases(now, ep)
            elif not self._write_alias(now, aliases.row(ep.network, t.node, ep.id, t._tick(), wanted)):
                raise TableError("aliases not published: this node holds too many extension rows")
            t.sync.gossip(now, ep.network, effects)
            t._finish(effects)
        return wanted, effects

    def drop_aliases(self, now: float, ep: Endpoint) -> None:
        """Tombstone our alias row of ``ep`` (removed, or its aliases withdrawn), if any."""
        cur = self._own_alias_row(ep.network, ep.id)
        if cur is not None and not cur.deleted:
            t = self.t
            self._write_alias(now, aliases.row(ep.network, t.node, ep.id, t._tick(), None,
                                               now + t.config.tombstone_ttl))

    def own_aliases(self, ep: Endpoint) -> tuple[str, ...]:
        cur = self._own_alias_row(ep.network, ep.id)
        if cur is None or cur.deleted:
            return ()
        return aliases.decode_payload(cur.payload) or ()

    def aliases(self, endpoints: Iterable[Endpoint]) -> dict[str, tuple[str, ...]]:
        """Endpoint id -> aliases in force, for the ``endpoints`` given (visible ones)."""
        t = self.t
        eps = list(endpoints)
        nets = {e.network for e in eps}
        # One pass over the rows (the DNS index asks on every table change).
        rows = [r for r in t.ext.rows.values() if r.kind == aliases.KIND and r.net in nets]
        return aliases.pick(rows, eps)

    def on_ext(self, now: float, row: ExtensionRow, relay: bool) -> None:
        """A scoped extension row newly stored from network gossip: relayed like an
        endpoint row (``relay``), and the view changes when it is an alias row."""
        t = self.t
        if not row.net:
            return
        if relay:
            t.sync.queue_ext(now, row.net, extrows.queue_key(row), extrows.encode(row, now))
        if row.kind == aliases.KIND:
            t._touch(row.net)

    def tidy_aliases(self, now: float) -> None:
        t = self.t
        stale = [r for r in t.ext.rows.values()
                 if r.kind == aliases.KIND and r.writer == t.node and not r.deleted
                 and r.net in t.sync.joined and r.id not in t._local]
        for r in sorted(stale, key=lambda r: (r.net, r.id)):
            self._write_alias(now, aliases.row(r.net, t.node, r.id, t._tick(), None, now + t.config.tombstone_ttl))

    def _own_alias_row(self, net: str, ep_id: str) -> ExtensionRow | None:
        return self.t.ext.rows.get((net, aliases.KIND, self.t.node, ep_id, extrows.EMPTY_EXTRA))

    def _write_alias(self, now: float, row: ExtensionRow) -> bool:
        """Store and queue a row we wrote; False when a bound of the store refused a new key."""
        t = self.t
        if not t.ext.merge(row):
            return False
        t.sync.queue_ext(now, row.net, extrows.queue_key(row), extrows.encode(row, now))
        t._touch(row.net)
        return True
