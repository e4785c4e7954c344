"""What the parts of ``Overlay`` share: its state and the calls they make on one another.

Owns: the declarations (types only) of the attributes ``Overlay.__init__`` sets and the
mixins (``agent.overlay.endpoints``, ``record``, ``report``) read, and the signatures of
the methods one part calls on another (defined in ``Overlay`` or in a mixin, which come
before this class in ``Overlay``'s method order).
Also the names and one-line summaries of the layer's control ops (``OPS``): the server
lists them before their code loads (``Overlay.setup``).
Does not: hold behaviour (every method here is defined for real elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import trio

    from agent.limits import Limits
    from agent.overlay.veths import Plumber
    from agent.runtime import Runtime
    from dataplane.nft.target import NftReconciler
    from dataplane.target import VxlanReconciler
    from gossip.effects import Effect
    from gossip.tables.replica import Tables
    from gossip.tables.rows import Endpoint, Network


OPS: dict[str, str] = {
    "network": "overlay networks: create, ls, inspect, rm",
    "endpoint": "endpoints (veths in container namespaces): create, ls, rm",
    "dataplane": "kernel state vs desired state, last reconcile",
    "cni": "CNI attachments (overlay-cni): add, del, check, gc, status",
}
"""The layer's control ops: ``agent.overlay.ops`` (the first three) and
``agent.runtimes.cni.attachments`` (``cni``) make them with these summaries."""


class OverlayBase:
    """See the module docstring."""

    tables: Tables | None
    rt: Runtime | None
    rec: VxlanReconciler | None
    gw: NftReconciler | None
    plumber: Plumber
    prefix: str
    dataplane: bool
    vtep: str
    underlay_mtu: int
    underlay_source: str
    limits: Limits
    interfaces: dict[str, dict[str, Any]]
    """Endpoint id -> {"netns", "ifname", "host_ifname", ...} of local endpoints."""
    kept: set[str]
    _lock: trio.Lock
    _started: trio.Event
    _restore_notes: list[str]
    _record_problem: str | None
    _ep_dicts: dict[str, tuple[Endpoint, dict[str, Any]]]

    async def _table_call(self, fn: Callable[[Tables, float], tuple[Any, Sequence[Effect]]]) -> Any:
        raise NotImplementedError  # Overlay

    async def ensure_dataplane(self) -> None:
        raise NotImplementedError  # Overlay

    async def read(self, fn: Callable[[Tables], Any]) -> Any:
        raise NotImplementedError  # Overlay

    def effective_mtu(self, net: Network) -> int:
        raise NotImplementedError  # Overlay

    async def _save(self, without: str | None = None) -> str | None:
        raise NotImplementedError  # agent.overlay.record

    async def _persist(self) -> None:
        raise NotImplementedError  # agent.overlay.record

    def _check_writable(self, what: str) -> None:
        raise NotImplementedError  # agent.overlay.record
