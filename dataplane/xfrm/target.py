"""IPsec SAs and policies as a target of the generic reconciler.

Owns: ``XfrmTarget``, which binds the XFRM side's steps for
``dataplane.reconciler.Reconciler``: ``compile`` (``XfrmView`` -> ``XfrmDesired``),
``read`` (dump both databases), ``plan`` and its ``additive`` filter, ``apply``
(batched requests), and the socket's life: opened on first use, replaced after a
socket error, closed in ``close``. A host that wants nothing and held nothing at its
last read-back is not read at all, so an agent without encrypted networks never opens
a NETLINK_XFRM socket after its first pass. There is no monitor: periodic resyncs
repair objects removed behind our back.
Does not: decide when to run (the reconciler), derive keys or pick peers (the agent
and ``crypto.ipsec``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dataplane.xfrm.codec import Request
from dataplane.xfrm.compile import compile as compile_view
from dataplane.xfrm.kernel import XfrmApplier, XfrmSocket
from dataplane.xfrm.model import REQID, XfrmActual, XfrmDesired, XfrmError, XfrmView
from dataplane.xfrm.plan import additive, ours, plan

NOTHING = XfrmActual()


@dataclass(slots=True)
class XfrmOutcome:
    """What one ``apply`` did: requests sent, and the ones the kernel refused."""

    applied: int = 0
    errors: list[XfrmError] = field(default_factory=list)
    lost: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and not self.lost


class XfrmTarget:
    """See the module docstring. ``open_socket`` opens the kernel side (a fake in tests)."""

    def __init__(
        self,
        open_socket: Callable[[], XfrmApplier] = XfrmSocket.open,
        *,
        blocking: bool = True,
        reqid: int = REQID,
    ) -> None:
        self.open_socket = open_socket
        self.blocking = blocking
        self.reqid = reqid
        self.held: int | None = None
        """Objects of ours the last read found (None: not read yet, so read)."""
        self._sock: XfrmApplier | None = None

    def empty(self) -> XfrmDesired:
        return XfrmDesired()

    def compile(self, source: XfrmView) -> XfrmDesired:
        return compile_view(source)

    def read(self, desired: XfrmDesired) -> XfrmActual:
        if desired.empty and self.held == 0:
            return NOTHING  # nothing wanted, nothing held: leave the kernel alone
        sock = self._socket()
        try:
            actual = XfrmActual(tuple(sock.dump_states()), tuple(sock.dump_policies()))
        except OSError:
            self._reset()
            raise
        self.held = sum(1 for s in actual.states if s.state.reqid == self.reqid) + sum(
            1 for p in actual.policies if ours(p, self.reqid)
        )
        return actual

    def plan(self, desired: XfrmDesired, actual: XfrmActual) -> list[Request]:
        return plan(desired, actual, self.reqid)

    def additive(self, ops: list[Request]) -> list[Request]:
        return additive(ops)

    def apply(self, ops: list[Request]) -> XfrmOutcome:
        sock = self._socket()
        try:
            results = sock.apply(ops)
        except OSError:
            self._reset()
            raise
        return XfrmOutcome(len(ops), [e for e in results if e is not None])

    def open_monitor(self) -> None:
        return None

    def diverges(self, desired: XfrmDesired, event: Any) -> bool:
        return False

    def problems(self, desired: XfrmDesired) -> list[str]:
        return []

    def report(self, desired: XfrmDesired, actual: XfrmActual) -> dict[str, Any]:
        ours_now = {(s.state.dst, s.state.spi) for s in actual.states if s.state.reqid == self.reqid}
        want = {(s.dst, s.spi) for s in desired.states}
        return {"xfrm": {"states": {"desired": len(want), "kernel": len(ours_now),
                                    "missing": len(want - ours_now), "extra": len(ours_now - want)}}}

    def close(self) -> None:
        self._reset()

    def _socket(self) -> XfrmApplier:
        if self._sock is None:
            self._sock = self.open_socket()
        return self._sock

    def _reset(self) -> None:
        """Close the socket; the next call opens a fresh one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
