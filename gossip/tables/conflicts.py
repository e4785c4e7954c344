"""Deterministic resolution of conflicting rows: every node computes the same winners.

Owns: which of several live networks keeps a contested name, VNI or subnet, and
which of several visible endpoints keeps a contested IPv4, IPv6 or MAC address.
Pure functions of the rows alone (never of arrival order), so nodes holding the
same rows agree. Does not: hide anything (``visibility.py`` uses the result).

Networks that both allow overlapping subnets (``--allow-overlap``, ``netopts``) do
not contest their subnets.

Loads ``ipam`` and ``netopts`` only once there is a network to resolve: an agent
without networks does not hold their code (docs/performance.md, RSS).

Precedence: the earlier creation in Lamport order, then the node name, then the
id — i.e. the lowest ``(created, node, id)`` keeps the value.
"""

from __future__ import annotations

from collections.abc import Iterable

from gossip.tables.rows import Conflict, Endpoint, Network


def resolve_networks(networks: Iterable[Network]) -> tuple[list[Network], list[Conflict]]:
    """(winners, conflicts): networks are accepted in precedence order unless one
    already accepted holds the same name, the same VNI or an overlapping subnet."""
    accepted: list[Network] = []
    conflicts: list[Conflict] = []
    by_name: dict[str, Network] = {}
    by_vni: dict[int, Network] = {}
    for net in sorted(networks, key=lambda n: (n.created, n.creator, n.id)):
        clash: tuple[str, str, Network] | None = None
        if net.name in by_name:
            clash = ("network-name", net.name, by_name[net.name])
        elif net.vni in by_vni:
            clash = ("network-vni", str(net.vni), by_vni[net.vni])
        else:
            from gossip.tables import ipam, netopts  # with the first network (module docstring)

            for other in accepted:
                if netopts.overlap_allowed(net, other):
                    continue
                hit = next(
                    (s for s in net.all_subnets for o in other.all_subnets if ipam.overlapping(s, o)), None
                )
                if hit is not None:
                    clash = ("network-subnet", hit, other)
                    break
        if clash is not None:
            kind, value, winner = clash
            conflicts.append(
                Conflict(kind, net.id, value, winner.id, net.id, winner.creator, net.creator)
            )
            continue
        accepted.append(net)
        by_name[net.name] = net
        by_vni[net.vni] = net
    accepted.sort(key=lambda n: (n.name, n.id))
    return accepted, conflicts


def resolve_addresses(endpoints: Iterable[Endpoint]) -> tuple[dict[str, str], list[Conflict]]:
    """({loser endpoint id: kind}, conflicts) among the visible endpoints of one network.

    Endpoints are accepted in precedence order unless an accepted one holds the
    same IPv4, IPv6 or MAC address; a loser holds nothing (it is not programmed),
    and only its first clash is reported.
    """
    losers: dict[str, str] = {}
    conflicts: list[Conflict] = []
    holders: dict[tuple[str, str], Endpoint] = {}
    for ep in sorted(endpoints, key=lambda e: (e.created, e.owner, e.id)):
        keys = [(k, v) for k, v in (("ipv4", ep.ipv4), ("ipv6", ep.ipv6), ("mac", ep.mac)) if v]
        clash = next(((k, v) for k, v in keys if (k, v) in holders), None)
        if clash is None:
            for key in keys:
                holders[key] = ep
            continue
        winner = holders[clash]
        losers[ep.id] = clash[0]
        conflicts.append(
            Conflict(clash[0], ep.network, clash[1], winner.id, ep.id, winner.owner, ep.owner)
        )
    return losers, conflicts
