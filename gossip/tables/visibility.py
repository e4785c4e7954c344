"""What one replica shows: the visibility rule, the owners' liveness and the cached views.

Owns: the rule that decides which held endpoint rows a node shows (``visible``,
``shows``: the one copy of it, used by ``Tables.endpoints()``, the dataplane view
built from it and the simulator's tracker), the liveness of row owners as the tables
see it (``up``, since when an owner is gone, whether it is gone for good: ``reaped``),
the live peers of each network (``peers``, cached) and the cached derived views
(networks in force, address winners per network; ``conflicts`` resolves them).
Pure: no clock (``now`` is an argument), no I/O.
Does not: hold or merge rows (``gossip.tables.store``), write rows or count changes
(``gossip.tables.replica`` decides what changed and calls ``forget``/``forget_all``).

The rule (docs/tables.md §2, Visibility): a local endpoint is always shown; a remote
endpoint row is shown when it is live, its owner is alive or suspect in the gossip
core, the owner has joined the network (its member row is live) and the network exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from gossip.members import Status
from gossip.tables import conflicts, protocol
from gossip.tables.rows import Conflict, Endpoint, EndpointRow, Network, NetworkOptions
from gossip.tables.store import TableStore

if TYPE_CHECKING:
    from gossip.swim import Swim

UP = (Status.ALIVE, Status.SUSPECT)
"""Member states in which a node's rows are shown (suspect is not dead yet)."""


class Visibility:
    """One replica's read side. See the module docstring."""

    def __init__(self, node: str, store: TableStore, local: Mapping[str, Endpoint], owner_reap: float) -> None:
        self.node = node
        self.store = store
        self.local = local
        """This node's endpoints by id (owned and written by ``Tables``; read here)."""
        self.owner_reap = owner_reap
        self.swim: Swim | None = None
        self.gone: dict[str, float] = {}
        """Owners not up, with since when (their rows hide, then go after ``owner_reap``)."""
        self._net_view: tuple[list[Network], list[Conflict]] | None = None
        self._addr_views: dict[str, tuple[dict[str, str], list[Conflict]]] = {}
        self.netopts: dict[str, NetworkOptions] = {}
        """Network id -> its options in force (``gossip.tables.netopts.pick``; set by
        ``Tables``): attached to the networks this node shows."""
        self._peer_cache: dict[str, list[str]] = {}
        """net -> sorted names of the other live participants; dropped when a member row
        of the network changes or a member goes up or down (``forget_all``). Names only:
        a simulator holds 1,000 replicas × 20 networks × 1,000 peers of these."""

    def attach(self, swim: Swim) -> None:
        self.swim = swim
        self._peer_cache.clear()  # who is up is the core's to say from now on

    # -- owners -------------------------------------------------------------------

    def up(self, node: str) -> bool:
        """This node, or a member the core holds as alive or suspect."""
        if node == self.node:
            return True
        m = self.swim.member(node) if self.swim is not None else None
        return m is not None and m.status in UP

    def owner_changed(self, now: float, node: str, *, was_up: bool, up: bool) -> bool:
        """The core's view of ``node`` changed; True when it went up or down."""
        if up:
            self.gone.pop(node, None)
        elif was_up:
            self.gone[node] = now
        else:
            self.gone.setdefault(node, now)
        return up != was_up

    def note_owner(self, node: str, now: float) -> None:
        """We hold rows of ``node``: if it is not up, it is gone from now on (unless earlier)."""
        if not self.up(node):
            self.gone.setdefault(node, now)

    def reaped(self, node: str, now: float) -> bool:
        """Gone for ``owner_reap`` or longer and still not up: its rows are dropped and ignored."""
        since = self.gone.get(node)
        return since is not None and now - since >= self.owner_reap and not self.up(node)

    def forget_gone(self, now: float) -> None:
        """Stop remembering owners gone twice ``owner_reap`` that the core forgot too."""
        horizon = 2 * self.owner_reap
        for node in [n for n, t in self.gone.items() if now - t >= horizon]:
            if self.swim is None or self.swim.member(node) is None:
                del self.gone[node]

    def protocol_version(self, network: str | None = None) -> int:
        """The highest tables protocol this node and every agent member that is up (or,
        with ``network``, every live peer of it) speak; 0 if their ranges do not overlap.
        A feature is used only when it reaches ``protocol.FEATURES[name]``."""
        if self.swim is None:
            return protocol.PROTOCOL_MAX
        names = None if network is None else set(self.peers(network))
        metas = [m.meta for m in self.swim.members()
                 if m.name != self.node and m.status in UP and (names is None or m.name in names)]
        return protocol.common_version(metas)

    # -- the rule -------------------------------------------------------------------

    def local_on(self, net: str) -> list[Endpoint]:
        return [e for e in self.local.values() if e.network == net]

    def live_networks(self) -> list[Network]:
        return [self.with_options(r.value) for r in self.store.networks.values() if not r.deleted and r.value]

    def with_options(self, net: Network) -> Network:
        """The network as shown: its row's value with the options in force, if any."""
        opts = self.netopts.get(net.id)
        return net if opts is None or net.options == opts else replace(net, options=opts)

    def _shown(self, net: str, owner: str, row: EndpointRow) -> bool:
        """The rule for a held remote row of a network that exists."""
        return row.value is not None and not row.deleted and self.up(owner) and self.store.joined(net, owner)

    def visible_remote(self, net: str) -> list[Endpoint]:
        if not self.store.live_network(net):
            return []
        return [
            row.value
            for (owner, _), row in self.store.endpoints.get(net, {}).items()
            if owner != self.node and row.value is not None and self._shown(net, owner, row)
        ]

    def visible(self, net: str) -> list[Endpoint]:
        """Every endpoint of the network this node shows: local ones first (not sorted)."""
        return self.local_on(net) + self.visible_remote(net)

    def shows(self, net: str, owner: str, ep_id: str) -> bool:
        """Whether the endpoint ``(owner, ep_id)`` of ``net`` is in ``visible(net)``."""
        if owner == self.node:
            ep = self.local.get(ep_id)
            return ep is not None and ep.network == net
        row = self.store.endpoints.get(net, {}).get((owner, ep_id))
        return row is not None and self.store.live_network(net) and self._shown(net, owner, row)

    # -- peers and cached views ---------------------------------------------------------

    def peers(self, net: str) -> list[str]:
        """Names of the other live participants, sorted. Cached, because every gossip
        round of every network asks (see ``_peer_cache``); callers must not mutate it."""
        names = self._peer_cache.get(net)
        if names is None:
            names = self._peer_cache[net] = sorted(
                node
                for node, m in self.store.members.get(net, {}).items()
                if not m.deleted and node != self.node and self.up(node)
            )
        return names

    def peer_rows(self, net: str) -> list[tuple[str, str]]:
        """(node, VTEP) of the other live participants, by node."""
        members = self.store.members.get(net, {})
        return [(node, members[node].vtep) for node in self.peers(net)]

    def networks_view(self) -> tuple[list[Network], list[Conflict]]:
        """Networks in force by name, and the network conflicts (cached)."""
        if self._net_view is None:
            self._net_view = conflicts.resolve_networks(self.live_networks())
        return self._net_view

    def address_view(self, net: str) -> tuple[dict[str, str], list[Conflict]]:
        """Losers of address/MAC conflicts among the visible endpoints, and the conflicts (cached)."""
        view = self._addr_views.get(net)
        if view is None:
            view = self._addr_views[net] = conflicts.resolve_addresses(self.visible(net))
        return view

    def forget_peers(self, net: str) -> None:
        """A member row of ``net`` changed."""
        self._peer_cache.pop(net, None)

    def forget(self, net: str, *, networks: bool = False) -> None:
        """Rows of ``net`` changed (``networks``: its network row too)."""
        self._addr_views.pop(net, None)
        if networks:
            self._net_view = None

    def forget_all(self) -> None:
        """Anything may have changed (an owner went up or down, rows were reaped)."""
        self._addr_views.clear()
        self._net_view = None
        self._peer_cache.clear()
