"""IPAM over the replicated claim table: where this node allocates, which claims it holds.

Owns: the allocation policy (own blocks first, then a free block found from a
per-node starting point) and the claim policy (hold a claim on every block with
a local address plus one spare owned block per family; release the rest).
Pure functions of the rows given; ``replica.py`` stores and gossips the claims.
Address math is in ``ipam.py``; the scheme is described in docs/tables.md.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gossip.tables import ipam
from gossip.tables.config import TablesConfig
from gossip.tables.rows import ClaimRow, Endpoint, Network, TableError
from gossip.tables.store import ClaimKey

BlockKey = tuple[int, int]
"""(family, block number)"""


@dataclass(frozen=True, slots=True)
class Block:
    """An IPAM block claim as seen by this node."""

    network: str
    cidr: str
    node: str
    owner: bool
    """True if this claim wins the block (the claimant allocates from it)."""


def layout_for(net: Network, family: int, config: TablesConfig) -> ipam.Layout | None:
    subnet = net.subnet_v4 if family == 4 else net.subnet_v6
    if subnet is None:
        return None
    return ipam.layout(subnet, config.ipam_block, config.ipam_min_blocks)


# Parsed once: every create walks all of a network's addresses, and ipaddress parsing
# was most of an endpoint create's cost at 1,000 endpoints (pure functions, memoized).
_address = functools.lru_cache(maxsize=1 << 16)(ipaddress.ip_address)
_v4 = functools.lru_cache(maxsize=1 << 16)(ipaddress.IPv4Address)
_v6 = functools.lru_cache(maxsize=1 << 16)(ipaddress.IPv6Address)


def used_addresses(endpoints: Iterable[Endpoint]) -> dict[int, set[int]]:
    """Addresses (as integers) per family held by the given endpoints."""
    used: dict[int, set[int]] = {4: set(), 6: set()}
    for ep in endpoints:
        if ep.ipv4:
            used[4].add(int(_v4(ep.ipv4)))
        if ep.ipv6:
            used[6].add(int(_v6(ep.ipv6)))
    return used


def allocate(
    claims: Iterable[ClaimRow], node: str, net: Network, family: int, used: set[int],
    config: TablesConfig,
) -> str:
    """A free address: in a block ``node`` owns, else in a block nobody claims (which
    the caller then claims). Raises TableError when every block is claimed."""
    lay = layout_for(net, family, config)
    assert lay is not None
    live = [c for c in claims if not c.deleted]
    owners = ipam.block_owners(live)
    mine = sorted(b for (f, b), who in owners.items() if f == family and who == node)
    value = ipam.allocate(lay, mine, used)
    if value is not None:
        return lay.text(value)
    claimed = {c.block for c in live if c.family == family}
    start = ipam.start_block(node, net.id, family, lay.count)
    while True:
        block = ipam.free_block(lay, claimed, start)
        if block is None:
            raise TableError(
                f"no free address block in {lay.subnet} of network {net.name!r} "
                f"({lay.count} blocks of {lay.size} addresses, all claimed); "
                "use a larger subnet or give an address"
            )
        value = ipam.allocate(lay, [block], used)
        if value is not None:
            return lay.text(value)
        claimed.add(block)  # only hidden rows live there; try the next one


def claim_changes(
    claims: Mapping[ClaimKey, ClaimRow], node: str, net: Network, local: Iterable[Endpoint],
    config: TablesConfig,
) -> tuple[list[BlockKey], list[BlockKey]]:
    """(blocks to claim, blocks to release) for ``node``: a claim on every block holding
    one of its addresses (so such a block is never free, whoever wins it), plus one
    spare block it owns per family for the next allocation; nothing else."""
    want: dict[BlockKey, None] = {}
    layouts = {4: layout_for(net, 4, config), 6: layout_for(net, 6, config)}
    for ep in local:
        for family, text in ((4, ep.ipv4), (6, ep.ipv6)):
            lay = layouts[family]
            if text and lay is not None:
                addr = _address(text)
                if addr in lay.subnet:
                    want[(family, lay.block_of(addr))] = None
    owners = ipam.block_owners(claims.values())
    mine = sorted((c.family, c.block) for c in claims.values() if c.node == node and not c.deleted)
    for family in (4, 6):
        if any(k[0] == family and owners.get(k) == node for k in want):
            continue
        spare = next((k for k in mine if k[0] == family and owners.get(k) == node), None)
        if spare is not None:
            want[spare] = None
    release = [k for k in mine if k not in want]
    claim = [
        k for k in want
        if (cur := claims.get((k[0], k[1], node))) is None or cur.deleted
    ]
    return claim, release


def block_view(claims: Iterable[ClaimRow], net: Network, config: TablesConfig) -> list[Block]:
    live = [c for c in claims if not c.deleted]
    owners = ipam.block_owners(live)
    out = []
    for c in sorted(live, key=lambda c: (c.family, c.block, c.node)):
        lay = layout_for(net, c.family, config)
        if lay is not None and c.block < lay.count:
            out.append(Block(net.id, lay.block_cidr(c.block), c.node, owners[(c.family, c.block)] == c.node))
    return out
