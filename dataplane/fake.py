"""FakeKernel: an in-memory kernel with Linux's FDB/neighbour semantics, for tests and sim.

Owns: a whole host's worth of links and entries (ours and foreign), the kernel
behaviours ``plan`` relies on (replace swaps a unicast FDB destination, a
dst-guarded delete that does not match is a silent no-op, deleting a device drops
its entries and detaches its ports, a missing device is ENODEV, a missing entry
ENOENT), injectable failures, and "operator" helpers that change things behind
the agent's back. Every change, ours or the operator's, is announced to
subscribers as ``events`` values, as the real kernel does on RTNLGRP_LINK/NEIGH.
Does not import trio unless ``open_monitor`` is called (the simulator uses it bare).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dataplane.events import FdbEvent, KernelEvent, LinkEvent, NeighEvent
from dataplane.kernel import ApplyResult, OpError
from dataplane.model import ZERO_MAC, Link, State
from dataplane.naming import owned_kind
from dataplane.plan import (
    CreateLink,
    DeleteLink,
    FdbDel,
    FdbSet,
    FloodAdd,
    FloodDel,
    NeighDel,
    NeighSet,
    Op,
    SetLink,
)

Listener = Callable[[list[KernelEvent]], None]


class FakeKernelError(OSError):
    """Raised by ``read`` when a read failure was injected."""


@dataclass(slots=True)
class _Failure:
    match: Callable[[Op], bool]
    errno: int
    times: int


class FakeKernel:
    """An in-memory kernel (see module docstring). Single-threaded."""

    def __init__(self, prefix: str = "ov-") -> None:
        self.prefix = prefix
        self.links: dict[str, Link] = {}
        self.fdb: dict[tuple[str, str], str] = {}
        self.flood: dict[tuple[str, str], bool] = {}
        self.neigh: dict[tuple[str, str], str] = {}
        self.reads = 0
        self.apply_calls = 0
        self.ops_applied = 0
        self.closed = False
        self._failures: list[_Failure] = []
        self._read_failures = 0
        self._listeners: list[Listener] = []
        self._pending: list[KernelEvent] = []

    # -- setup and inspection (no events) --------------------------------------------------
    def load(self, state: State) -> None:
        """Replace everything with ``state`` (links and ports both become links)."""
        self.links = {**state.links, **state.ports}
        self.fdb = dict(state.fdb)
        self.flood = dict(state.flood)
        self.neigh = dict(state.neigh)

    def snapshot(self) -> State:
        """Everything the fake holds, ours and foreign (links and ports all in ``links``)."""
        return State(dict(self.links), {}, dict(self.fdb), dict(self.flood), dict(self.neigh))

    # -- failures ----------------------------------------------------------------------------
    def fail(
        self,
        match: Callable[[Op], bool] | type | tuple[type, ...],
        err: int = errno.EIO,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` operations matching ``match`` fail with ``err``."""
        if isinstance(match, type | tuple):
            kinds = match

            def test(op: Op) -> bool:
                return isinstance(op, kinds)

            self._failures.append(_Failure(test, err, times))
        else:
            self._failures.append(_Failure(match, err, times))

    def fail_reads(self, times: int = 1) -> None:
        self._read_failures += times

    def _injected(self, op: Op) -> int:
        for f in self._failures:
            if f.times > 0 and f.match(op):
                f.times -= 1
                return f.errno
        return 0

    # -- Kernel protocol ---------------------------------------------------------------------
    def read(self, hint: State | None = None) -> State:
        self.reads += 1
        if self._read_failures:
            self._read_failures -= 1
            raise FakeKernelError(errno.EIO, "injected read failure")
        ours = {n: lk for n, lk in self.links.items() if owned_kind(n, self.prefix)}
        bridges = {n for n, lk in ours.items() if lk.kind == "bridge"}
        wanted = set(hint.ports) if hint is not None else set()
        ports = {
            n: lk
            for n, lk in self.links.items()
            if n not in ours and (lk.master in bridges or n in wanted)
        }
        vx = {n for n, lk in ours.items() if lk.kind == "vxlan"}
        return State(
            ours,
            ports,
            {k: v for k, v in self.fdb.items() if k[0] in vx},
            {k: v for k, v in self.flood.items() if k[0] in vx},
            {k: v for k, v in self.neigh.items() if k[0] in vx},
        )

    def apply(self, ops: Sequence[Op]) -> ApplyResult:
        self.apply_calls += 1
        result = ApplyResult()
        for op in ops:
            result.applied += 1
            err = self._injected(op)
            if err == 0:
                try:
                    err = self._do(op)
                except _Refused as e:
                    err = e.code
            if err and not (
                err in (errno.ENOENT, errno.ENODEV)
                and isinstance(op, DeleteLink | FdbDel | FloodDel | NeighDel)
            ):
                result.errors.append(OpError(op, err, errno.errorcode.get(err, str(err))))
            else:
                self.ops_applied += 1
        self._flush()
        return result

    def close(self) -> None:
        self.closed = True

    # -- operations --------------------------------------------------------------------------
    def _device(self, name: str, kind: str | None = None) -> Link:
        link = self.links.get(name)
        if link is None:
            raise _Refused(errno.ENODEV)
        if kind is not None and link.kind != kind:
            raise _Refused(errno.EOPNOTSUPP)
        return link

    def _do(self, op: Op) -> int:
        if isinstance(op, CreateLink):
            self.create_link(op.link)
        elif isinstance(op, DeleteLink):
            if op.name not in self.links:
                return errno.ENODEV
            self.delete_link(op.name)
        elif isinstance(op, SetLink):
            self._set_link(op)
        elif isinstance(op, FdbSet):
            self._device(op.device, "vxlan")
            self._put(self.fdb, (op.device, op.mac), op.dst)
        elif isinstance(op, FdbDel):
            self._device(op.device)
            have = self.fdb.get((op.device, op.mac))
            if have is None:
                return errno.ENOENT
            if have == op.dst or op.dst.endswith("%attrs"):
                self._drop(self.fdb, (op.device, op.mac))
            # A dst-guarded delete that does not match succeeds and deletes nothing.
        elif isinstance(op, FloodAdd):
            self._device(op.device, "vxlan")
            self._put(self.flood, (op.device, op.dst), True)
        elif isinstance(op, FloodDel):
            self._device(op.device)
            if (op.device, op.dst) not in self.flood:
                return errno.ENOENT
            self._drop(self.flood, (op.device, op.dst))
        elif isinstance(op, NeighSet):
            self._device(op.device)
            self._put(self.neigh, (op.device, op.ip), op.mac)
        elif isinstance(op, NeighDel):
            self._device(op.device)
            if (op.device, op.ip) not in self.neigh:
                return errno.ENOENT
            self._drop(self.neigh, (op.device, op.ip))
        return 0

    # create_link / delete_link are also setup helpers: their events are queued and
    # delivered at the next apply or operator action (like a late notification).
    def create_link(self, link: Link) -> None:
        if link.name in self.links:
            raise _Refused(errno.EEXIST)
        if link.vxlan is not None:
            for other in self.links.values():
                if (
                    other.vxlan is not None
                    and other.vxlan.vni == link.vxlan.vni
                    and other.vxlan.port == link.vxlan.port
                ):
                    raise _Refused(errno.EEXIST)
        if link.master is not None:
            self._device(link.master, "bridge")
        self.links[link.name] = link
        self._pending.append(LinkEvent(link.name, link))

    def delete_link(self, name: str) -> None:
        link = self.links.pop(name)
        self._pending.append(LinkEvent(name, None))
        if link.kind == "bridge":
            for other in list(self.links.values()):
                if other.master == name:
                    self._relink(replace(other, master=None))
        for table in (self.fdb, self.flood, self.neigh):
            for key in [k for k in table if k[0] == name]:
                del table[key]  # the kernel drops them silently with the device

    def _set_link(self, op: SetLink) -> None:
        link = self._device(op.name)
        if op.master is not None:
            self._device(op.master, "bridge")
        new = link
        if op.mtu is not None:
            new = replace(new, mtu=op.mtu)
        if op.detach:
            new = replace(new, master=None)
        elif op.master is not None:
            new = replace(new, master=op.master)
        if op.up:
            new = replace(new, up=True)
        if new != link:
            self._relink(new)

    def _relink(self, link: Link) -> None:
        self.links[link.name] = link
        self._pending.append(LinkEvent(link.name, link))

    def _put(self, table: dict[tuple[str, str], Any], key: tuple[str, str], value: Any) -> None:
        if table.get(key) != value:
            table[key] = value
            self._pending.append(self._event(table, key, value))

    def _drop(self, table: dict[tuple[str, str], Any], key: tuple[str, str]) -> None:
        old = table.pop(key)
        self._pending.append(self._event(table, key, old, present=False))

    def _event(
        self,
        table: dict[tuple[str, str], Any],
        key: tuple[str, str],
        value: Any,
        present: bool = True,
    ) -> KernelEvent:
        dev, k = key
        if table is self.fdb:
            return FdbEvent(dev, k, value, present)
        if table is self.flood:
            return FdbEvent(dev, ZERO_MAC, k, present)
        return NeighEvent(dev, k, value if present else None)

    # -- the operator (changes behind the agent's back, with events) -------------------------
    def operator(self, action: Callable[[FakeKernel], None]) -> None:
        """Run ``action(self)`` as someone else would, then announce its events."""
        action(self)
        self._flush()

    def operator_delete_fdb(self, device: str, mac: str) -> None:
        self.operator(lambda k: k._drop(k.fdb, (device, mac)))

    def operator_set_fdb(self, device: str, mac: str, dst: str) -> None:
        self.operator(lambda k: k._put(k.fdb, (device, mac), dst))

    def operator_delete_neigh(self, device: str, ip: str) -> None:
        self.operator(lambda k: k._drop(k.neigh, (device, ip)))

    def operator_set_neigh(self, device: str, ip: str, mac: str) -> None:
        self.operator(lambda k: k._put(k.neigh, (device, ip), mac))

    def operator_delete_link(self, name: str) -> None:
        self.operator(lambda k: k.delete_link(name))

    def operator_add_link(self, link: Link) -> None:
        self.operator(lambda k: k.create_link(link))

    def operator_set_link(self, link: Link) -> None:
        self.operator(lambda k: k._relink(link))

    # -- events --------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(events)`` after every change; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _flush(self) -> None:
        events, self._pending = self._pending, []
        if events:
            for listener in list(self._listeners):
                listener(events)

    def open_monitor(self, capacity: int = 10_000) -> FakeMonitor:
        return FakeMonitor(self, capacity)


class FakeMonitor:
    """Events of a FakeKernel for the trio reconciler (bounded; overflow -> None)."""

    def __init__(self, kernel: FakeKernel, capacity: int) -> None:
        import trio

        self._trio = trio
        self._queue: list[KernelEvent] = []
        self._overflow = False
        self._capacity = capacity
        self._wake = trio.Event()
        self._unsubscribe = kernel.subscribe(self._on_events)

    def _on_events(self, events: list[KernelEvent]) -> None:
        if len(self._queue) + len(events) > self._capacity:
            self._overflow = True
            self._queue.clear()
        else:
            self._queue.extend(events)
        self._wake.set()

    async def next_events(self) -> Sequence[KernelEvent] | None:
        while not self._queue and not self._overflow:
            await self._wake.wait()
            self._wake = self._trio.Event()
        if self._overflow:
            self._overflow = False
            return None
        events, self._queue = self._queue, []
        return events

    def close(self) -> None:
        self._unsubscribe()


class _Refused(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code
