"""The gateway, egress and isolation side as a target of the generic reconciler.

Owns: ``NftTarget``, which binds this package's steps for
``dataplane.reconciler.Reconciler``: ``compile`` (the same ``OverlayView`` the VXLAN
target compiles, cached), ``read``/``apply`` (``NftKernel``), ``plan`` and its
``additive`` filter, the monitor (``NftMonitor``) and ``diverges``, problems and the
``agentctl dataplane`` section. A host that wants nothing and held nothing at its last
read is not read at all (no nft process on an agent without networks).

Our nft tables are read with one ``nft`` process per family, so their shapes are kept
between passes (every table change pokes a pass: without the cache an idle agent with
networks spawned processes on each gossip-driven change, which starved agents on a
slow CPU). The cache is dropped, and the next pass reads them again, when a pass
applied anything, when the monitor reports a change to a table of ours or lost
events, when no monitor runs, and once it is ``TABLES_MAX_AGE`` old (the periodic
full read that catches whatever a monitor cannot see). Bridges and sysctls are read
on every pass (netlink and /proc: no process).
Does not: decide when to run (the reconciler) or what to program (compile, plan).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dataplane.model import OverlayView
from dataplane.nft.compile import compile as compile_view
from dataplane.nft.kernel import NftKernel, NftOutcome
from dataplane.nft.model import FAMILIES, NftActual, NftDesired, NftOp, TableShape
from dataplane.nft.monitor import AddrEvent, MacEvent, NftEvent, NftMonitor
from dataplane.nft.plan import additive, plan
from dataplane.nft.rules import shape
from dataplane.reconciler import Reconciler

NOTHING = NftActual()
TABLES_MAX_AGE = 60.0
"""Seconds a cached read of our nft tables is trusted (the reconciler's default resync
interval: a resync reads them again)."""


class NftTarget:
    def __init__(self, kernel: NftKernel, *, blocking: bool = True,
                 clock: Callable[[], float] = time.monotonic, tables_max_age: float = TABLES_MAX_AGE) -> None:
        self.kernel = kernel
        self.blocking = blocking
        self.prefix = "ov-"
        self.held: bool | None = None
        """Whether the last read found anything of ours (None: not read yet)."""
        self._compiled: tuple[OverlayView, NftDesired] | None = None
        self._clock = clock
        self.tables_max_age = tables_max_age
        self._tables: tuple[float, dict[str, TableShape]] | None = None
        """(when, shapes) of the last read of our nft tables; None: read them next time."""
        self._generation = 0
        """Bumped by every invalidation (from the trio thread), so a read that was under
        way in the worker thread when the kernel changed is not cached."""
        self._monitored = False
        self.table_reads = 0
        """How many times our tables were read with ``nft`` (tests, status)."""

    def invalidate(self) -> None:
        """Read our nft tables again on the next pass."""
        self._generation += 1
        self._tables = None

    def _cached_tables(self) -> dict[str, TableShape] | None:
        cached = self._tables
        if cached is None or not self._monitored or self._clock() - cached[0] >= self.tables_max_age:
            return None
        return cached[1]

    def empty(self) -> NftDesired:
        return NftDesired()

    def compile(self, source: OverlayView) -> NftDesired:
        self.prefix = source.prefix
        last = self._compiled
        if last is not None and (source is last[0] or source == last[0]):
            return last[1]
        desired = compile_view(source)
        self._compiled = (source, desired)
        return desired

    def read(self, desired: NftDesired) -> NftActual:
        if desired.empty and self.held is False:
            return NOTHING
        tables = self._cached_tables()
        if tables is not None:
            actual = self.kernel.read(desired, tables)
        else:
            generation, at = self._generation, self._clock()
            actual = self.kernel.read(desired)
            self.table_reads += 1
            if generation == self._generation:
                self._tables = (at, dict(actual.tables))
        self.held = bool(actual.tables) or any(actual.bridges.values())
        return actual

    def plan(self, desired: NftDesired, actual: NftActual) -> list[NftOp]:
        return plan(desired, actual)

    def additive(self, ops: list[NftOp]) -> list[NftOp]:
        return additive(ops)

    def apply(self, ops: list[NftOp]) -> NftOutcome:
        self.held = None  # read again next time, whatever was done
        self.invalidate()
        return self.kernel.apply(ops)

    def open_monitor(self) -> NftMonitor:
        monitor = NftMonitor(self.kernel.netns, self.prefix, on_lost=self.invalidate)
        self._monitored = True
        return monitor

    def diverges(self, desired: NftDesired, event: Any) -> bool:
        if isinstance(event, NftEvent):
            if event.family in FAMILIES:
                self.invalidate()
                return True
            return False
        wanted = next((b for b in desired.bridges if b.bridge == getattr(event, "device", None)), None)
        if wanted is None:
            return False
        if isinstance(event, MacEvent):
            return event.mac is not None and event.mac != wanted.mac
        if isinstance(event, AddrEvent):
            return event.present != (event.address in wanted.addresses) and not (
                event.present and event.address.startswith("fe80:"))
        return False

    def problems(self, desired: NftDesired) -> list[str]:
        return list(desired.problems)

    def report(self, desired: NftDesired, actual: NftActual) -> dict[str, Any]:
        gateways = []
        for b in desired.bridges:
            seen = actual.bridges.get(b.bridge)
            gateways.append({
                "bridge": b.bridge, "network": b.network_id, "mac": b.mac, "addresses": list(b.addresses),
                "present": seen is not None,
                "in_sync": seen is not None and seen.mac == b.mac and set(b.addresses) <= seen.addresses,
            })
        tables = {t.family: actual.tables.get(t.family) == shape(t) for t in desired.tables}
        return {"gateways": gateways, "nft_tables": {
            "desired": [t.family for t in desired.tables], "kernel": sorted(actual.tables),
            "in_sync": all(tables.values()) and set(actual.tables) <= set(tables)},
            "sysctls": dict(actual.sysctls)}

    def close(self) -> None:
        self.kernel.close()


NftReconciler = Reconciler[OverlayView, NftDesired, NftActual, NftOp]
