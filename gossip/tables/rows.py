"""Row schemas of the replicated tables and their compact msgpack encoding.

Owns: the value types the agent sees (``Network``, ``Endpoint``, ``Conflict``),
the stored row types with their version (``NetworkRow``, ``MemberRow``,
``ClaimRow``, ``EndpointRow``), the one last-writer-wins order (``newer``) and
the bytes of one row on the wire. Does not: decide what a row means for
visibility, scoping or IPAM (``replica.py``, ``visibility.py``, ``ipam.py``), frame messages
(``framing.py``).

Four kinds of rows, each keyed and versioned by ``(lamport, writer)``:

* network  key (net id)                      any node writes (create, delete)
* member   key (net id, node)                only ``node`` writes: join/leave of a network
* claim    key (net id, family, block, node) only ``node`` writes: an IPAM block claim
* endpoint key (net id, owner, endpoint id)  only ``owner`` writes

Deleted rows are tombstones carrying a residual lifetime on the wire (like
networkdb's ResidualReapTime) so that a tombstone cannot ping-pong forever
between nodes that reap at different times.

Wire form (msgpack arrays, ids as raw bytes):
``[kind, lamport, writer, id, deleted, residual-seconds | payload, *extra]``.
Endpoint rows travel only inside a network-scoped message and omit the
network id. Reference: docs/tables.md.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

import msgpack

from gossip.errors import DecodeError


class TableError(ValueError):
    """Bad input to a table operation; the message is one line for the operator."""


class Kind(IntEnum):
    NETWORK = 0
    MEMBER = 1
    CLAIM = 2
    ENDPOINT = 3


MAX_LAMPORT = (1 << 63) - 1
MAX_RESIDUAL = 10 * 365 * 24 * 3600
ID_BYTES = 32

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_HEX_ID_RE = re.compile(r"^[0-9a-f]{64}\Z")


# --------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Network:
    """A cluster-wide overlay network; identical on every node."""

    id: str
    """64 lowercase hex characters (like Docker's network ids)."""
    name: str
    subnets: tuple[str, ...]
    """At most one IPv4 and one IPv6 CIDR, in that order."""
    vni: int
    encrypted: bool
    mtu: int | None
    """Set by the operator; None: the dataplane derives it from the underlay MTU
    (minus VXLAN and, for encrypted networks, ESP overhead)."""
    created_at: float
    """Creation time as given by the creator (the agent passes wall-clock seconds)."""
    creator: str
    created: int
    """Lamport time of the creation: the precedence of concurrent conflicting creates."""
    options: NetworkOptions | None = None
    """What the network row of release 0.1.0 cannot carry (``gossip.tables.netopts``:
    an extension row); None: a plain network (one subnet per family, defaults)."""

    @property
    def subnet_v4(self) -> str | None:
        return next((s for s in self.subnets if ":" not in s), None)

    @property
    def subnet_v6(self) -> str | None:
        return next((s for s in self.subnets if ":" in s), None)

    @property
    def pools(self) -> tuple[IpamPool, ...]:
        """Every subnet with its range, gateway and reserved addresses (v4 first, then
        as given); a plain network's subnets with their default gateways."""
        if self.options is not None and self.options.pools:
            return self.options.pools
        return tuple(IpamPool(s, None, None, ()) for s in self.subnets)

    @property
    def all_subnets(self) -> tuple[str, ...]:
        return tuple(p.subnet for p in self.pools)

    @property
    def internal(self) -> bool:
        return self.options is not None and self.options.internal

    def subnet_of(self, addr: str) -> str | None:
        """The subnet of the network holding ``addr`` (None: none does)."""
        ip = ipaddress.ip_address(addr)
        return next((p.subnet for p in self.pools if ip in ipaddress.ip_network(p.subnet)), None)

    def gateways_of(self, *addrs: str | None) -> tuple[str, ...]:
        """The gateways of the subnets holding ``addrs`` (an endpoint's default routes)."""
        mine = {self.subnet_of(a) for a in addrs if a}
        return tuple(g for s, g in self.gateways() if s in mine)

    def gateways(self) -> list[tuple[str, str]]:
        """(subnet, gateway) pairs; the gateway is ``--gateway`` or else the first address
        after the network's."""
        return [(p.subnet, p.gateway_address) for p in self.pools]


@dataclass(frozen=True, slots=True)
class IpamPool:
    """One subnet of a network, like one entry of Docker's ``IPAM.Config``."""

    subnet: str
    ip_range: str | None
    """Allocations (without an explicit address) come from here only."""
    gateway: str | None
    """None: the subnet's first address after the network's."""
    aux: tuple[tuple[str, str], ...]
    """(name, address) reserved in IPAM, never handed out (``--aux-address``)."""

    @property
    def gateway_address(self) -> str:
        if self.gateway is not None:
            return self.gateway
        return str(ipaddress.ip_network(self.subnet).network_address + 1)


@dataclass(frozen=True, slots=True)
class NetworkOptions:
    """The options of ``network create`` beyond a network row's (``netopts``)."""

    pools: tuple[IpamPool, ...] = ()
    """Every subnet (the first of each family is also in the network row); () = the row's."""
    internal: bool = False
    """No egress: nothing leaves the overlay subnets (no masquerade)."""
    allow_overlap: bool = False
    """Subnets may overlap those of other networks that allow it too."""
    labels: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, str], ...] = ()
    """Driver options passed through (``--opt``), shown by inspect."""
    host_access: bool = False
    """Each host taking part holds an address of its own in the network, published as an
    endpoint row, so it reaches containers on other hosts (``gossip.tables.hostaccess``)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint (a veth in a container) as published by its owner node."""

    id: str
    name: str
    network: str
    """Network id."""
    ipv4: str | None
    ipv6: str | None
    mac: str
    owner: str
    vtep: str
    """The owner's VTEP (underlay) address."""
    created: int
    """Lamport time of the creation: the precedence of duplicate addresses."""
    conflict: bool = False
    """Set in views only: this endpoint lost an address/MAC conflict and must not be
    programmed into the dataplane (see ``Tables.conflicts``)."""


@dataclass(frozen=True, slots=True)
class Conflict:
    """A deterministic resolution that every node computes the same way."""

    kind: str
    """network-name, network-vni, network-subnet, ipv4, ipv6 or mac."""
    network: str
    """The network id the contested value belongs to (the loser's, for network kinds)."""
    value: str
    winner: str
    """Network or endpoint id that keeps the value."""
    loser: str
    winner_node: str
    loser_node: str

    @property
    def text(self) -> str:
        if self.kind.startswith("network-"):
            what = self.kind.removeprefix("network-")
            return (
                f"network {what} {self.value} claimed twice: network {self.winner[:12]} "
                f"(created on {self.winner_node}) keeps it, network {self.loser[:12]} "
                f"(created on {self.loser_node}) is disabled"
            )
        return (
            f"duplicate {self.kind} {self.value} in network {self.network[:12]}: endpoint "
            f"{self.winner[:12]} on {self.winner_node} keeps it, endpoint {self.loser[:12]} "
            f"on {self.loser_node} is not programmed"
        )


# ----------------------------------------------------------------------- rows


@dataclass(slots=True)
class NetworkRow:
    id: str
    lamport: int
    writer: str
    deleted: bool
    value: Network | None
    """Kept on a tombstone when known locally (never sent), so a node with local
    endpoints on a deleted network can re-publish it."""
    expires: float = math.inf


@dataclass(slots=True)
class MemberRow:
    """Node ``node`` takes part in network ``net`` (deleted = it left)."""

    net: str
    node: str
    lamport: int
    deleted: bool
    vtep: str
    expires: float = math.inf

    @property
    def writer(self) -> str:
        return self.node


@dataclass(slots=True)
class ClaimRow:
    """Node ``node`` claims IPAM block ``block`` of the network's ``family`` subnet."""

    net: str
    family: int
    block: int
    node: str
    lamport: int
    deleted: bool
    expires: float = math.inf

    @property
    def writer(self) -> str:
        return self.node


@dataclass(slots=True)
class EndpointRow:
    net: str
    owner: str
    id: str
    lamport: int
    deleted: bool
    value: Endpoint | None
    expires: float = math.inf
    since: float = 0.0
    """Local time this version was stored (reaping of rows nobody vouches for)."""

    @property
    def writer(self) -> str:
        return self.owner


AnyRow = NetworkRow | MemberRow | ClaimRow | EndpointRow


def newer(a: AnyRow, b: AnyRow) -> bool:
    """Whether ``a`` supersedes ``b`` (same key): the one LWW order of every table.

    Order: Lamport time, then writer, then tombstone over live, then the encoded
    content (a restarted owner may reuse a Lamport time with other content).
    A total order, so merging is commutative, associative and idempotent.
    """
    if a.lamport != b.lamport:
        return a.lamport > b.lamport
    if a.writer != b.writer:
        return a.writer > b.writer
    if a.deleted != b.deleted:
        return a.deleted
    # Same version: almost always a duplicate receipt of the same row. Equal values
    # encode equally, so only rows whose values differ are encoded to break the tie.
    if a.deleted or _same_value(a, b):
        return False
    return _content(a) > _content(b)


def _same_value(a: AnyRow, b: AnyRow) -> bool:
    """Whether the payloads are certainly equal, without encoding (False: maybe not)."""
    if isinstance(a, MemberRow):
        return isinstance(b, MemberRow) and a.vtep == b.vtep
    if isinstance(a, ClaimRow):
        return isinstance(b, ClaimRow)  # a claim's payload is constant
    if isinstance(a, NetworkRow):
        return isinstance(b, NetworkRow) and a.value == b.value
    return isinstance(b, EndpointRow) and a.value == b.value


def _content(row: AnyRow) -> bytes:
    if row.deleted:
        return b""
    return _packb(_payload(row))


# ---------------------------------------------------------------------- codec


def _packb(obj: Any) -> bytes:
    out = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(out, bytes)
    return out


def _residual(expires: float, now: float) -> int:
    if math.isinf(expires):
        return MAX_RESIDUAL
    return max(0, min(MAX_RESIDUAL, math.ceil(expires - now)))


def _ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def _payload(row: AnyRow) -> Any:
    if isinstance(row, NetworkRow):
        n = row.value
        assert n is not None
        return [n.name, list(n.subnets), n.vni, n.encrypted, n.mtu, n.created_at, n.creator, n.created]
    if isinstance(row, MemberRow):
        return _ip(row.vtep)
    if isinstance(row, ClaimRow):
        return 0
    e = row.value
    assert e is not None
    return [
        e.name,
        _ip(e.ipv4) if e.ipv4 else None,
        _ip(e.ipv6) if e.ipv6 else None,
        bytes.fromhex(e.mac.replace(":", "")),
        _ip(e.vtep),
        e.created,
    ]


def encode_row(row: AnyRow, now: float) -> bytes:
    """One row as msgpack bytes (endpoint rows without their network id)."""
    head: list[Any]
    if isinstance(row, NetworkRow):
        head = [Kind.NETWORK, row.lamport, row.writer, bytes.fromhex(row.id)]
    elif isinstance(row, MemberRow):
        head = [Kind.MEMBER, row.lamport, row.node, bytes.fromhex(row.net)]
    elif isinstance(row, ClaimRow):
        head = [Kind.CLAIM, row.lamport, row.node, bytes.fromhex(row.net)]
    else:
        head = [Kind.ENDPOINT, row.lamport, row.owner, bytes.fromhex(row.id)]
    body = _residual(row.expires, now) if row.deleted else _payload(row)
    out = [*head, row.deleted, body]
    if isinstance(row, ClaimRow):
        out += [row.family, row.block]
    return _packb(out)


def _want(cond: bool, what: str) -> None:
    if not cond:
        raise DecodeError(f"table row: bad {what}")


def _int(v: Any, lo: int, hi: int, what: str) -> int:
    _want(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi, what)
    assert isinstance(v, int)
    return v


def _text(v: Any, what: str, limit: int = 255) -> str:
    _want(isinstance(v, str) and 0 < len(v) <= limit, what)
    assert isinstance(v, str)
    return v


def _id(v: Any, what: str) -> str:
    _want(isinstance(v, bytes) and len(v) == ID_BYTES, what)
    assert isinstance(v, bytes)
    return v.hex()


def _addr(v: Any, what: str, sizes: tuple[int, ...] = (4, 16)) -> str:
    _want(isinstance(v, bytes) and len(v) in sizes, what)
    assert isinstance(v, bytes)
    return str(ipaddress.ip_address(v))


def _expires(v: Any, now: float) -> float:
    return now + _int(v, 0, MAX_RESIDUAL, "residual time")


def _decode_network(payload: Any, net_id: str) -> Network:
    _want(isinstance(payload, list) and len(payload) == 8, "network payload")
    name, subnets, vni, encrypted, mtu, created_at, creator, created = payload
    _want(isinstance(name, str) and _NAME_RE.match(name) is not None, "network name")
    _want(isinstance(subnets, list) and 1 <= len(subnets) <= 2, "network subnets")
    parsed = []
    for s in subnets:
        _text(s, "subnet", 64)
        try:
            parsed.append(ipaddress.ip_network(s, strict=True))
        except ValueError as exc:
            raise DecodeError(f"table row: bad subnet {s!r}") from exc
    _want(len({p.version for p in parsed}) == len(parsed), "network subnets (one per family)")
    _want(isinstance(encrypted, bool), "encrypted flag")
    _want(isinstance(created_at, float | int) and not isinstance(created_at, bool), "created_at")
    _want(math.isfinite(float(created_at)), "created_at")
    return Network(
        id=net_id,
        name=name,
        subnets=tuple(str(p) for p in sorted(parsed, key=lambda p: p.version)),
        vni=_int(vni, 1, (1 << 24) - 1, "vni"),
        encrypted=encrypted,
        mtu=None if mtu is None else _int(mtu, 68, 65535, "mtu"),
        created_at=float(created_at),
        creator=_text(creator, "creator"),
        created=_int(created, 0, MAX_LAMPORT, "created"),
    )


def _decode_endpoint(payload: Any, net: str, owner: str, ep_id: str) -> Endpoint:
    _want(isinstance(payload, list) and len(payload) == 6, "endpoint payload")
    name, v4, v6, mac, vtep, created = payload
    _want(isinstance(name, str) and _NAME_RE.match(name) is not None, "endpoint name")
    _want(v4 is None or (isinstance(v4, bytes) and len(v4) == 4), "endpoint ipv4")
    _want(v6 is None or (isinstance(v6, bytes) and len(v6) == 16), "endpoint ipv6")
    _want(v4 is not None or v6 is not None, "endpoint without address")
    _want(isinstance(mac, bytes) and len(mac) == 6, "endpoint mac")
    assert isinstance(mac, bytes)
    return Endpoint(
        id=ep_id,
        name=name,
        network=net,
        ipv4=str(ipaddress.IPv4Address(v4)) if v4 is not None else None,
        ipv6=str(ipaddress.IPv6Address(v6)) if v6 is not None else None,
        mac=":".join(f"{b:02x}" for b in mac),
        owner=owner,
        vtep=_addr(vtep, "endpoint vtep"),
        created=_int(created, 0, MAX_LAMPORT, "created"),
    )


def decode_row(obj: Any, now: float, net: str | None = None) -> AnyRow:
    """Inverse of ``encode_row``; ``net`` is the network of a scoped message.

    Raises DecodeError (never anything else) on malformed input.
    """
    try:
        return _decode_row(obj, now, net)
    except DecodeError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise DecodeError(f"table row: {exc}") from exc


def _decode_row(obj: Any, now: float, net: str | None) -> AnyRow:
    _want(isinstance(obj, list) and len(obj) >= 6, "shape")
    kind = _int(obj[0], 0, 3, "kind")
    lamport = _int(obj[1], 0, MAX_LAMPORT, "lamport")
    writer = _text(obj[2], "writer")
    ident = _id(obj[3], "id")
    deleted = obj[4]
    _want(isinstance(deleted, bool), "deleted flag")
    body = obj[5]
    expires = _expires(body, now) if deleted else math.inf
    if kind == Kind.NETWORK:
        _want(len(obj) == 6 and net is None, "network row")
        value = None if deleted else _decode_network(body, ident)
        return NetworkRow(ident, lamport, writer, deleted, value, expires)
    if kind == Kind.MEMBER:
        _want(len(obj) == 6 and net is None, "member row")
        vtep = "" if deleted else _addr(body, "member vtep")
        return MemberRow(ident, writer, lamport, deleted, vtep, expires)
    if kind == Kind.CLAIM:
        _want(len(obj) == 8 and net is None, "claim row")
        family = _int(obj[6], 4, 6, "claim family")
        _want(family in (4, 6), "claim family")
        block = _int(obj[7], 0, MAX_LAMPORT, "claim block")
        return ClaimRow(ident, family, block, writer, lamport, deleted, expires)
    _want(len(obj) == 6 and net is not None, "endpoint row")
    assert net is not None
    value_ep = None if deleted else _decode_endpoint(body, net, writer, ident)
    return EndpointRow(net, writer, ident, lamport, deleted, value_ep, expires, now)


# ------------------------------------------------------------- persistence


def _from_dict(cls: type[Any], d: Any, what: str) -> Any:
    if not isinstance(d, dict):
        raise TableError(f"cannot restore {what}: expected an object, got {type(d).__name__}")
    names = [f for f in cls.__dataclass_fields__ if f != "conflict"]
    missing = [n for n in names if n not in d]
    if missing:
        raise TableError(f"cannot restore {what}: missing {', '.join(missing)}")
    return cls(**{n: d[n] for n in names})


def network_from_dict(d: Any) -> Network:
    """Inverse of ``dataclasses.asdict`` for persisted networks (the agent's state file;
    files from before options have no ``options``). Shape only;
    ``Tables.restore_local_endpoints`` validates the values."""
    if isinstance(d, dict) and "options" not in d:
        d = {**d, "options": None}
    n: Network = _from_dict(Network, d, "network")
    if not isinstance(n.subnets, list | tuple):
        raise TableError("cannot restore network: subnets must be a list")
    opts = n.options
    if opts is not None:
        o = _from_dict(NetworkOptions, opts, "network options")
        try:
            pools = tuple(IpamPool(p["subnet"], p["ip_range"], p["gateway"], tuple((str(a), str(b)) for a, b in p["aux"]))
                          for p in o.pools)
            opts = NetworkOptions(pools, o.internal, o.allow_overlap,
                                  tuple((str(a), str(b)) for a, b in o.labels),
                                  tuple((str(a), str(b)) for a, b in o.options), bool(o.host_access))
        except (KeyError, TypeError, ValueError):
            raise TableError("cannot restore network: bad options") from None
    return replace(n, subnets=tuple(n.subnets), options=opts)


def endpoint_from_dict(d: Any) -> Endpoint:
    """Inverse of ``dataclasses.asdict`` for persisted endpoints (shape only)."""
    e: Endpoint = _from_dict(Endpoint, d, "endpoint")
    return e


# ------------------------------------------------------------- text helpers


def check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or _NAME_RE.match(name) is None:
        raise TableError(
            f"invalid {what} name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def is_hex_id(text: str) -> bool:
    return _HEX_ID_RE.match(text) is not None


def queue_key(row: AnyRow) -> str:
    """Broadcast-queue key: news about a row replaces older news about it."""
    if isinstance(row, NetworkRow):
        return f"n\0{row.id}"
    if isinstance(row, MemberRow):
        return f"m\0{row.net}\0{row.node}"
    if isinstance(row, ClaimRow):
        return f"c\0{row.net}\0{row.family}\0{row.block}\0{row.node}"
    return f"e\0{row.owner}\0{row.id}"
