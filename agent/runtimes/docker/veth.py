"""The veth pair of a Docker endpoint, made in the agent's own namespace.

Docker's remote driver contract differs from ``agentctl endpoint create``: the driver
makes both ends on the host and names the container side in Join's reply
(``InterfaceName.SrcName``); dockerd moves that end into the sandbox, renames it
(``DstPrefix`` + a number) and puts the address from CreateEndpoint on it. So the
container side is created here with its MAC and MTU, down and without an address; the
host side (named ``agent.overlay.veths.host_ifname``) is brought up for the reconciler
to attach to the network's bridge.

Owns: the container-side name (``peer_ifname``), creating the pair all-or-nothing
(``build``, the callable ``Overlay.create_endpoint_with`` runs in a worker thread).
Does not: delete pairs (``Overlay.remove_endpoint`` deletes the host side, which takes
the peer with it wherever it is) or publish rows.
"""

from __future__ import annotations

import contextlib
from typing import Any

from agent.overlay.veths import IFNAMSIZ, PlumbError
from gossip.tables.rows import Endpoint, Network

PEER_PREFIX = "ovd"
"""Not the agent's device prefix (``ov-``): the dataplane must never adopt or delete it."""


def peer_ifname(endpoint_id: str) -> str:
    return PEER_PREFIX + endpoint_id[: IFNAMSIZ - len(PEER_PREFIX)]


def _reason(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        import os

        return os.strerror(code)
    return " ".join(str(exc).split()) or type(exc).__name__


def build(ep: Endpoint, net: Network, host_ifname: str, mtu: int) -> dict[str, Any]:
    """Make ``host_ifname`` (up) and its peer ``peer_ifname(ep.id)`` (down, MAC, MTU).
    Blocking (pyroute2); PlumbError with one line; nothing is left on failure."""
    from pyroute2 import IPRoute  # only where interfaces are made

    peer = peer_ifname(ep.id)
    ipr = IPRoute()
    try:
        for name in (host_ifname, peer):
            if ipr.link_lookup(ifname=name):
                raise PlumbError(f"interface {name} already exists on this host")
        try:
            ipr.link("add", ifname=host_ifname, kind="veth", mtu=mtu,
                     peer={"ifname": peer, "address": ep.mac, "mtu": mtu})
            ipr.link("set", ifname=host_ifname, state="up")
        except Exception as exc:
            with contextlib.suppress(Exception):
                ipr.link("del", ifname=host_ifname)
            raise PlumbError(f"cannot create the veth pair {host_ifname}/{peer}: {_reason(exc)}") from None
    finally:
        ipr.close()
    return {"netns": None, "ifname": peer, "runtime": "docker", "network": net.id}


def exists(name: str) -> bool:
    """Whether an interface of that name is in the agent's namespace (blocking)."""
    from pyroute2 import IPRoute

    ipr = IPRoute()
    try:
        return bool(ipr.link_lookup(ifname=name))
    finally:
        ipr.close()
