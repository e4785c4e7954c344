"""The rows network options make a node write, beside its endpoints.

Owns: this node's copies of options rows (``gossip.tables.netopts``: one per network it
created or takes part in, tombstoned once the network is gone), the options in force
(``Visibility.netopts``, recomputed when an options or network row changes) and this
node's host endpoints (``gossip.tables.hostaccess``: allocated, written and withdrawn
here, held in ``hosts``). Called by ``Tables`` at the points where those can change
(create/remove of networks and endpoints, joins, merges, restore, the reap tick).
Does not: merge remote rows (``replica``) or decide what options mean (``netopts``,
``hostaccess``, ``blocks``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from gossip.tables import blocks, extrows, hostaccess, netopts
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
        """Our copies: one per network we take part in, none of networks that are gone."""
        t = self.t
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
