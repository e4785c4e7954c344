"""compile: the cluster's view -> gateway addresses, our nft tables and forwarding. Pure.

Owns: which networks get a gateway (those with a local endpoint, like the bridges
themselves), the gateway's MAC (derived from the network id, the same on every host),
its addresses (each subnet's gateway, ``gateway_of``), and the rules:

* ``inet`` table, chain ``forward``: per network bridge B, traffic entering B from
  anywhere else (another overlay network, the underlay, the internet) is accepted only
  when it belongs to a connection a container opened (``ct state
  established,related``); new connections into B are dropped. So networks stay
  isolated although the host now routes, and egress does not open a way in.
* ``inet`` table, chain ``postrouting`` (nat): traffic from a network's subnet leaving
  through anything but its own bridge is masqueraded to the address of the interface it
  leaves by (the host's address).
* ``bridge`` table: frames with the gateway MAC as source never leave through, nor
  arrive from, the VXLAN port (the gateway is local on every host: its MAC on the
  underlay would make remote bridges see their own address arrive).

* ``--internal`` networks (``NetworkSpec.internal``): no masquerade; nothing entering
  from their bridge is forwarded anywhere else (chain ``forward``), and the host itself
  takes from them only traffic to their own subnets, i.e. the gateway, and IPv6
  neighbour solicitations/advertisements (multicast and link-local: without them the
  IPv6 gateway is unreachable) (chain ``input``, present only while an internal network is). Traffic inside the network (bridged, or
  routed between its subnets through the gateway: iif = oif) is untouched.

* Host access (``NetworkSpec.host_addresses``, docs/dataplane.md): the bridge holds
  the host's own address with the subnet's length and the gateway as a host route;
  ``bridge`` rules give our frames towards the VXLAN port the host endpoint's MAC
  (``output``) and turn frames from it addressed to that MAC into frames to the bridge's
  own (``prerouting``), so the host's stack takes them.

Rules name bridges exactly, so traffic that is only bridged (iif = oif = B, seen by the
inet hooks when br_netfilter is loaded, as on Docker hosts) never matches them.

Networks whose subnet overlaps another local network's get no gateway (the host would
hold two routes for one prefix): listed in ``problems``. The tables' conflict rule
keeps such networks apart today; only dataplane-level views can have them.
Does not: touch the bridges' existence (the VXLAN side), do I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress

from dataplane.model import OverlayView, canonical_ip
from dataplane.naming import bridge_name, check_prefix, vxlan_name
from dataplane.nft.model import IPV4_FORWARD, IPV6_FORWARD, BridgeL3, Chain, NftDesired, Table

FORWARD_PRIORITY = 0
NAT_PRIORITY = 100  # srcnat
BRIDGE_PRIORITY = 0


def gateway_mac(network_id: str) -> str:
    """The anycast gateway MAC of a network: ``06:`` + 5 bytes of sha256(id). Locally
    administered unicast, and never Docker's ``02:42`` endpoint MACs."""
    digest = hashlib.sha256(f"overlay-gateway\0{network_id}".encode()).digest()
    return ":".join(f"{b:02x}" for b in b"\x06" + digest[:5])


def gateway_of(subnet: str) -> tuple[str, int]:
    """(gateway address, prefix length) of a subnet: its first address after the network's
    (``gossip.tables.rows.Network.gateways``; IPAM never hands it out)."""
    net = ipaddress.ip_network(subnet, strict=False)
    return canonical_ip(str(net.network_address + 1)), net.prefixlen


def _host_access(vx: str, gw_mac: str, host_mac: str,
                 addrs: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> list[str]:
    """Bridge ``output`` rules of host access: our own packets towards the VXLAN port
    leave with the host endpoint's MAC instead of the gateway's; our ARP requests and
    neighbour solicitations reach the VXLAN device, whose proxy answers them from its
    neighbour table (they never cross the underlay)."""
    rules = [f'oifname "{vx}" ether saddr {gw_mac} ether type arp accept',
             f'oifname "{vx}" ether saddr {gw_mac} icmpv6 type nd-neighbor-solicit accept']
    for a in addrs:
        family = "ip" if a.version == 4 else "ip6"
        rules.append(f'oifname "{vx}" ether saddr {gw_mac} {family} saddr {a} ether saddr set {host_mac} accept')
    return rules


def compile(view: OverlayView) -> NftDesired:
    prefix = check_prefix(view.prefix)
    local = {e.network_id for e in view.endpoints if e.local}
    problems: list[str] = []
    taken: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
    bridges: list[BridgeL3] = []
    forward: list[str] = []
    nat: list[str] = []
    local_in: list[str] = []
    out: list[str] = []
    pre: list[str] = []
    seen_vni: set[int] = set()
    want_v4 = want_v6 = False
    for net in sorted(view.networks, key=lambda n: n.id):
        if net.id not in local or net.vni in seen_vni:
            continue
        seen_vni.add(net.vni)
        try:
            subnets = [ipaddress.ip_network(s, strict=False) for s in net.subnets]
        except ValueError as e:
            problems.append(f"network {net.id}: no gateway: {e}")
            continue
        clash = next((other for s in subnets for t, other in taken if s.version == t.version and s.overlaps(t)),
                     None)
        if clash is not None:
            problems.append(f"network {net.id}: no gateway: its subnet overlaps network {clash}'s on this host")
            continue
        taken.extend((s, net.id) for s in subnets)
        br, vx, mac = bridge_name(prefix, net.vni), vxlan_name(prefix, net.vni), gateway_mac(net.id)
        addrs = []
        hosts = {canonical_ip(a): ipaddress.ip_address(a) for a in net.host_addresses}
        for i, s in enumerate(subnets):
            gw, plen = gateway_of(str(s))
            if i < len(net.gateways):  # --gateway
                gw = canonical_ip(net.gateways[i])
            mine = next((h for h, a in hosts.items() if a in s), None)
            if mine is not None:  # host access: our address is the subnet's, the gateway a host route
                addrs.append(f"{mine}/{plen}")
                addrs.append(f"{gw}/{s.max_prefixlen}")
            else:
                addrs.append(f"{gw}/{plen}")
            family = "ip" if s.version == 4 else "ip6"
            want_v4 |= s.version == 4
            want_v6 |= s.version == 6
            if not net.internal:
                nat.append(f'{family} saddr {s} oifname != "{br}" masquerade')
        if net.internal:  # to the host itself only its own subnets (the gateway); nothing else
            for version, family in ((4, "ip"), (6, "ip6")):
                own = ", ".join(str(t) for t in subnets if t.version == version)
                if own and version == 6:  # neighbour discovery of the gateway goes to
                    # solicited-node multicast (and advertisements to link-local): let it in
                    local_in.append(f'iifname "{br}" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept')
                if own:
                    local_in.append(f'iifname "{br}" {family} daddr != {{ {own} }} drop')
        bridges.append(BridgeL3(br, net.id, mac, tuple(addrs)))
        if net.internal:  # no egress: nothing routed out of the bridge, replies included
            forward.append(f'iifname "{br}" oifname != "{br}" drop')
        forward.append(f'oifname "{br}" iifname != "{br}" ct state established,related accept')
        forward.append(f'oifname "{br}" iifname != "{br}" drop')
        if hosts and net.host_mac:
            out.extend(_host_access(vx, mac, net.host_mac, list(hosts.values())))
            # The bridge decided "not for me" from the old address before this hook: the
            # packet type must be corrected too, or IP drops it as another host's.
            pre.append(f'iifname "{vx}" ether daddr {net.host_mac} ether daddr set {mac} meta pkttype set host')
        out.append(f'oifname "{vx}" ether saddr {mac} drop')
        pre.append(f'iifname "{vx}" ether saddr {mac} drop')
    tables: list[Table] = []
    if bridges:
        chains = [Chain("forward", "filter", "forward", FORWARD_PRIORITY, tuple(forward)),
                  Chain("postrouting", "nat", "postrouting", NAT_PRIORITY, tuple(nat))]
        if local_in:  # only with an internal network, so other hosts' tables stay as they were
            chains.append(Chain("input", "filter", "input", FORWARD_PRIORITY, tuple(local_in)))
        tables.append(Table("inet", tuple(chains)))
        tables.append(Table("bridge", (Chain("output", "filter", "output", BRIDGE_PRIORITY, tuple(out)),
                                       Chain("prerouting", "filter", "prerouting", BRIDGE_PRIORITY, tuple(pre)))))
    sysctls = tuple(p for p, on in ((IPV4_FORWARD, want_v4), (IPV6_FORWARD, want_v6)) if on)
    return NftDesired(tuple(bridges), tuple(tables), sysctls, tuple(problems[:50]))
