"""Network options: what ``network create`` takes beyond a 0.1.0 network row, and its row.

Owns: checking the operator's options (several subnets per family, ``--ip-range``,
``--gateway``, ``--aux-address``, ``--label``, ``--opt``, ``--internal``,
``--allow-overlap``, ``--host-access``) into a ``NetworkOptions``, the options row (an extension row of
kind ``KIND``, cluster-wide, id = the network's id) and its payload codec, and which
row of a network is read when several nodes hold copies (``pick``).
Does not: store or gossip rows (``replica``, ``extrows``), allocate (``blocks``).

Why an extension row: release 0.1.0 decodes network rows strictly (exactly 8 payload
fields, at most one subnet per family), so the network row keeps the first subnet of
each family and everything else travels in a row of kind 4 that 0.1.0 never sees and
that 0.2.0 relays. The options change forwarding (``internal``) and conflicts
(``allow_overlap``), so a network with options is created only when every agent
speaks protocol 2 (``protocol.FEATURES["network-options"]``).

Who writes the row: the creator, and every node that takes part in the network (its
own copy, same payload), so the options outlive the creator's host being reaped. A
copy is tombstoned by its writer once the network is gone. Readers use the creator's
copy, else the one of the lowest (Lamport, writer) whose payload decodes and matches
the network row.

Payload (msgpack, no maps): ``[1, [[subnet, ip_range|nil, gateway|nil, [[name, ip],
...]], ...], internal, allow_overlap, [[key, value], ...] (labels), [[key, value],
...] (options), host_access]``. Bounds: 16 subnets, 64 aux addresses per subnet, 64 labels and 64
options of at most 255 characters per key or value; the whole row within
``extrows.MAX_ROW_BYTES``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from gossip.tables import ipam, protocol
from gossip.tables.extrows import MAX_ROW_BYTES, ExtensionRow, _packb
from gossip.tables.rows import IpamPool, Network, NetworkOptions, TableError

KIND = 4
"""Extension row kind of network options (the first one this project defines)."""
FORMAT = 1
MAX_POOLS = 16
MAX_AUX = 64
MAX_PAIRS = 64
MAX_TEXT = 255
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,254}\Z")


# -- operator input ---------------------------------------------------------------------------


def _net(text: str, what: str) -> ipam.IPNetwork:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except (ValueError, TypeError):
        raise TableError(f"invalid {what} {text!r}: expected a CIDR like 10.0.1.0/24") from None
    if net.network_address != ipaddress.ip_interface(text).ip:
        raise TableError(f"invalid {what} {text!r}: host bits set (did you mean {net}?)")
    return net


def _addr(text: str, what: str) -> ipam.IPAddress:
    try:
        return ipaddress.ip_address(text)
    except (ValueError, TypeError):
        raise TableError(f"invalid {what} {text!r}: expected an IP address") from None


def _pairs(items: Mapping[str, str] | Iterable[tuple[str, str]] | None, what: str) -> tuple[tuple[str, str], ...]:
    pairs = list(items.items()) if isinstance(items, Mapping) else list(items or ())
    if len(pairs) > MAX_PAIRS:
        raise TableError(f"too many {what}s ({len(pairs)}; at most {MAX_PAIRS})")
    out: dict[str, str] = {}
    for pair in pairs:
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise TableError(f"invalid {what} {pair!r}: expected KEY=VALUE")
        key, value = pair
        if _KEY_RE.match(key) is None:
            raise TableError(f"invalid {what} key {key!r}: use letters, digits and . _ - : / (at most 255)")
        if len(value) > MAX_TEXT or any(ord(c) < 32 for c in value):
            raise TableError(f"invalid {what} value for {key!r}: at most {MAX_TEXT} printable characters")
        if key in out:
            raise TableError(f"{what} {key!r} given twice")
        out[key] = value
    return tuple(sorted(out.items()))


def parse_options(
    subnets: Sequence[str],
    ip_ranges: Sequence[str] = (),
    gateways: Sequence[str] = (),
    aux: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    *,
    internal: bool = False,
    allow_overlap: bool = False,
    labels: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    options: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    host_access: bool = False,
) -> tuple[tuple[str, ...], NetworkOptions | None]:
    """(the network row's subnets, the options or None for a plain network), like
    ``docker network create``: each ``--ip-range`` and ``--gateway`` belongs to the one
    subnet holding it, each aux address likewise. Raises TableError (one line)."""
    if isinstance(subnets, str):
        subnets = [subnets]
    if not subnets:
        raise TableError("a network needs at least one subnet (--subnet CIDR)")
    if len(subnets) > MAX_POOLS:
        raise TableError(f"too many subnets ({len(subnets)}; at most {MAX_POOLS})")
    if not all(isinstance(x, bool) for x in (internal, allow_overlap, host_access)):
        raise TableError("'internal', 'allow_overlap' and 'host_access' must be true or false")
    nets = [_net(s, "subnet") for s in subnets]
    for n in nets:
        ipam.parse_subnets([str(n)])  # the size limits of a single subnet
    for i, a in enumerate(nets):
        for b in nets[:i]:
            if a.version == b.version and a.overlaps(b):
                raise TableError(f"subnets {b} and {a} overlap")
    order = sorted(range(len(nets)), key=lambda i: (nets[i].version, i))
    nets = [nets[i] for i in order]
    ranges: dict[int, ipam.IPNetwork] = {}
    for text in ip_ranges:
        r = _net(text, "IP range")
        i = _holder(nets, r, f"IP range {r}")
        if i in ranges:
            raise TableError(f"more than one IP range for subnet {nets[i]}")
        ranges[i] = r
    gws: dict[int, ipam.IPAddress] = {}
    for text in gateways:
        g = _addr(text, "gateway")
        i = _holder(nets, g, f"gateway {g}")
        if i in gws:
            raise TableError(f"more than one gateway for subnet {nets[i]}")
        _usable(nets[i], g, f"gateway {g}")
        gws[i] = g
    auxes: dict[int, list[tuple[str, str]]] = {i: [] for i in range(len(nets))}
    taken: dict[str, str] = {}
    for name, text in _pairs(aux, "aux address"):
        ax = _addr(text, f"aux address {name}")
        i = _holder(nets, ax, f"aux address {name}={ax}")
        _usable(nets[i], ax, f"aux address {name}={ax}")
        if str(ax) in taken or ax == _gateway(nets[i], gws.get(i)):
            raise TableError(f"aux address {name}={ax} is already the gateway or another aux address")
        taken[str(ax)] = name
        auxes[i].append((name, str(ax)))
    for i, lst in auxes.items():
        if len(lst) > MAX_AUX:
            raise TableError(f"too many aux addresses in subnet {nets[i]} (at most {MAX_AUX})")
    pools = tuple(
        IpamPool(str(n), str(ranges[i]) if i in ranges else None, str(gws[i]) if i in gws else None,
                 tuple(auxes[i]))
        for i, n in enumerate(nets))
    base = tuple(str(next(n for n in nets if n.version == v)) for v in (4, 6) if any(n.version == v for n in nets))
    opts = NetworkOptions(pools, internal, allow_overlap, _pairs(labels, "label"), _pairs(options, "option"),
                          host_access)
    plain = (len(pools) == len(base) and all(p.ip_range is None and p.gateway is None and not p.aux for p in pools)
             and not internal and not allow_overlap and not opts.labels and not opts.options and not host_access)
    if plain:
        return base, None
    if len(_packb(payload(opts))) > MAX_ROW_BYTES - 128:
        raise TableError("network options too large (labels, options and aux addresses take at most ~4 KiB)")
    return base, opts


def _holder(nets: Sequence[ipam.IPNetwork], thing: ipam.IPNetwork | ipam.IPAddress, what: str) -> int:
    for i, n in enumerate(nets):
        if isinstance(thing, ipaddress.IPv4Network | ipaddress.IPv6Network):
            if thing.version == n.version and thing.subnet_of(n):  # type: ignore[arg-type]
                return i
        elif thing.version == n.version and thing in n:
            return i
    raise TableError(f"{what} is in none of the network's subnets")


def _gateway(net: ipam.IPNetwork, given: ipam.IPAddress | None) -> ipam.IPAddress:
    return given if given is not None else net.network_address + 1


def _usable(net: ipam.IPNetwork, addr: ipam.IPAddress, what: str) -> None:
    if addr == net.network_address or (net.version == 4 and addr == net.broadcast_address):
        raise TableError(f"{what} is the network or broadcast address of {net}")


# -- the row ------------------------------------------------------------------------------------


def payload(opts: NetworkOptions) -> list[Any]:
    return [FORMAT,
            [[p.subnet, p.ip_range, p.gateway, [list(a) for a in p.aux]] for p in opts.pools],
            opts.internal, opts.allow_overlap,
            [list(kv) for kv in opts.labels], [list(kv) for kv in opts.options], opts.host_access]


def decode_payload(body: Any) -> NetworkOptions | None:
    """The options of a row's payload; None when it is not a valid one (a newer format,
    or junk: the row is kept and relayed all the same, ``extrows``)."""
    try:
        if not (isinstance(body, list) and len(body) >= 6 and body[0] == FORMAT):
            return None
        _, pools, internal, overlap, labels, options = body[:6]
        host_access = body[6] if len(body) > 6 else False
        if not isinstance(pools, list) or not pools:
            return None
        subnets = [p[0] for p in pools]
        ranges = [p[1] for p in pools if p[1] is not None]
        gws = [p[2] for p in pools if p[2] is not None]
        aux = [tuple(a) for p in pools for a in p[3]]
        _, opts = parse_options(subnets, ranges, gws, aux, internal=internal, allow_overlap=overlap,
                                   labels=[tuple(kv) for kv in labels], options=[tuple(kv) for kv in options],
                                   host_access=host_access)
    except (TableError, TypeError, ValueError, IndexError):
        return None
    return opts


def row(net_id: str, writer: str, lamport: int, opts: NetworkOptions | None, expires: float) -> ExtensionRow:
    """Our copy of a network's options row (``opts`` None: its tombstone until ``expires``)."""
    return ExtensionRow(KIND, "", writer, net_id, lamport, opts is None,
                        None if opts is None else payload(opts), (), expires)


def matches(net: Network, opts: NetworkOptions) -> bool:
    """Whether options fit the network row (same first subnet of each family)."""
    firsts = []
    for v in (4, 6):
        s = next((p.subnet for p in opts.pools if (":" in p.subnet) == (v == 6)), None)
        if s is not None:
            firsts.append(s)
    return tuple(firsts) == net.subnets


def pick(rows: Iterable[ExtensionRow], networks: Mapping[str, Network]) -> dict[str, NetworkOptions]:
    """Network id -> the options in force: the creator's copy, else the lowest (Lamport,
    writer) copy whose payload is valid and matches the network row."""
    cands: dict[str, list[tuple[int, int, str, NetworkOptions]]] = {}
    for r in rows:
        net = networks.get(r.id)
        if r.kind != KIND or r.net or r.deleted or net is None:
            continue
        opts = decode_payload(r.payload)
        if opts is None or not matches(net, opts):
            continue
        cands.setdefault(r.id, []).append((r.writer != net.creator, r.lamport, r.writer, opts))
    return {k: min(v, key=lambda c: c[:3])[3] for k, v in cands.items()}


def check_usable(opts: NetworkOptions, version: int) -> tuple[str, ...]:
    """The network row's subnets for ``opts``, or TableError when some agent cannot read
    options (the common tables protocol ``version`` is older than the feature's)."""
    need = protocol.FEATURES["network-options"]
    if not protocol.usable("network-options", version):
        raise TableError("network options (several subnets per family, --ip-range, --gateway, --aux-address, "
                         f"--label, --opt, --internal, --allow-overlap) need every agent at tables protocol "
                         f"{need} or later (the cluster speaks {version}); upgrade the older agents first")
    return parse_options([p.subnet for p in opts.pools])[0]


def own_changes(
    rows: Iterable[ExtensionRow], node: str, joined: Iterable[str], live: Callable[[str], bool],
    in_force: Mapping[str, NetworkOptions],
) -> list[tuple[str, NetworkOptions | None]]:
    """What ``node`` writes so that it holds a copy of the options of every network it
    takes part in (they outlive the creator's host) and none of networks that are gone:
    (network id, options to publish, or None for a tombstone)."""
    own = {r.id: r for r in rows if r.kind == KIND and not r.net and r.writer == node}
    out: list[tuple[str, NetworkOptions | None]] = [
        (net, None) for net, r in own.items() if not r.deleted and not live(net)]
    for net in joined:
        opts = in_force.get(net)
        cur = own.get(net)
        if opts is not None and (cur is None or cur.deleted) and live(net):
            out.append((net, opts))
    return out


def overlap_allowed(a: Network, b: Network) -> bool:
    """Overlapping subnets are fine only when both networks say so."""
    return a.options is not None and b.options is not None and a.options.allow_overlap and b.options.allow_overlap


def underlay_clash(subnets: Iterable[str], underlay: Iterable[str]) -> str | None:
    """The first (subnet, underlay prefix) overlap as a message, None when there is none."""
    under = []
    for text in underlay:
        try:
            under.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue
    for s in subnets:
        n = ipaddress.ip_network(s)
        for u in under:
            if u.version == n.version and u.prefixlen > 0 and n.overlaps(u):  # type: ignore[arg-type]
                return f"subnet {n} overlaps this host's underlay ({u})"
    return None
