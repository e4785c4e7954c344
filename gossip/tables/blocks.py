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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from gossip.tables import ipam
from gossip.tables.config import TablesConfig
from gossip.tables.rows import ClaimRow, Endpoint, IpamPool, Network, TableError
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


class Pools:
    """A network's subnets of one family as one numbering of blocks: the blocks of each
    pool (its ``--ip-range``, else its subnet) follow those of the pools before it, so a
    plain network (one pool) numbers its blocks exactly as a single ``ipam.Layout``.
    Addresses handed out skip each subnet's network and broadcast addresses, its gateway
    and its aux addresses."""

    def __init__(self, family: int, parts: list[tuple[ipam.Layout, ipam.IPNetwork, frozenset[int]]]) -> None:
        self.family = family
        self.parts: list[tuple[int, ipam.Layout, ipam.IPNetwork, frozenset[int]]] = []
        offset = 0
        for lay, subnet, excluded in parts:
            self.parts.append((offset, lay, subnet, excluded))
            offset += lay.count
        self.count = offset

    @property
    def text_subnets(self) -> str:
        return ", ".join(str(p[2]) for p in self.parts)

    def _part(self, block: int) -> tuple[int, ipam.Layout, ipam.IPNetwork, frozenset[int]]:
        for part in reversed(self.parts):
            if block >= part[0]:
                return part
        raise IndexError(block)

    def block_of(self, addr: ipam.IPAddress) -> int | None:
        for offset, lay, _, _ in self.parts:
            if addr.version == self.family and addr in lay.subnet:
                return offset + lay.block_of(addr)
        return None

    def block_cidr(self, block: int) -> str:
        offset, lay, _, _ = self._part(block)
        return lay.block_cidr(block - offset)

    def addresses(self, block: int) -> Iterator[int]:
        offset, lay, subnet, excluded = self._part(block)
        first = int(subnet.network_address)
        last = first + subnet.num_addresses - 1
        start = lay.base + (block - offset) * lay.size
        for value in range(start, start + lay.size):
            if value != first and not (self.family == 4 and value == last) and value not in excluded:
                yield value

    def text(self, value: int) -> str:
        return str(ipaddress.ip_address(value) if self.family == 6 else ipaddress.IPv4Address(value))


@functools.lru_cache(maxsize=1024)
def _pools(pools: tuple[IpamPool, ...], family: int, block_size: int, min_blocks: int) -> Pools | None:
    parts = []
    for p in pools:
        subnet = ipaddress.ip_network(p.subnet)
        if subnet.version != family:
            continue
        excluded = frozenset(int(ipaddress.ip_address(a)) for a in (p.gateway_address, *(x for _, x in p.aux)))
        parts.append((ipam.layout(p.ip_range or p.subnet, block_size, min_blocks), subnet, excluded))
    return Pools(family, parts) if parts else None


def layout_for(net: Network, family: int, config: TablesConfig) -> Pools | None:
    """The blocks of a network's subnets of ``family`` (None: it has none)."""
    return _pools(net.pools, family, config.ipam_block, config.ipam_min_blocks)


def check_address(net: Network, text: str, family: int) -> ipam.IPAddress:
    """An address given by the operator: in one of the network's subnets of ``family``,
    and not its network, broadcast, gateway or aux address. Raises TableError."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise TableError(f"invalid IPv{family} address {text!r}") from None
    if addr.version != family:
        raise TableError(f"{text} is not an IPv{family} address")
    pools = [p for p in net.pools if ipaddress.ip_network(p.subnet).version == family]
    if not pools:
        raise TableError(f"the network has no IPv{family} subnet for {text}")
    pool = next((p for p in pools if addr in ipaddress.ip_network(p.subnet)), None)
    if pool is None:
        raise TableError(f"address {text} is outside the subnet {', '.join(p.subnet for p in pools)}")
    subnet = ipaddress.ip_network(pool.subnet)
    role = ("network address" if addr == subnet.network_address
            else "broadcast address" if family == 4 and addr == subnet.broadcast_address
            else "gateway" if str(addr) == pool.gateway_address
            else next((f"aux address {n!r}" for n, a in pool.aux if a == str(addr)), None))
    if role is not None:
        raise TableError(f"address {text} is the subnet's {role}")
    return addr


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
    mine = sorted(b for (f, b), who in owners.items() if f == family and who == node and b < lay.count)
    value = _first_free(lay, mine, used)
    if value is not None:
        return lay.text(value)
    claimed = {c.block for c in live if c.family == family}
    # Spread within the first pool (a plain network: the whole subnet, as always); free_block
    # then goes on through the later pools in order, so the first subnet fills up first.
    start = ipam.start_block(node, net.id, family, lay.parts[0][1].count)
    while True:
        block = ipam.free_block(lay, claimed, start)
        if block is None:
            raise TableError(
                f"no free address block in {lay.text_subnets} of network {net.name!r} "
                f"({lay.count} blocks, all claimed); "
                "use a larger subnet or give an address"
            )
        value = _first_free(lay, [block], used)
        if value is not None:
            return lay.text(value)
        claimed.add(block)  # only hidden rows live there; try the next one


def _first_free(lay: Pools, blocks: Iterable[int], used: set[int]) -> int | None:
    """The lowest address not in ``used`` inside the given blocks (in order)."""
    for block in blocks:
        for value in lay.addresses(block):
            if value not in used:
                return value
    return None


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
                block = lay.block_of(_address(text))
                if block is not None:
                    want[(family, block)] = None
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
