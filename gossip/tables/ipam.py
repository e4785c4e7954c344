"""IPAM: address math for per-node address blocks claimed through a replicated table.

Owns: parsing and validating subnets, addresses and MACs; cutting a subnet into
blocks; deciding which claimant owns a block; picking a free block and a free
address; Docker's MAC convention; picking a VNI. Pure functions, no state.
Does not: store or gossip claims (``replica.py`` does, as ``ClaimRow``s).

The scheme (docs/tables.md §IPAM): a subnet is cut into equal power-of-two
blocks. A node allocates only inside blocks it owns; it claims a free block
(one nobody claims) through the cluster-wide claim table when it needs one.
Concurrent claims of one block are resolved by the lowest (lamport, node);
every node also claims the blocks that hold its endpoints' addresses, so a
block with an address in use is never free. Addresses therefore never collide
while claims have spread (a connected cluster); duplicates from concurrent
claims or partitions are detected and resolved in ``conflicts.py``.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from gossip.tables.config import VNI_MAX as VNI_MAX
from gossip.tables.rows import ClaimRow, TableError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}\Z")
_MAX_BLOCKS = 1 << 62
"""Block numbers travel as msgpack integers."""
MIN_V4_PREFIX = 30
MIN_V6_PREFIX = 126


@dataclass(frozen=True, slots=True)
class Layout:
    """A subnet cut into ``count`` blocks of ``size`` addresses."""

    subnet: IPNetwork
    size: int

    @property
    def family(self) -> int:
        return self.subnet.version

    @property
    def count(self) -> int:
        return self.subnet.num_addresses // self.size

    @property
    def base(self) -> int:
        return int(self.subnet.network_address)

    def block_of(self, addr: IPAddress) -> int:
        return (int(addr) - self.base) // self.size

    def block_cidr(self, block: int) -> str:
        first = self.subnet.network_address + block * self.size
        plen = self.subnet.max_prefixlen - (self.size.bit_length() - 1)
        return f"{first}/{plen}"

    def usable(self, value: int) -> bool:
        """Not the network address, not the gateway (first address), not v4 broadcast."""
        offset = value - self.base
        if offset in (0, 1):
            return False
        return not (self.family == 4 and offset == self.subnet.num_addresses - 1)

    def addresses(self, block: int) -> Iterator[int]:
        start = self.base + block * self.size
        for value in range(start, start + self.size):
            if self.usable(value):
                yield value

    def text(self, value: int) -> str:
        return str(ipaddress.ip_address(value) if self.family == 6 else ipaddress.IPv4Address(value))


@functools.lru_cache(maxsize=1024)
def layout(subnet: str, block_size: int, min_blocks: int) -> Layout:
    """Blocks of ``block_size`` addresses, halved (down to 4) until there are at least
    ``min_blocks`` of them, so a /24 still serves 64 nodes. Memoized: a pure function
    of its arguments (an immutable ``Layout``), asked for on every endpoint create."""
    net = ipaddress.ip_network(subnet)
    total = net.num_addresses
    size = block_size
    while size > 4 and total // size < min_blocks:
        size //= 2
    size = min(size, total)
    while total // size > _MAX_BLOCKS:
        size *= 2
    return Layout(net, size)


# ----------------------------------------------------------------- parsing


def parse_subnets(subnets: Sequence[str]) -> tuple[str, ...]:
    """Validated subnets in canonical form: one or two, at most one per family, v4 first."""
    if isinstance(subnets, str):
        subnets = [subnets]
    if not subnets:
        raise TableError("a network needs at least one subnet (--subnet CIDR)")
    parsed: list[IPNetwork] = []
    for text in subnets:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise TableError(f"invalid subnet {text!r}: expected a CIDR like 10.0.1.0/24") from None
        if net.network_address != ipaddress.ip_interface(text).ip:
            raise TableError(f"invalid subnet {text!r}: host bits set (did you mean {net}?)")
        limit = MIN_V4_PREFIX if net.version == 4 else MIN_V6_PREFIX
        if net.prefixlen > limit:
            raise TableError(f"subnet {net} is too small (at most /{limit} for IPv{net.version})")
        if any(p.version == net.version for p in parsed):
            raise TableError(f"more than one IPv{net.version} subnet given")
        parsed.append(net)
    return tuple(str(p) for p in sorted(parsed, key=lambda p: p.version))


def overlapping(a: str, b: str) -> bool:
    na, nb = ipaddress.ip_network(a), ipaddress.ip_network(b)
    if isinstance(na, ipaddress.IPv4Network) and isinstance(nb, ipaddress.IPv4Network):
        return na.overlaps(nb)
    if isinstance(na, ipaddress.IPv6Network) and isinstance(nb, ipaddress.IPv6Network):
        return na.overlaps(nb)
    return False


def parse_address(text: str, subnet: str | None, family: int) -> IPAddress:
    """An endpoint address given by the operator, checked against the subnet."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise TableError(f"invalid IPv{family} address {text!r}") from None
    if addr.version != family:
        raise TableError(f"{text} is not an IPv{family} address")
    if subnet is None:
        raise TableError(f"the network has no IPv{family} subnet for {text}")
    net = ipaddress.ip_network(subnet)
    if addr not in net:
        raise TableError(f"address {text} is outside the subnet {subnet}")
    lay = Layout(net, 1)
    if not lay.usable(int(addr)):
        offset = int(addr) - lay.base
        role = "network address" if offset == 0 else "gateway" if offset == 1 else "broadcast address"
        raise TableError(f"address {text} is the subnet's {role}")
    return addr


def parse_mac(text: str) -> str:
    """A unicast MAC as lowercase colon-separated hex."""
    if not isinstance(text, str) or _MAC_RE.match(text) is None:
        raise TableError(f"invalid MAC address {text!r}: expected six hex bytes like 02:42:0a:00:00:02")
    raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if raw[0] & 1:
        raise TableError(f"MAC address {text} is a multicast address")
    if raw == bytes(6):
        raise TableError("MAC address 00:00:00:00:00:00 is not usable")
    return ":".join(f"{b:02x}" for b in raw)


def default_mac(ipv4: str | None, ipv6: str | None) -> str:
    """Docker's convention: 02:42 followed by the IPv4 address (the last four bytes of the
    IPv6 address on IPv6-only networks)."""
    if ipv4 is not None:
        tail = ipaddress.IPv4Address(ipv4).packed
    else:
        assert ipv6 is not None
        tail = ipaddress.IPv6Address(ipv6).packed[-4:]
    return ":".join(f"{b:02x}" for b in b"\x02\x42" + tail)


# ---------------------------------------------------------------- blocks


def block_owners(claims: Iterable[ClaimRow]) -> dict[tuple[int, int], str]:
    """(family, block) -> the winning claimant: lowest (lamport, node) of the live claims."""
    best: dict[tuple[int, int], tuple[int, str]] = {}
    for c in claims:
        if c.deleted:
            continue
        key = (c.family, c.block)
        cand = (c.lamport, c.node)
        if key not in best or cand < best[key]:
            best[key] = cand
    return {k: v[1] for k, v in best.items()}


def start_block(node: str, net_id: str, family: int, count: int) -> int:
    """Where a node starts looking for a free block: spread by a stable hash so
    concurrent claimers rarely pick the same block (never Python's randomised hash)."""
    digest = hashlib.sha256(f"{node}\0{net_id}\0{family}".encode()).digest()
    return int.from_bytes(digest[:16], "big") % count


class _Counted(Protocol):
    @property
    def count(self) -> int: ...


def free_block(lay: _Counted, claimed: set[int], start: int) -> int | None:
    """The first block from ``start`` (wrapping) that nobody claims."""
    count = lay.count
    if len(claimed) >= count:
        return None
    block = start % count
    for _ in range(len(claimed) + 1):
        if block not in claimed:
            return block
        block = (block + 1) % count
    return None  # pragma: no cover - len(claimed) < count guarantees a hit


def allocate(lay: Layout, blocks: Iterable[int], used: set[int]) -> int | None:
    """The lowest usable address not in ``used`` inside the given blocks (in order)."""
    for block in blocks:
        for value in lay.addresses(block):
            if value not in used:
                return value
    return None


def pick_vni(net_id: str, used: set[int], low: int, high: int) -> int:
    """A VNI for a new network: a stable hash of its id into [low, high], probing past
    used ones (sequential picks would make concurrent creates collide)."""
    span = high - low + 1
    if sum(1 for v in used if low <= v <= high) >= span:
        raise TableError(f"no free VNI in {low}-{high}")
    vni = low + int(net_id[:16], 16) % span
    while vni in used:
        vni = low if vni == high else vni + 1
    return vni
