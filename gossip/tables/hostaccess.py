"""Host access: each host's own address in a network, published as an endpoint row.

Owns: the identity of a host endpoint (id, name and MAC derived from the network and
the node, so a restarted host writes the same row again), and the rule of which host
endpoints a node should hold (``wanted``). Pure functions.
Does not: allocate (``blocks``), write rows (``replica``) or program anything
(``dataplane.nft`` puts the address on the bridge and rewrites MACs).

Why a row (docs/dataplane.md, "Host access"): the gateway address is the same on every
host, so a remote container's reply to it would stay on its own host. A host that takes
part in a network with host access (``NetworkOptions.host_access``) holds one address of
the network, allocated by IPAM like a container's, and publishes it as an endpoint row
it owns; every other host programs the FDB row and neighbour entry for it like for any
endpoint (release 0.1.0 hosts too: the row has the ordinary shape). The row is not one
of the node's local endpoints (``Tables.local_endpoints``: no veth, not persisted) and
the node does not show its own (``Tables.endpoints``); peers show it, named
``host-<node>``. It goes with the node's last local endpoint of the network.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping

from gossip.tables.rows import Endpoint, Network

_BAD = re.compile(r"[^A-Za-z0-9_.-]")


def endpoint_id(net: str, node: str) -> str:
    return hashlib.sha256(f"overlay-host\0{net}\0{node}".encode()).hexdigest()


def name(node: str) -> str:
    """``host-<node>``, with characters an endpoint name cannot hold replaced by '-'."""
    return ("host-" + _BAD.sub("-", node))[:64]


def mac(net: str, node: str) -> str:
    """``0a:`` + 5 bytes of the id: locally administered unicast, never Docker's ``02:42``
    nor a gateway's ``06:``."""
    raw = bytes.fromhex(endpoint_id(net, node))[:5]
    return ":".join(f"{b:02x}" for b in b"\x0a" + raw)


def wanted(
    joined: Iterable[str], networks: Callable[[str], Network | None], has_local: Callable[[str], bool],
    held: Mapping[str, Endpoint],
) -> tuple[list[Network], list[str]]:
    """(networks that need a host endpoint, networks whose host endpoint must go): one for
    every network the node takes part in, with local endpoints and host access on."""
    add: list[Network] = []
    keep: set[str] = set()
    for net_id in joined:
        net = networks(net_id)
        if net is None or not has_local(net_id) or net.options is None or not net.options.host_access:
            continue
        keep.add(net_id)
        if net_id not in held:
            add.append(net)
    return add, sorted(n for n in held if n not in keep)
