"""The gateway target keeps our nft tables' shapes between passes (no ``nft`` process per pass).

A fake kernel counts the table reads; a fake clock ages the cache. What must hold: an
idle sequence of passes reads the tables once; anything that may have changed them (an
apply, a monitor event about our table, lost monitor events, age, no monitor at all)
makes the next pass read them again; a change that arrives while a read is under way is
not hidden by caching that read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dataplane.model import EndpointSpec, NetworkSpec, OverlayView
from dataplane.nft.compile import compile
from dataplane.nft.model import BridgeSeen, NftActual, NftDesired, NftOp, TableShape
from dataplane.nft.monitor import AddrEvent, NftEvent
from dataplane.nft.rules import shape
from dataplane.nft.target import TABLES_MAX_AGE, NftTarget

A = "a" * 64


class CountingKernel:
    """Stands in for NftKernel: the desired state is what the kernel holds."""

    netns = None

    def __init__(self) -> None:
        self.table_reads = 0
        self.during_read: Callable[[], object] | None = None

    def read(self, desired: NftDesired, tables: Mapping[str, TableShape] | None = None) -> NftActual:
        if tables is None:
            self.table_reads += 1
            if self.during_read is not None:
                self.during_read()
            tables = {t.family: shape(t) for t in desired.tables}
        return NftActual({b.bridge: BridgeSeen(b.mac, frozenset(b.addresses)) for b in desired.bridges},
                         dict(tables), dict.fromkeys(desired.sysctls, "1"))

    def apply(self, ops: list[NftOp]) -> Any:
        return None


def desired() -> NftDesired:
    local = EndpointSpec(A, "1" * 64, "02:42:0a:00:00:05", "10.1.0.5", None, "me", "192.0.2.1", local=True,
                         ifname_host="ov-x")
    return compile(OverlayView((NetworkSpec(A, 5000, None, ("10.1.0.0/24",)),), (local,), "192.0.2.1",
                               owner_alive={}))


def target(kernel: CountingKernel, now: list[float], *, monitored: bool = True) -> NftTarget:
    t = NftTarget(kernel, blocking=False, clock=lambda: now[0])  # type: ignore[arg-type]
    if monitored:
        t._monitored = True  # what open_monitor sets (it opens real netlink sockets)
    return t


def test_idle_passes_read_the_tables_once() -> None:
    k, now = CountingKernel(), [0.0]
    t, d = target(k, now), desired()
    first = t.read(d)
    for i in range(10):
        now[0] = i * 5.0
        assert t.read(d) == first
    assert k.table_reads == 1 and t.table_reads == 1


def test_whatever_may_change_the_tables_makes_the_next_pass_read_them() -> None:
    k, now = CountingKernel(), [0.0]
    t, d = target(k, now), desired()
    t.read(d)
    t.apply([])
    t.read(d)
    assert k.table_reads == 2  # after an apply
    assert t.diverges(d, NftEvent("inet", "overlay_agent"))
    t.read(d)
    assert k.table_reads == 3  # an operator (or our own apply) touched our table
    assert not t.diverges(d, NftEvent("ip", "overlay_agent"))
    assert not t.diverges(d, AddrEvent("ov-br-5000", "10.1.0.1/24", True))
    t.read(d)
    assert k.table_reads == 3  # nothing about our tables
    t.invalidate()  # what the monitor calls when events were lost (on_lost)
    t.read(d)
    assert k.table_reads == 4
    now[0] = TABLES_MAX_AGE + 1  # the periodic full read
    t.read(d)
    assert k.table_reads == 5


def test_without_a_monitor_every_pass_reads() -> None:
    k, now = CountingKernel(), [0.0]
    t, d = target(k, now, monitored=False), desired()
    for _ in range(3):
        t.read(d)
    assert k.table_reads == 3


def test_a_change_during_a_read_is_not_cached_away() -> None:
    k, now = CountingKernel(), [0.0]
    t, d = target(k, now), desired()
    k.during_read = lambda: t.diverges(d, NftEvent("bridge", "overlay_agent"))
    t.read(d)
    k.during_read = None
    t.read(d)
    assert k.table_reads == 2


def test_nothing_wanted_and_nothing_held_reads_nothing() -> None:
    k, now = CountingKernel(), [0.0]
    t = target(k, now)
    empty = NftDesired()
    t.read(empty)
    t.read(empty)
    assert k.table_reads == 1
