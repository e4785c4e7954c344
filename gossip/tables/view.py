"""What the dataplane is told: one replica's tables and membership as a ``dataplane.model.OverlayView``.

Owns: ``build_view`` (the pure translation: networks in force become ``NetworkSpec``,
visible endpoints become ``EndpointSpec``, members alive or suspect become
``owner_alive``) and ``ViewSource`` (``build_view`` behind a cache: the same
``OverlayView`` object comes back while nothing it depends on moved, so a
reconciler can skip compiling). Pure: no I/O, no clock.
Does not: decide what is visible (``gossip.tables.visibility``, through
``Tables.networks()``/``endpoints()``), name interfaces (the caller passes
``ifname``: the agent's veth naming), reconcile (``dataplane.reconciler``).

Rules: conflict losers (``Endpoint.conflict``) are left out, so they are never
programmed (docs/tables.md §4); an owner counts as alive while it is alive or
suspect, like the tables' visibility rule; local endpoints carry their host-side
interface name so the reconciler attaches them to the bridge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from dataplane.model import EndpointSpec, NetworkSpec, OverlayView
from gossip.members import Member
from gossip.tables.replica import Tables
from gossip.tables.visibility import UP


class ViewSource:
    """``view()`` for a reconciler: ``build_view`` of the current tables and members, cached."""

    def __init__(
        self,
        tables: Tables,
        members: Callable[[], Iterable[Member]],
        *,
        local_vtep: str,
        underlay_mtu: int,
        vxlan_port: int,
        prefix: str,
        ifname: Callable[[str], str],
    ) -> None:
        self.tables = tables
        self.members = members
        """The gossip core's members (``Swim.members``)."""
        self.local_vtep = local_vtep
        self.underlay_mtu = underlay_mtu
        self.vxlan_port = vxlan_port
        self.prefix = prefix
        self.ifname = ifname
        self._key: tuple[object, ...] | None = None
        self._view: OverlayView | None = None

    def __call__(self) -> OverlayView:
        alive = {m.name: m.status in UP for m in self.members()}
        key = (self.tables.version, tuple(sorted(n for n, up in alive.items() if up)),
               self.underlay_mtu, self.local_vtep)
        if self._view is None or key != self._key:
            self._view = build_view(self.tables, alive, self.local_vtep, self.underlay_mtu,
                                    self.vxlan_port, self.prefix, self.ifname)
            self._key = key
        return self._view


def build_view(
    tables: Tables,
    alive: dict[str, bool],
    local_vtep: str,
    underlay_mtu: int,
    vxlan_port: int,
    prefix: str,
    ifname: Callable[[str], str],
) -> OverlayView:
    """The ``OverlayView`` of ``tables``; ``alive``: member name -> alive or suspect;
    ``ifname``: endpoint id -> host-side interface name of a local endpoint."""
    networks = []
    for n in tables.networks():
        host = tables.host_endpoint(n.id)
        networks.append(NetworkSpec(
            n.id, n.vni, n.mtu, n.all_subnets, n.encrypted, n.internal, tuple(g for _, g in n.gateways()),
            tuple(a for a in (host.ipv4, host.ipv6) if a) if host is not None else (),
            host.mac if host is not None else None))
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
            ifname_host=ifname(ep.id) if local else None,
            version=ep.created,
        ))
    return OverlayView(
        networks=tuple(networks),
        endpoints=tuple(endpoints),
        local_vtep=local_vtep,
        underlay_mtu=underlay_mtu,
        vxlan_port=vxlan_port,
        owner_alive={**alive, me: True},
        prefix=prefix,
    )
