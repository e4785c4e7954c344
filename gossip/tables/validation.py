"""Operator input to the tables: validation and lookup, before any state changes.

Owns: the checks of ``create_network`` arguments against the networks held, the
checks of persisted rows handed to ``restore_local_endpoints``, and resolving a
network or endpoint reference (id, name, id prefix). Every failure is a
``TableError`` with a one-line message for the operator. Pure functions.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from gossip.tables import ipam, netopts
from gossip.tables.rows import Endpoint, Network, NetworkOptions, TableError, check_name, is_hex_id

_HEX = frozenset("0123456789abcdef")


def check_new_network(
    live: Sequence[Network], name: str, subnets: Sequence[str], vni: int | None, mtu: int | None,
    default_mtu: int | None, options: NetworkOptions | None = None, underlay: Sequence[str] = (),
) -> tuple[tuple[str, ...], int | None]:
    """(canonical subnets, MTU or None) for a new network, or TableError. ``options``
    (``netopts.parse_options``) bring more subnets; ``underlay``: this host's underlay
    prefixes, which no subnet may overlap."""
    check_name(name, "network")
    nets = ipam.parse_subnets(subnets)
    mine = [p.subnet for p in options.pools] if options is not None and options.pools else list(nets)
    overlap_ok = options is not None and options.allow_overlap
    clash = netopts.underlay_clash(mine, underlay)
    if clash is not None:
        raise TableError(f"{clash}; choose another subnet")
    for other in live:
        if other.name == name:
            raise TableError(f"network {name!r} already exists (id {other.id[:12]})")
        if overlap_ok and other.options is not None and other.options.allow_overlap:
            continue
        for s in mine:
            for o in other.all_subnets:
                if ipam.overlapping(s, o):
                    why = "" if overlap_ok else " (both networks need --allow-overlap)"
                    if overlap_ok:
                        why = f" and network {other.name!r} does not allow overlapping subnets"
                    raise TableError(f"subnet {s} overlaps {o} of network {other.name!r}{why}")
    if vni is not None:
        if isinstance(vni, bool) or not isinstance(vni, int) or not 1 <= vni <= ipam.VNI_MAX:
            raise TableError(f"invalid VNI {vni!r}: expected 1-{ipam.VNI_MAX}")
        holder = next((n for n in live if n.vni == vni), None)
        if holder is not None:
            raise TableError(f"VNI {vni} is already used by network {holder.name!r}")
    if mtu is None:
        mtu = default_mtu
    low = 1280 if any(":" in s for s in nets) else 68
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int) or not low <= mtu <= 65535):
        raise TableError(f"invalid MTU {mtu!r}: expected {low}-65535")
    return nets, mtu


def find_network(live: Sequence[Network], winners: Sequence[Network], ref: str) -> Network:
    """By exact id, then name (the conflict winner first), then unique id prefix."""
    if not isinstance(ref, str) or not ref:
        raise TableError("no network given")
    for n in live:
        if n.id == ref:
            return n
    for n in winners:
        if n.name == ref:
            return n
    named = [n for n in live if n.name == ref]
    if named:
        return min(named, key=lambda n: (n.created, n.creator, n.id))
    prefix = ref.lower()
    if set(prefix) <= _HEX:
        hits = [n for n in live if n.id.startswith(prefix)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise TableError(f"network id prefix {ref!r} is ambiguous ({len(hits)} networks)")
    raise TableError(f"no such network: {ref}")


def find_endpoint(endpoints: Sequence[Endpoint], ref: str, node: str) -> Endpoint:
    """By exact id, then a name of ``node``'s endpoints, then unique id prefix."""
    if not isinstance(ref, str) or not ref:
        raise TableError("no endpoint given")
    for ep in endpoints:
        if ep.id == ref:
            return ep
    for ep in endpoints:
        if ep.owner == node and ep.name == ref:
            return ep
    hits = [ep for ep in endpoints if ep.id.startswith(ref.lower())]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise TableError(f"endpoint id prefix {ref!r} is ambiguous ({len(hits)} endpoints)")
    raise TableError(f"no such endpoint: {ref}")


def check_restored(endpoints: Iterable[Endpoint], networks: Iterable[Network]) -> None:
    """Persisted rows handed back after a restart must be well formed (all of them)."""
    for n in networks:
        if not isinstance(n, Network) or not isinstance(n.id, str) or not is_hex_id(n.id):
            raise TableError(f"cannot restore network {n!r}: bad id")
        check_name(n.name, "network")
        if ipam.parse_subnets(list(n.subnets)) != n.subnets:
            raise TableError(f"cannot restore network {n.name!r}: subnets not canonical")
        ints = (n.vni, 1500 if n.mtu is None else n.mtu, n.created)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in ints) or not 1 <= n.vni <= ipam.VNI_MAX:
            raise TableError(f"cannot restore network {n.name!r}: bad VNI, MTU or creation time")
        if not isinstance(n.encrypted, bool) or not isinstance(n.creator, str) or not n.creator:
            raise TableError(f"cannot restore network {n.name!r}: bad flags or creator")
        if isinstance(n.created_at, bool) or not isinstance(n.created_at, int | float):
            raise TableError(f"cannot restore network {n.name!r}: bad created_at")
    seen: dict[str, None] = {}
    for e in endpoints:
        if (
            not isinstance(e, Endpoint)
            or not all(isinstance(v, str) for v in (e.id, e.network, e.name, e.mac))
            or not is_hex_id(e.id)
            or not is_hex_id(e.network)
        ):
            raise TableError(f"cannot restore endpoint {e!r}: bad id")
        what = f"cannot restore endpoint {e.id[:12]}"
        if e.id in seen:
            raise TableError(f"{what} twice")
        seen[e.id] = None
        check_name(e.name, "endpoint")
        if e.ipv4 is None and e.ipv6 is None:
            raise TableError(f"{what}: no address")
        try:
            if e.ipv4 is not None:
                ipaddress.IPv4Address(e.ipv4)
            if e.ipv6 is not None:
                ipaddress.IPv6Address(e.ipv6)
        except (ValueError, TypeError):
            raise TableError(f"{what}: bad address") from None
        if ipam.parse_mac(e.mac) != e.mac:
            raise TableError(f"{what}: MAC not canonical")
        if isinstance(e.created, bool) or not isinstance(e.created, int) or e.created < 0:
            raise TableError(f"{what}: bad creation time")
