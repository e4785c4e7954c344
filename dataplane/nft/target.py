"""The gateway, egress and isolation side as a target of the generic reconciler.

Owns: ``NftTarget``, which binds this package's steps for
``dataplane.reconciler.Reconciler``: ``compile`` (the same ``OverlayView`` the VXLAN
target compiles, cached), ``read``/``apply`` (``NftKernel``), ``plan`` and its
``additive`` filter, the monitor (``NftMonitor``) and ``diverges``, problems and the
``agentctl dataplane`` section. A host that wants nothing and held nothing at its last
read is not read at all (no nft process on an agent without networks).
Does not: decide when to run (the reconciler) or what to program (compile, plan).
"""

from __future__ import annotations

from typing import Any

from dataplane.model import OverlayView
from dataplane.nft.compile import compile as compile_view
from dataplane.nft.kernel import NftKernel, NftOutcome
from dataplane.nft.model import FAMILIES, NftActual, NftDesired, NftOp
from dataplane.nft.monitor import AddrEvent, MacEvent, NftEvent, NftMonitor
from dataplane.nft.plan import additive, plan
from dataplane.nft.rules import shape
from dataplane.reconciler import Reconciler

NOTHING = NftActual()


class NftTarget:
    def __init__(self, kernel: NftKernel, *, blocking: bool = True) -> None:
        self.kernel = kernel
        self.blocking = blocking
        self.prefix = "ov-"
        self.held: bool | None = None
        """Whether the last read found anything of ours (None: not read yet)."""
        self._compiled: tuple[OverlayView, NftDesired] | None = None

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
        actual = self.kernel.read(desired)
        self.held = bool(actual.tables) or any(actual.bridges.values())
        return actual

    def plan(self, desired: NftDesired, actual: NftActual) -> list[NftOp]:
        return plan(desired, actual)

    def additive(self, ops: list[NftOp]) -> list[NftOp]:
        return additive(ops)

    def apply(self, ops: list[NftOp]) -> NftOutcome:
        self.held = None  # read again next time, whatever was done
        return self.kernel.apply(ops)

    def open_monitor(self) -> NftMonitor:
        return NftMonitor(self.kernel.netns, self.prefix)

    def diverges(self, desired: NftDesired, event: Any) -> bool:
        if isinstance(event, NftEvent):
            return event.family in FAMILIES
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
