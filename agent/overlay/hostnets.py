"""This host's underlay prefixes: what a new network's subnets must not overlap.

Owns: reading the prefixes the host already uses outside our overlay (the connected
prefix of every address and the destination of every main-table route with a prefix
length above 0, on interfaces whose name does not start with the overlay prefix, so
our own gateways and veths never count). Blocking (pyroute2 dumps): run it in a worker
thread. Never raises: a host whose tables cannot be read gives no prefixes (a warning
is the caller's), and the subnets are then checked against the other networks only.
Does not: decide (``gossip.tables.netopts.underlay_clash`` does), look at other hosts
(each host checks its own underlay when it creates a network; docs/operations.md).

Why the default route does not count: it overlaps every subnet; a subnet reached
through it is not on this host's underlay, and the overlay's routes (more specific)
win on the containers' hosts anyway.
"""

from __future__ import annotations

import ipaddress
import socket


def underlay_prefixes(overlay_prefix: str) -> list[str]:
    """CIDRs of this namespace's addresses and routes outside the overlay's devices."""
    try:
        from pyroute2 import IPRoute
    except ImportError:  # pragma: no cover - pyroute2 is a dependency
        return []
    out: list[str] = []
    try:
        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") or "" for link in ipr.get_links()}

            def ours(index: int | None) -> bool:
                return index is not None and str(names.get(index, "")).startswith(overlay_prefix)

            for a in ipr.get_addr():
                addr = a.get_attr("IFA_ADDRESS")
                if addr and not ours(a["index"]):
                    out.append(str(ipaddress.ip_interface(f"{addr}/{a['prefixlen']}").network))
            for family in (socket.AF_INET, socket.AF_INET6):
                for r in ipr.get_routes(family=family, table=254):
                    dst = r.get_attr("RTA_DST")
                    if dst and r["dst_len"] > 0 and not ours(r.get_attr("RTA_OIF")):
                        out.append(str(ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False)))
    except (OSError, ValueError):
        return []
    return sorted(set(out))
