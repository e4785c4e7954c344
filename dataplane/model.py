"""Values of the dataplane: what the cluster says (input) and what the kernel holds (State).

Owns: the plain, immutable input type of ``compile`` (``OverlayView`` with its
``NetworkSpec``/``EndpointSpec`` rows) and the kernel-state model shared by
``compile`` (desired), the kernel adapters (actual) and ``plan`` (the diff).
Does not decide anything: no validation beyond types, no I/O.

Canonical forms (both sides of a diff must spell a value the same way, because
``plan`` compares with ``==``): MAC addresses are lower-case ``aa:bb:cc:dd:ee:ff``;
IP addresses are what ``socket.inet_ntop`` prints (``canonical_ip``), which is
also what the kernel dump parser produces.

State layout (one entry per kernel object; dict keys are the kernel's own keys,
so a cache keyed by a convenient field cannot fight the kernel, as Calico's did in
projectcalico/calico#9450):

* ``links``: our bridges and VXLAN devices, by name.
* ``ports``: endpoint (host-side veth) interfaces we attach to our bridges, by name.
* ``fdb``: unicast VXLAN FDB, ``(vxlan device, MAC) -> VTEP`` (NTF_SELF, permanent;
  the kernel keeps one destination per unicast MAC).
* ``flood``: all-zero-MAC FDB rows, ``(vxlan device, VTEP) -> True`` (head-end
  replication list; many destinations per device).
* ``neigh``: permanent neighbours on the VXLAN device, ``(vxlan device, IP) -> MAC``.

Dicts, not sets: iteration order is insertion order, which keeps ``plan``'s output
deterministic (string hashing is randomised per process).
"""

from __future__ import annotations

import functools
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

ZERO_MAC = "00:00:00:00:00:00"


# -- input: what the replicated tables say -------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """One overlay network (a row of the networks table)."""

    id: str
    vni: int
    mtu: int | None = None
    """Overlay MTU set by the network; None = derived from the underlay."""
    subnets: tuple[str, ...] = ()
    encrypted: bool = False
    internal: bool = False
    """No egress (``--internal``): nothing from the network leaves its bridge routed."""
    gateways: tuple[str, ...] = ()
    """The gateway address of each subnet, in ``subnets``' order (``--gateway``);
    empty: each subnet's first address after the network's."""
    host_addresses: tuple[str, ...] = ()
    """This host's own addresses in the network (host access; docs/dataplane.md)."""
    host_mac: str | None = None
    """The MAC of this host's endpoint row, which its frames carry on the underlay."""


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One endpoint (a row of the endpoints table), local or remote."""

    network_id: str
    id: str
    mac: str
    ipv4: str | None
    ipv6: str | None
    owner: str
    """Member name of the host that published the row."""
    vtep: str
    """Underlay address of the owner (its VXLAN tunnel endpoint)."""
    local: bool = False
    """True for this host's own endpoints."""
    ifname_host: str | None = None
    """Host-side interface (veth) of a local endpoint, attached to the bridge."""
    version: int = 0
    """Lamport time of the row: duplicate MAC/IP claims go to the highest (version, owner, id)."""


@dataclass(frozen=True, slots=True)
class OverlayView:
    """Everything ``compile`` needs: the tables, membership and local configuration."""

    networks: tuple[NetworkSpec, ...]
    endpoints: tuple[EndpointSpec, ...]
    local_vtep: str
    underlay_mtu: int = 1500
    vxlan_port: int = 4789
    owner_alive: Mapping[str, bool] = field(default_factory=dict)
    """Member name -> alive. Remote rows of owners missing here or not alive are ignored."""
    prefix: str = "ov-"
    """Name prefix of every device we own (``<prefix>br-<vni>``, ``<prefix>vx-<vni>``)."""


# -- output: kernel state ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VxlanConf:
    """VXLAN attributes that can only be chosen at creation (a change means re-create)."""

    vni: int
    local: str
    port: int = 4789
    learning: bool = False
    proxy: bool = True


@dataclass(frozen=True, slots=True)
class Link:
    """A network interface as far as we care about it.

    ``kind`` is the rtnetlink link kind ("bridge", "vxlan", "veth", ... or "" when the
    kernel reports none). ``master`` is the name of the bridge the link is a port of.
    """

    name: str
    kind: str
    mtu: int
    master: str | None = None
    up: bool = True
    vxlan: VxlanConf | None = None


FdbKey = tuple[str, str]
"""(VXLAN device name, MAC)."""
FloodKey = tuple[str, str]
"""(VXLAN device name, VTEP address)."""
NeighKey = tuple[str, str]
"""(VXLAN device name, IP address)."""


@dataclass(frozen=True, slots=True, eq=True)
class State:
    """Kernel state restricted to what the dataplane manages (see module docstring)."""

    links: Mapping[str, Link] = field(default_factory=dict)
    ports: Mapping[str, Link] = field(default_factory=dict)
    fdb: Mapping[FdbKey, str] = field(default_factory=dict)
    flood: Mapping[FloodKey, bool] = field(default_factory=dict)
    neigh: Mapping[NeighKey, str] = field(default_factory=dict)
    problems: tuple[str, ...] = field(default=(), compare=False)
    """Human-readable reasons input was ignored (desired state only)."""
    networks: Mapping[str, str] = field(default_factory=dict, compare=False)
    """VXLAN device name -> network id (desired state only; for reports)."""

    __hash__ = None  # type: ignore[assignment]  # holds dicts

    def entry_count(self) -> int:
        return len(self.fdb) + len(self.flood) + len(self.neigh)


EMPTY = State()


# -- canonical spellings ---------------------------------------------------------------------


# Table rows repeat from one reconcile to the next: memoise the spellings (bounded).
@functools.lru_cache(maxsize=1 << 17)
def canonical_ip(text: str) -> str:
    """The kernel-dump spelling of an IP address; ValueError if it is not one.

    Accepts an optional ``/prefixlen`` (endpoint rows often carry one).
    """
    addr = text.split("/", 1)[0].strip()
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, addr))
    except OSError:
        raise ValueError(f"not an IP address: {text!r}") from None


def is_ipv6(addr: str) -> bool:
    return ":" in addr


_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


@functools.lru_cache(maxsize=1 << 17)
def canonical_mac(text: str) -> str:
    """Lower-case colon form of a 48-bit MAC (``-`` separators accepted); ValueError otherwise."""
    raw = text.strip().lower().replace("-", ":")
    if not _MAC.fullmatch(raw):
        raise ValueError(f"not a MAC address: {text!r}")
    return raw
