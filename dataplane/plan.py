"""plan: desired vs actual kernel state -> the ordered operations that make them equal. Pure.

Owns: the diff and its ordering. Does no I/O; ``kernel.py``/``fake.py`` perform
the operations and report per-operation errors.

Design notes
------------
* Level-triggered: the input is two complete states, never a list of events, so a
  lost event, a crash half-way through an apply, or an operator's edit is repaired by
  the next plan. ``plan(d, d) == []``.
* Only our objects are touched: links whose name parses as ours
  (``naming.owned_kind``), entries on those links, and the endpoint interfaces the
  desired state lists. Ports on our bridges that are not desired are detached only
  if their name carries our prefix (host-side veths created by the agent);
  anything else an operator plugs in stays.
* Writes are idempotent replaces (NLM_F_CREATE|NLM_F_REPLACE): they also move a MAC
  to a new VTEP or an IP to a new MAC in one step, with no window without an entry.
  Deletes of unicast FDB rows carry the destination we saw, so a delete can never
  remove a newer mapping (the kernel ignores a dst-guarded delete that does not
  match: docs/dataplane.md, "Kernel facts").
* Order (make before break):
  1. delete links that must be re-created (kind or immutable VXLAN attributes differ);
  2. create/fix bridges, then VXLAN devices (parents before children);
  3. attach/fix endpoint ports, detach stale ones;
  4. entry writes: flood rows, unicast FDB, neighbours (FDB before the neighbour
     that makes containers use it);
  5. entry deletes: neighbours, unicast FDB, flood rows (reverse order);
  6. delete stale links: VXLAN devices, then bridges (children before parents).
  A MAC that moves between networks is thus written on its new device before it is
  deleted from the old one. Entries on a link that is deleted are not deleted one by
  one: the kernel drops them with the device (31-36 ms for 10k rows, §5.1).
* Ports that do not exist yet (the veth is not created) are skipped, not errors:
  ``missing_ports`` lists them and the next reconcile attaches them.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from dataplane.model import Link, State
from dataplane.naming import owned_kind

_V = TypeVar("_V")
_Op3 = TypeVar("_Op3", "FdbSet", "NeighSet")
_first = operator.itemgetter(0)

# -- operations ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateLink:
    """Create a bridge or VXLAN device with every attribute of ``link`` (and bring it up)."""

    link: Link


@dataclass(frozen=True, slots=True)
class DeleteLink:
    name: str


@dataclass(frozen=True, slots=True)
class SetLink:
    """Change what differs on an existing link. None = leave as is."""

    name: str
    mtu: int | None = None
    master: str | None = None
    detach: bool = False
    up: bool = False


# Entry operations come by the ten thousand (a full program of 20,100 rows): they are
# NamedTuples, built in C-backed ``tuple.__new__`` at ~0.3 µs rather than a frozen
# dataclass's ~0.8 µs (three ``object.__setattr__`` calls), and as immutable. Equality
# also compares the class (``_same_op``), so ``FdbSet(d, m, v) != FdbDel(d, m, v)``.


class FdbSet(NamedTuple):
    """Unicast FDB row (NTF_SELF, permanent), replace semantics."""

    device: str
    mac: str
    dst: str


class FdbDel(NamedTuple):
    """Delete a unicast FDB row, guarded by the destination it was seen with."""

    device: str
    mac: str
    dst: str


class FloodAdd(NamedTuple):
    """Append an all-zero-MAC row toward ``dst`` (head-end replication)."""

    device: str
    dst: str


class FloodDel(NamedTuple):
    device: str
    dst: str


class NeighSet(NamedTuple):
    """Permanent neighbour, replace semantics."""

    device: str
    ip: str
    mac: str


class NeighDel(NamedTuple):
    device: str
    ip: str


def _same_op(self: tuple[str, ...], other: object) -> bool:
    return type(other) is type(self) and tuple.__eq__(self, other)  # type: ignore[arg-type]


def _other_op(self: tuple[str, ...], other: object) -> bool:
    return not _same_op(self, other)


for _cls in (FdbSet, FdbDel, FloodAdd, FloodDel, NeighSet, NeighDel):
    # Set after creation: a NamedTuple body may not define dunders; the tuple hash
    # stays (equal ops hash equal; ops of two classes merely may collide).
    setattr(_cls, "__eq__", _same_op)  # noqa: B010
    setattr(_cls, "__ne__", _other_op)  # noqa: B010


LinkOp = CreateLink | DeleteLink | SetLink
EntryOp = FdbSet | FdbDel | FloodAdd | FloodDel | NeighSet | NeighDel
Op = LinkOp | EntryOp
ENTRY_OPS = (FdbSet, FdbDel, FloodAdd, FloodDel, NeighSet, NeighDel)
LINK_OPS = (CreateLink, DeleteLink, SetLink)


def op_device(op: Op) -> str:
    """The link an operation acts on (for entries: the device holding them)."""
    if isinstance(op, CreateLink):
        return op.link.name
    if isinstance(op, DeleteLink | SetLink):
        return op.name
    return op.device


# -- the diff ----------------------------------------------------------------------------------


def _must_recreate(want: Link, have: Link) -> bool:
    return have.kind != want.kind or (want.kind == "vxlan" and have.vxlan != want.vxlan)


def _fix_link(want: Link, have: Link, master_gone: bool) -> SetLink | None:
    mtu = want.mtu if want.mtu != have.mtu else None
    have_master = None if master_gone else have.master
    master = want.master if want.master is not None and want.master != have_master else None
    detach = want.master is None and have_master is not None
    up = want.up and not have.up
    if mtu is None and master is None and not detach and not up:
        return None
    return SetLink(want.name, mtu=mtu, master=master, detach=detach, up=up)


def missing_ports(desired: State, actual: State) -> list[str]:
    """Desired endpoint interfaces that do not exist in the kernel (yet)."""
    return [name for name in desired.ports if name not in actual.ports]


def plan(desired: State, actual: State, prefix: str = "ov-") -> list[Op]:
    """Operations that turn ``actual`` into ``desired`` on our objects, in a safe order.

    ``desired`` comes from ``compile`` (only our objects); ``actual`` from a kernel
    adapter and may contain anything: whatever is not ours is ignored.
    """
    early_deletes: list[Op] = []
    bridge_ops: list[Op] = []
    vxlan_ops: list[Op] = []
    port_ops: list[Op] = []
    late_deletes: list[Op] = []

    ours = {name: link for name, link in actual.links.items() if owned_kind(name, prefix)}
    recreated: set[str] = set()
    for name, want in desired.links.items():
        have = ours.get(name)
        if have is not None and _must_recreate(want, have):
            recreated.add(name)
    # A re-created bridge loses its ports: children must be re-attached.
    gone_masters = recreated | {n for n in ours if n not in desired.links}
    for name in sorted(recreated, key=lambda n: ours[n].kind != "vxlan"):
        early_deletes.append(DeleteLink(name))

    for name, want in desired.links.items():
        out = bridge_ops if want.kind == "bridge" else vxlan_ops
        have = ours.get(name)
        if have is None or name in recreated:
            out.append(CreateLink(want))
            continue
        fix = _fix_link(want, have, have.master in gone_masters)
        if fix is not None:
            out.append(fix)

    for name, want in desired.ports.items():
        have = actual.ports.get(name)
        if have is None:
            continue
        fix = _fix_link(want, have, have.master in gone_masters)
        if fix is not None:
            port_ops.append(fix)
    for name, have in actual.ports.items():
        if (
            name not in desired.ports
            and name.startswith(prefix)
            and have.master is not None
            and have.master in ours
            and have.master not in gone_masters
        ):
            port_ops.append(SetLink(name, detach=True))

    # Devices whose entries are as the kernel reports them (not new, not re-created).
    live = {n for n in desired.links if n in ours and n not in recreated}
    stale = [n for n in ours if n not in desired.links]
    sets: list[Op] = []
    dels: list[Op] = []
    _diff_entries(desired, actual, live, sets, dels)
    for name in sorted(stale, key=lambda n: ours[n].kind != "vxlan"):
        late_deletes.append(DeleteLink(name))
    return early_deletes + bridge_ops + vxlan_ops + port_ops + sets + dels + late_deletes


def _on(table: Mapping[tuple[str, str], _V], live: set[str]) -> Mapping[tuple[str, str], _V]:
    """``table`` restricted to entries on ``live`` devices (the same object if all are)."""
    if set(map(_first, table)) <= live:  # in C: ~20 ns per entry
        return table
    return {k: v for k, v in table.items() if k[0] in live}


def _diff_entries(
    desired: State, actual: State, live: set[str], sets: list[Op], dels: list[Op]
) -> None:
    # Only entries on devices that keep existing are compared: entries on devices that
    # are deleted go with the device, entries on foreign devices are not ours.
    flood_a = _on(actual.flood, live)
    fdb_a = _on(actual.fdb, live)
    neigh_a = _on(actual.neigh, live)
    flood_d, fdb_d, neigh_d = desired.flood, desired.fdb, desired.neigh
    # Whole-table equality runs in C; the per-entry loops only run when it fails.
    flood_diff, fdb_diff, neigh_diff = flood_a != flood_d, fdb_a != fdb_d, neigh_a != neigh_d
    # Ops of a bulk program are built by tuple.__new__ directly: a NamedTuple's own
    # __new__ is a Python function, one more frame for each of 20,000 rows.
    new = tuple.__new__
    if flood_diff:
        sets.extend(FloodAdd(dev, dst) for (dev, dst) in flood_d if (dev, dst) not in flood_a)
    if fdb_diff:
        if fdb_a:
            get = fdb_a.get
            sets.extend(
                new(FdbSet, (key[0], key[1], dst)) for key, dst in fdb_d.items() if get(key) != dst
            )
        else:
            sets.extend(_all_rows(FdbSet, fdb_d))
    if neigh_diff:
        if neigh_a:
            nget = neigh_a.get
            sets.extend(
                new(NeighSet, (key[0], key[1], mac))
                for key, mac in neigh_d.items()
                if nget(key) != mac
            )
        else:
            sets.extend(_all_rows(NeighSet, neigh_d))
        dels.extend(NeighDel(dev, ip) for (dev, ip) in neigh_a if (dev, ip) not in neigh_d)
    if fdb_diff:
        dels.extend(
            FdbDel(dev, mac, dst) for (dev, mac), dst in fdb_a.items() if (dev, mac) not in fdb_d
        )
    if flood_diff:
        dels.extend(FloodDel(dev, dst) for (dev, dst) in flood_a if (dev, dst) not in flood_d)


def _all_rows(cls: type[_Op3], table: Mapping[tuple[str, str], str]) -> Iterator[_Op3]:
    """``cls(device, key, value)`` for every row of ``table`` (none of it in the kernel:
    a first program), built by C loops only: the (device, key) tuple plus the value's
    1-tuple (``zip``), made a ``cls`` by ``tuple.__new__`` (~15 % less than a generator
    expression, which resumes a Python frame per row)."""
    return map(tuple.__new__, itertools.repeat(cls), map(operator.add, table.keys(), zip(table.values())))


def additive(ops: list[Op]) -> list[Op]:
    """``ops`` without anything that removes state: what a freshly started agent may do.

    Until its tables have caught up with the cluster, a restarted agent's view is
    incomplete; applying deletions then would cut traffic the kernel still carries
    correctly (a restart must lose no packet). Creates, replaces and re-creations
    (delete + create of the same link) are kept.
    """
    created = {op.link.name for op in ops if isinstance(op, CreateLink)}
    return [
        op
        for op in ops
        if not isinstance(op, FdbDel | FloodDel | NeighDel)
        and not (isinstance(op, DeleteLink) and op.name not in created)
        and not (isinstance(op, SetLink) and op.detach)
    ]
