"""What the dataplane sees: the tables and membership as an ``OverlayView``, and the change signal.

Owns: ``ViewSource`` (builds the reconciler's immutable ``OverlayView`` from the
replicated tables, the Swim membership and this host's settings, and hands back the
same object while nothing moved, so the reconciler skips compiling) and
``WatchedTables`` (the gossip core's delegate: ``Tables`` itself, plus a callback
whenever ``Tables.version`` moved during a delegate call, so the reconciler is poked
on every table change that gossip brings in).
Rules: conflict losers (``Endpoint.conflict``) are left out, so they are never
programmed (docs/tables.md §4); an owner counts as alive while it is alive or
suspect, like the tables' visibility rule; local endpoints carry their host-side
interface name so the reconciler attaches them to the bridge.
Does not: reconcile (``dataplane.reconciler``) or change the tables.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.overlay.veths import host_ifname
from dataplane.model import EndpointSpec, NetworkSpec, OverlayView
from gossip.effects import Effect
from gossip.members import Member, Status
from gossip.swim import Swim
from gossip.tables.replica import Tables

UP = (Status.ALIVE, Status.SUSPECT)


class WatchedTables:
    """The delegate Swim calls: forwards to ``Tables`` and reports version changes."""

    def __init__(self, tables: Tables, on_change: Callable[[], None]) -> None:
        self.tables = tables
        self.on_change = on_change
        self._seen = (tables.version, tables.ipsec.version)

    def check(self) -> None:
        """Call ``on_change`` if the tables (or the IPsec key rows) changed since the last
        check (cheap)."""
        seen = (self.tables.version, self.tables.ipsec.version)
        if seen != self._seen:
            self._seen = seen
            self.on_change()

    def node_meta(self, limit: int) -> bytes:
        return self.tables.node_meta(limit)

    def on_user_message(self, now: float, data: bytes) -> list[Effect]:
        try:
            return self.tables.on_user_message(now, data)
        finally:
            self.check()

    def accepts_user_data(self, peer: Member) -> bool:
        return self.tables.accepts_user_data(peer)

    def take_broadcasts(self, overhead: int, budget: int) -> list[bytes]:
        return self.tables.take_broadcasts(overhead, budget)

    def has_broadcasts(self) -> bool:
        return self.tables.has_broadcasts()

    def local_state(self, join: bool) -> bytes:
        return self.tables.local_state(join)

    def merge_remote_state(self, now: float, data: bytes, join: bool) -> list[Effect]:
        try:
            return self.tables.merge_remote_state(now, data, join)
        finally:
            self.check()

    def on_member_change(self, now: float, old: Member | None, new: Member) -> list[Effect]:
        try:
            return self.tables.on_member_change(now, old, new)
        finally:
            self.check()

    def next_deadline(self) -> float:
        return self.tables.next_deadline()

    def tick(self, now: float) -> list[Effect]:
        try:
            return self.tables.tick(now)
        finally:
            self.check()


class ViewSource:
    """``view()`` for the reconciler (called in the trio thread, between driver steps)."""

    def __init__(
        self,
        tables: Tables,
        swim: Swim,
        *,
        local_vtep: str,
        underlay_mtu: int,
        vxlan_port: int,
        prefix: str,
    ) -> None:
        self.tables = tables
        self.swim = swim
        self.local_vtep = local_vtep
        self.underlay_mtu = underlay_mtu
        self.vxlan_port = vxlan_port
        self.prefix = prefix
        self._key: tuple[object, ...] | None = None
        self._view: OverlayView | None = None

    def __call__(self) -> OverlayView:
        alive = {m.name: m.status in UP for m in self.swim.members()}
        key = (self.tables.version, tuple(sorted(n for n, up in alive.items() if up)),
               self.underlay_mtu, self.local_vtep)
        if self._view is None or key != self._key:
            self._view = build_view(self.tables, alive, self.local_vtep, self.underlay_mtu,
                                    self.vxlan_port, self.prefix)
            self._key = key
        return self._view


def build_view(
    tables: Tables,
    alive: dict[str, bool],
    local_vtep: str,
    underlay_mtu: int,
    vxlan_port: int,
    prefix: str,
) -> OverlayView:
    networks = tuple(
        NetworkSpec(n.id, n.vni, n.mtu, n.subnets, n.encrypted) for n in tables.networks()
    )
    me = tables.node
    endpoints = []
    for ep in tables.endpoints():
        if ep.conflict:
            continue
        local = ep.owner == me
        endpoints.append(EndpointSpec(
            network_id=ep.network,
            id=ep.id,
            mac=ep.mac,
            ipv4=ep.ipv4,
            ipv6=ep.ipv6,
            owner=ep.owner,
            vtep=ep.vtep,
            local=local,
            ifname_host=host_ifname(prefix, ep.id) if local else None,
            version=ep.created,
        ))
    return OverlayView(
        networks=networks,
        endpoints=tuple(endpoints),
        local_vtep=local_vtep,
        underlay_mtu=underlay_mtu,
        vxlan_port=vxlan_port,
        owner_alive={**alive, me: True},
        prefix=prefix,
    )
