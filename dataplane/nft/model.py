"""Values of the gateway/egress side: what should hold on our bridges and in our nft tables.

Owns: ``BridgeL3`` (a bridge's gateway MAC and addresses), ``Table``/``Chain`` (one of
our nftables tables as rendered rules), ``NftDesired`` (compile output), ``NftActual``
(a read-back: what the bridges hold, the shape of our tables, the sysctls), the
operations ``plan`` emits, and the names every part agrees on (``TABLE``, the sysctls).
Does not: decide (``compile``, ``plan``), render or parse nft text (``rules``), or do I/O.

Canonical forms, as elsewhere in the dataplane (``plan`` compares with ``==``): MACs
lower-case with colons; addresses ``canonical_ip`` + ``/prefixlen``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

TABLE = "overlay_agent"
"""The name of our tables (one per nftables family we use: ``inet`` and ``bridge``)."""
FAMILIES = ("inet", "bridge")
IPV4_FORWARD = "net/ipv4/ip_forward"
IPV6_FORWARD = "net/ipv6/conf/all/forwarding"


@dataclass(frozen=True, slots=True)
class BridgeL3:
    """A network's bridge as a router port: the anycast gateway's MAC and addresses."""

    bridge: str
    network_id: str
    mac: str
    addresses: tuple[str, ...]
    """``address/prefixlen`` (the gateway of each subnet, with the subnet's length)."""


@dataclass(frozen=True, slots=True)
class Chain:
    """A base chain (policy accept: we never decide for traffic that is not ours)."""

    name: str
    type: str
    hook: str
    priority: int
    rules: tuple[str, ...] = ()
    """nft rule statements, without the comment that tags them (``rules.tag``)."""


@dataclass(frozen=True, slots=True)
class Table:
    family: str
    chains: tuple[Chain, ...]
    name: str = TABLE


ChainShape = tuple[str, str, str, int, str, tuple[str, ...]]
"""(name, type, hook, priority, policy, the tags of its rules in order)."""
TableShape = tuple[ChainShape, ...]
"""What ``read`` can check of a table: its chains and the tags of their rules."""


@dataclass(frozen=True, slots=True)
class NftDesired:
    bridges: tuple[BridgeL3, ...] = ()
    tables: tuple[Table, ...] = ()
    """The tables that should exist; a family without one here should have none."""
    sysctls: tuple[str, ...] = ()
    """/proc/sys paths (relative) that must read 1: forwarding, set once and left on."""
    problems: tuple[str, ...] = field(default=(), compare=False)

    @property
    def empty(self) -> bool:
        return not self.bridges and not self.tables


@dataclass(frozen=True, slots=True)
class BridgeSeen:
    mac: str
    addresses: frozenset[str]


@dataclass(frozen=True, slots=True)
class NftActual:
    bridges: Mapping[str, BridgeSeen] = field(default_factory=dict)
    """The desired bridges that exist (a missing one is not there yet: the VXLAN side makes it)."""
    tables: Mapping[str, TableShape] = field(default_factory=dict)
    """family -> the shape of our table there (absent: no table)."""
    sysctls: Mapping[str, str] = field(default_factory=dict)


# -- operations ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetMac:
    bridge: str
    mac: str


@dataclass(frozen=True, slots=True)
class AddAddress:
    bridge: str
    address: str


@dataclass(frozen=True, slots=True)
class DeleteAddress:
    bridge: str
    address: str


@dataclass(frozen=True, slots=True)
class LoadTable:
    """Replace our table of ``table.family`` with ``table``, atomically (one nft transaction)."""

    table: Table


@dataclass(frozen=True, slots=True)
class DeleteTable:
    family: str
    name: str = TABLE


@dataclass(frozen=True, slots=True)
class SetSysctl:
    path: str
    value: str = "1"


NftOp = SetMac | AddAddress | DeleteAddress | LoadTable | DeleteTable | SetSysctl
