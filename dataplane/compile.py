"""compile: the cluster's view -> the kernel state this host should hold. Pure.

Owns: the mapping from tables + membership + local config to a desired ``State``,
including conflict resolution and MTU derivation. Does no I/O and reads no clock.

Per network that has at least one local endpoint (devices exist only then; the
last local endpoint leaving tears them down):
  * bridge ``<prefix>br-<vni>`` (no IP address) and VXLAN ``<prefix>vx-<vni>``
    (VNI, local VTEP, dstport, learning off, proxy on) enslaved to it;
  * the local endpoints' host-side interfaces attached to the bridge;
  * one flood (all-zero MAC) FDB row per remote VTEP of the network;
  * one unicast FDB row per remote endpoint MAC -> its VTEP;
  * one permanent neighbour per remote endpoint IPv4/IPv6 -> MAC, on the VXLAN
    device, where the VXLAN proxy answers ARP/NS from it (so no ARP crosses the
    underlay; Docker does the same; docs/dataplane.md, "Kernel facts").

Isolation of overlapping subnets: every network gets its own bridge and VXLAN
device in the host namespace and no address on either, so the host routes no
overlay prefix and never compares subnets; neighbours live in the per-device
tables of the VXLAN devices, so the same IP in two networks is two distinct
entries. Per-network namespaces would add nothing but VNI pinning by stray fds
(dataplane.md §0 item 7, §5.4) and slower restarts.

Conflicts (resolved here, before the kernel sees them): rows of owners that are not
alive are ignored (our own rows always count). Per network, a MAC goes to the
claim with the highest (version, owner, id); then each IP goes to the highest
claim among the MAC winners. A loser is simply not programmed.

MTU: the network's MTU if set, else underlay MTU - 50 (IPv4 underlay) or - 70 (IPv6
underlay); encrypted networks lose 26 more bytes for ESP, rounded down to a
multiple of 4 (Docker's rule, dataplane.md §1.2). The same value goes on the bridge,
the VXLAN device and the endpoint interfaces.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from crypto import esp
from dataplane.model import (
    EndpointSpec,
    FdbKey,
    FloodKey,
    Link,
    NeighKey,
    NetworkSpec,
    OverlayView,
    State,
    VxlanConf,
    canonical_ip,
    canonical_mac,
    is_ipv6,
)
from dataplane.naming import MAX_VNI, bridge_name, check_prefix, valid_ifname, vxlan_name

VXLAN_OVERHEAD_V4 = 50
VXLAN_OVERHEAD_V6 = 70
MIN_MTU = 68
MAX_MTU = 65535
MAX_PROBLEMS = 50


def overlay_mtu(network: NetworkSpec, underlay_mtu: int, underlay_ipv6: bool) -> int:
    """MTU of the bridge, VXLAN device and endpoint interfaces of ``network``.

    Endpoint creators SHOULD give the container side of the veth this MTU too.
    """
    if network.mtu is not None and MIN_MTU <= network.mtu <= MAX_MTU:
        return network.mtu
    if network.encrypted:
        # ESP's exact size around VXLAN (crypto.esp): 1416 on a 1500 IPv4 underlay.
        mtu = esp.encrypted_mtu(underlay_mtu, underlay_ipv6)
    else:
        mtu = underlay_mtu - (VXLAN_OVERHEAD_V6 if underlay_ipv6 else VXLAN_OVERHEAD_V4)
    return max(MIN_MTU, mtu)


class _Problems:
    """Bounded list of reasons input was skipped (a flood of bad rows must not grow memory)."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped = 0

    def add(self, msg: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(msg)
        else:
            self.dropped += 1

    def result(self) -> tuple[str, ...]:
        if self.dropped:
            return (*self.items, f"... and {self.dropped} more")
        return tuple(self.items)


class _Row:
    """An endpoint row after validation (canonical spellings)."""

    __slots__ = ("ipv4", "ipv6", "mac", "rank", "spec", "vtep")

    def __init__(self, spec: EndpointSpec, mac: str, ipv4: str | None, ipv6: str | None) -> None:
        self.spec = spec
        self.mac = mac
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        self.vtep = ""
        self.rank = (spec.version, spec.owner, spec.id)


def _validate_row(ep: EndpointSpec, problems: _Problems) -> _Row | None:
    try:
        mac = canonical_mac(ep.mac)
        if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
            raise ValueError(f"MAC {ep.mac} is multicast or zero")
        ipv4 = canonical_ip(ep.ipv4) if ep.ipv4 else None
        ipv6 = canonical_ip(ep.ipv6) if ep.ipv6 else None
    except ValueError as e:
        problems.add(f"endpoint {ep.id} on {ep.network_id}: {e}")
        return None
    if ipv4 is not None and is_ipv6(ipv4):
        problems.add(f"endpoint {ep.id} on {ep.network_id}: ipv4 {ep.ipv4} is IPv6")
        ipv4 = None
    if ipv6 is not None and not is_ipv6(ipv6):
        problems.add(f"endpoint {ep.id} on {ep.network_id}: ipv6 {ep.ipv6} is IPv4")
        ipv6 = None
    return _Row(ep, mac, ipv4, ipv6)


def _winners(rows: Iterable[_Row], key: str) -> dict[str, _Row]:
    """For each value of attribute ``key``, the row with the highest rank."""
    best: dict[str, _Row] = {}
    for row in rows:
        value = getattr(row, key)
        if value is None:
            continue
        cur = best.get(value)
        if cur is None or row.rank > cur.rank:
            best[value] = row
    return best


def compile(view: OverlayView) -> State:
    """The desired kernel state for ``view`` (see module docstring).

    Raises ValueError only for local configuration errors (prefix, local VTEP,
    underlay MTU, port); bad table rows are skipped and listed in ``State.problems``.
    """
    prefix = check_prefix(view.prefix)
    local_vtep = canonical_ip(view.local_vtep)
    v6 = is_ipv6(local_vtep)
    if not MIN_MTU <= view.underlay_mtu <= MAX_MTU:
        raise ValueError(f"underlay MTU {view.underlay_mtu} outside {MIN_MTU}..{MAX_MTU}")
    if not 1 <= view.vxlan_port <= 65535:
        raise ValueError(f"VXLAN port {view.vxlan_port} outside 1..65535")
    problems = _Problems()

    networks: dict[str, NetworkSpec] = {}
    by_vni: dict[int, str] = {}
    for net in sorted(view.networks, key=lambda n: n.id):
        if net.id in networks:
            problems.add(f"network {net.id}: duplicate id, ignored")
        elif not 1 <= net.vni <= MAX_VNI:
            problems.add(f"network {net.id}: VNI {net.vni} outside 1..{MAX_VNI}")
        elif net.vni in by_vni:
            problems.add(f"network {net.id}: VNI {net.vni} already used by {by_vni[net.vni]}")
        else:
            networks[net.id] = net
            by_vni[net.vni] = net.id

    rows: dict[str, list[_Row]] = {nid: [] for nid in networks}
    for ep in sorted(view.endpoints, key=lambda e: (e.network_id, e.id, e.owner)):
        if ep.network_id not in networks:
            continue
        if not ep.local and not view.owner_alive.get(ep.owner, False):
            continue
        row = _validate_row(ep, problems)
        if row is not None:
            rows[ep.network_id].append(row)

    links: dict[str, Link] = {}
    ports: dict[str, Link] = {}
    fdb: dict[FdbKey, str] = {}
    flood: dict[FloodKey, bool] = {}
    neigh: dict[NeighKey, str] = {}
    labels: dict[str, str] = {}
    for nid, net in networks.items():
        net_rows = rows[nid]
        if not any(r.spec.local for r in net_rows):
            continue
        mtu = overlay_mtu(net, view.underlay_mtu, v6)
        br, vx = bridge_name(prefix, net.vni), vxlan_name(prefix, net.vni)
        links[br] = Link(br, "bridge", mtu, None, True)
        links[vx] = Link(
            vx, "vxlan", mtu, br, True, VxlanConf(net.vni, local_vtep, view.vxlan_port)
        )
        labels[vx] = nid
        mac_won = _winners(net_rows, "mac")
        survivors = [r for r in net_rows if mac_won[r.mac] is r]
        ip_won = {**_winners(survivors, "ipv4"), **_winners(survivors, "ipv6")}
        for row in net_rows:
            if row.spec.local:
                _add_port(row, br, mtu, prefix, ports, links, problems)
        for row in survivors:
            if row.spec.local:
                continue
            try:
                vtep = canonical_ip(row.spec.vtep)
            except ValueError as e:
                problems.add(f"endpoint {row.spec.id} on {nid}: VTEP: {e}")
                continue
            if is_ipv6(vtep) != v6:
                problems.add(
                    f"endpoint {row.spec.id} on {nid}: VTEP {vtep} is not of the local "
                    f"VTEP's family ({local_vtep})"
                )
                continue
            if vtep == local_vtep:
                problems.add(f"endpoint {row.spec.id} on {nid}: remote row claims our VTEP")
                continue
            fdb[(vx, row.mac)] = vtep
            flood[(vx, vtep)] = True
            for ip in (row.ipv4, row.ipv6):
                if ip is not None and ip_won[ip] is row:
                    neigh[(vx, ip)] = row.mac
    return State(links, ports, fdb, flood, neigh, problems.result(), labels)


@functools.lru_cache(maxsize=1 << 14)
def _port(name: str, mtu: int, bridge: str) -> Link:
    """The desired port, memoised: a frozen dataclass costs ~1.5 µs to build, and every
    compile (one per table change) builds one per local endpoint, the same as last time."""
    return Link(name, "", mtu, bridge, True)


def _add_port(
    row: _Row,
    bridge: str,
    mtu: int,
    prefix: str,
    ports: dict[str, Link],
    links: dict[str, Link],
    problems: _Problems,
) -> None:
    name = row.spec.ifname_host
    if name is None:
        return
    where = f"endpoint {row.spec.id} on {row.spec.network_id}"
    if not valid_ifname(name):
        problems.add(f"{where}: bad interface name {name!r}")
    elif name.startswith(prefix) and (name[len(prefix) :][:3] in ("br-", "vx-")):
        problems.add(f"{where}: interface name {name!r} collides with our device names")
    elif name in ports or name in links:
        problems.add(f"{where}: interface {name} is already used by another endpoint")
    else:
        ports[name] = _port(name, mtu, bridge)
