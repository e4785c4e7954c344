"""VXLAN devices, bridges, FDB rows and neighbours as a target of the generic reconciler.

Owns: ``VxlanTarget``, which binds the VXLAN side's steps for
``dataplane.reconciler.Reconciler``: ``compile`` (cached: an unchanged view compiles
to the same state, which skips ~30 ms for 10k rows), the kernel's ``read``/``apply``
(``LinuxKernel`` or ``FakeKernel``), ``plan`` and its ``additive`` filter, the
netlink monitor and ``events.diverges``, and the ``agentctl dataplane`` rows
(``report.summarize``); ``VxlanReconciler``, the reconciler type that runs it. Owns
the kernel it is given (closes it in ``close``).
Does not: decide when to run (the reconciler) or what to program (compile, plan).
"""

from __future__ import annotations

from typing import Any

from dataplane.compile import compile as compile_view
from dataplane.events import KernelEvent, Monitor, diverges
from dataplane.kernel import ApplyResult, Kernel
from dataplane.model import EMPTY, OverlayView, State
from dataplane.plan import Op, additive, plan
from dataplane.reconciler import Reconciler
from dataplane.report import summarize


class VxlanTarget:
    """See the module docstring. ``prefix`` follows the views it compiles."""

    def __init__(self, kernel: Kernel) -> None:
        from dataplane.kernel import LinuxKernel  # the fake needs neither pyroute2 nor rtnl

        self.kernel = kernel
        self.blocking = isinstance(kernel, LinuxKernel)
        self.prefix = "ov-"
        self._compiled: tuple[OverlayView, State] | None = None
        self._planned: tuple[State, State] | None = None

    def empty(self) -> State:
        return EMPTY

    def compile(self, source: OverlayView) -> State:
        self.prefix = source.prefix
        kernel_prefix = getattr(self.kernel, "prefix", source.prefix)
        if kernel_prefix != source.prefix:
            raise ValueError(
                f"device prefix {source.prefix!r} differs from the kernel's {kernel_prefix!r}"
            )
        last = self._compiled
        if last is not None and (source is last[0] or source == last[0]):
            return last[1]
        desired = compile_view(source)
        self._compiled = (source, desired)
        return desired

    def read(self, desired: State) -> State:
        return self.kernel.read(desired)

    def forget(self) -> None:
        """The next read reads everything (``LinuxKernel.forget``; the reconciler's
        start, periodic resync and retries)."""
        forget = getattr(self.kernel, "forget", None)
        if forget is not None:
            forget()

    def plan(self, desired: State, actual: State) -> list[Op]:
        # The same desired state against the same read (``LinuxKernel`` returns the
        # same object while its mirror saw no change) plans to the same nothing: a pass
        # after table changes that moved nothing of ours costs no comparison of 20,000
        # rows. Only an empty plan is remembered (a non-empty one gets applied, which
        # changes the kernel, hence the read).
        last = self._planned
        if last is not None and last[0] is desired and last[1] is actual:
            return []
        ops = plan(desired, actual, self.prefix)
        self._planned = (desired, actual) if not ops else None
        return ops

    def additive(self, ops: list[Op]) -> list[Op]:
        return additive(ops)

    def apply(self, ops: list[Op]) -> ApplyResult:
        return self.kernel.apply(ops)

    def open_monitor(self) -> Monitor | None:
        opener = getattr(self.kernel, "open_monitor", None)
        return opener() if opener is not None else None

    def diverges(self, desired: State, event: KernelEvent) -> bool:
        return diverges(desired, event, self.prefix)

    def problems(self, desired: State) -> list[str]:
        return list(desired.problems)

    def report(self, desired: State, actual: State) -> dict[str, Any]:
        return {"networks": summarize(desired, actual)}

    def close(self) -> None:
        self.kernel.close()


VxlanReconciler = Reconciler[OverlayView, State, State, Op]
"""The reconciler that runs a ``VxlanTarget`` (construct it with one and a view source)."""
