"""Whether this host may take part in a network: the checks before a local endpoint is made.

Owns: the decision (pure) that refuses a local endpoint on a network this host cannot
serve, with the one-line reason the operator sees:
- a subnet of the network overlaps this host's underlay (``hostnets.underlay_prefixes``).
  The creating host checks its own underlay at ``network create``; every other host
  checks its own here, when it would first hold the network's gateway and routes,
  which would take the underlay's traffic (and the host's way to its peers) away;
- a subnet overlaps one of another network (both ``--allow-overlap``) that already has
  endpoints on this host. A host holds one gateway address and one route per subnet,
  so of two overlapping networks it serves only one (docs/operations.md): refused, not
  made without gateway, default route and names.
Does not: read the kernel (the caller passes the underlay prefixes) or the tables.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from gossip.tables.rows import Network


def refusal(net: Network, local: Iterable[Network], underlay: Sequence[str]) -> str | None:
    """Why this host must not hold an endpoint of ``net`` (None: it may). ``local``: the
    networks with endpoints on this host (``net`` itself may be among them)."""
    from gossip.tables import netopts  # with the first network (``Tables.extras``)

    clash = netopts.underlay_clash(net.all_subnets, underlay)
    if clash is not None:
        return (f"network {net.name!r}: {clash}; an endpoint here would route the underlay's traffic "
                f"into the overlay (choose hosts whose underlay does not overlap it)")
    for other in local:
        if other.id == net.id:
            continue
        hit = _overlap(net.all_subnets, other.all_subnets)
        if hit is not None:
            return (f"network {net.name!r} ({hit[0]}) overlaps network {other.name!r} ({hit[1]}), which has "
                    f"endpoints on this host: a host serves only one of two overlapping networks (one gateway "
                    f"address and route per subnet); put this endpoint on another host")
    return None


def _overlap(mine: Iterable[str], theirs: Iterable[str]) -> tuple[str, str] | None:
    nets = [ipaddress.ip_network(s) for s in theirs]
    for s in mine:
        a = ipaddress.ip_network(s)
        for b in nets:
            if a.version == b.version and a.overlaps(b):  # type: ignore[arg-type]
                return str(a), str(b)
    return None
