"""Kernel change notifications, and the test that says whether one needs a reconcile.

Owns: the event values a kernel monitor yields (``LinkEvent``, ``FdbEvent``,
``NeighEvent``; ``None`` from a monitor means "events were lost, resync"), the
``Monitor`` protocol, and ``diverges``: does this event move the kernel away from
the desired state? Our own writes echo back as events that agree with the desired
state, so they never trigger work; an operator deleting or changing one of our
entries, or a device of ours appearing/vanishing/changing, does.
Does no I/O (``monitor.py`` reads netlink, ``fake.py`` emits fake events).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dataplane.model import ZERO_MAC, Link, State
from dataplane.naming import owned_kind


@dataclass(frozen=True, slots=True)
class LinkEvent:
    name: str
    link: Link | None
    """The link as it is now; None when it was deleted."""


@dataclass(frozen=True, slots=True)
class FdbEvent:
    device: str
    mac: str
    dst: str
    present: bool
    """True: the row (permanent, NTF_SELF) exists now; False: deleted or no longer ours."""


@dataclass(frozen=True, slots=True)
class NeighEvent:
    device: str
    ip: str
    mac: str | None
    """The permanent neighbour's MAC now; None when deleted or no longer permanent."""


KernelEvent = LinkEvent | FdbEvent | NeighEvent


class Monitor(Protocol):
    """A source of kernel events, used from the trio thread."""

    async def next_events(self) -> Sequence[KernelEvent] | None:
        """The next batch of events; None when some were lost (caller must resync)."""
        ...

    def close(self) -> None: ...


def _link_differs(want: Link, have: Link, check_kind: bool) -> bool:
    if have.mtu != want.mtu or have.master != want.master or (want.up and not have.up):
        return True
    if check_kind and have.kind != want.kind:
        return True
    return want.vxlan is not None and have.vxlan is not None and have.vxlan != want.vxlan


def diverges(desired: State, event: KernelEvent, prefix: str) -> bool:
    """True if ``event`` shows the kernel differing from ``desired`` on our objects."""
    if isinstance(event, LinkEvent):
        want = desired.links.get(event.name)
        if want is not None:
            return event.link is None or _link_differs(want, event.link, True)
        port = desired.ports.get(event.name)
        if port is not None:
            return event.link is not None and _link_differs(port, event.link, False)
        # One of our names that should not exist (stale or made by someone else).
        return event.link is not None and owned_kind(event.name, prefix) is not None
    if event.device not in desired.links:
        return False
    if isinstance(event, FdbEvent):
        if event.mac == ZERO_MAC:
            return ((event.device, event.dst) in desired.flood) != event.present
        want_dst = desired.fdb.get((event.device, event.mac))
        if not event.present:
            return want_dst is not None
        return want_dst != event.dst
    want_mac = desired.neigh.get((event.device, event.ip))
    if event.mac is None:
        return want_mac is not None
    return want_mac != event.mac
