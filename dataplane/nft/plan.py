"""plan: desired vs actual gateway/egress state -> the ordered operations. Pure.

Owns: the diff and its order: forwarding on, tables loaded (rules before the gateway
answers: a container must never get egress without isolation), the bridge MAC, then
addresses added, then stale addresses and tables deleted. Bridges that do not exist yet
are skipped (the VXLAN side creates them; the monitor sees them appear). Addresses on
our bridges that are not desired are ours to delete, but IPv6 link-local ones are left
alone. ``plan(d, read(d)) == []`` once the kernel matches.
Does not: decide what should exist (``compile``) or touch the kernel (``kernel``).
"""

from __future__ import annotations

from dataplane.nft.model import (
    FAMILIES,
    AddAddress,
    DeleteAddress,
    DeleteTable,
    LoadTable,
    NftActual,
    NftDesired,
    NftOp,
    SetMac,
    SetSysctl,
)
from dataplane.nft.rules import shape


def plan(desired: NftDesired, actual: NftActual) -> list[NftOp]:
    ops: list[NftOp] = []
    for path in desired.sysctls:
        if actual.sysctls.get(path) != "1":
            ops.append(SetSysctl(path, "1"))
    wanted = {t.family: t for t in desired.tables}
    for family, table in wanted.items():
        if actual.tables.get(family) != shape(table):
            ops.append(LoadTable(table))
    stale: list[NftOp] = []
    for b in desired.bridges:
        seen = actual.bridges.get(b.bridge)
        if seen is None:
            continue
        if seen.mac != b.mac:
            ops.append(SetMac(b.bridge, b.mac))
        for addr in b.addresses:
            if addr not in seen.addresses:
                ops.append(AddAddress(b.bridge, addr))
        for addr in sorted(seen.addresses):
            if addr not in b.addresses and not addr.lower().startswith("fe80:"):
                stale.append(DeleteAddress(b.bridge, addr))
    ops.extend(stale)
    for family in FAMILIES:
        if family not in wanted and family in actual.tables:
            ops.append(DeleteTable(family))
    return ops


def additive(ops: list[NftOp]) -> list[NftOp]:
    """``ops`` without deletions, for the startup grace (a table replaced by a new one stays)."""
    return [op for op in ops if not isinstance(op, DeleteAddress | DeleteTable)]
