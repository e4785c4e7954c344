"""The DNS responder's decisions: one query and the network's names in, a reply or "forward" out.

Owns: the name index (``NameIndex``: per network, endpoint names and aliases -> addresses
and addresses -> names, refreshed from table changes, never per query), the decision for
one query (``decide``: answer from the index, NXDOMAIN, refuse, or forward), the checks on
an upstream's reply before it is relayed (``upstream_reply``), the SERVFAIL for a forward
that failed, and the nameservers of a resolv.conf text (``nameservers``).
Pure: no sockets, clocks, threads or randomness (the caller passes the new query id);
the wire format is dnspython's.
Does not: read or send packets, time anything out, or decide when a network has a
responder (``agent.dns.server``, ``agent.dns.manager``).

What is ours (answered with AA, never forwarded): every name in the network's index
(``NAME`` and ``NAME.NETWORK``, case-insensitive), any single-label name and anything
under ``.NETWORK`` (NXDOMAIN when unknown: a name that left is gone at once), and the
reverse names (PTR) of the network's subnets. Everything else is forwarded to the host's
resolvers, but only for clients inside the network's subnets; other clients are refused
everything (the responder listens on the host, beside the isolation rules: a container
of another network must learn neither this network's names nor get free recursion).
An ``--internal`` network's own clients are refused what would be forwarded: the host's
resolvers are outside the network, and recursion through them would be egress (a DNS
tunnel out of a network that has none), as Docker's and podman's resolvers decided too.
A container on several networks asks one of their responders (its resolv.conf's first
nameserver, or Docker's ``--dns``), and an NXDOMAIN ends its lookup: so the responder also
answers, after its own network's names, those of the asking container's other networks
on this host (``also``: their ``NAME``, ``NAME.NETWORK``, PTR), as Docker's embedded DNS
resolves every network of a container. Nobody else sees those names.
Hostile input: anything that is not a well-formed single-question query gets FORMERR
(or nothing, when not even a header can be read or it is a response), never an exception.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from gossip.tables.rows import Endpoint, Network

TTL = 5
"""Seconds a client may cache one of our answers: short, names come and go with containers."""
MAX_QUERY = 4096
"""Longest query we parse (UDP and TCP); a real query is well under 512 bytes."""
PLAIN_UDP = 512
"""Reply size limit over UDP (we answer without EDNS; a larger answer is truncated, TC set,
and the client asks again over TCP)."""
MAX_ANSWERS = 32
"""Addresses returned for one name (two endpoints may share a name on different hosts)."""
MAX_NAMESERVERS = 3
"""glibc reads at most three nameserver lines."""
_HEADER = struct.Struct("!HHHHHH")
_QR = 0x8000
_OPCODE = 0x7800
_RD = 0x0100
_CD = 0x0010
_REVERSE = (dns.name.from_text("in-addr.arpa."), dns.name.from_text("ip6.arpa."))

Subnet = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- the name index ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetworkNames:
    """The names of one network as the responder answers them."""

    network_id: str
    name: str
    """The network's name, lower case (``NAME.NETWORK``)."""
    subnets: tuple[Subnet, ...]
    v4: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Lower-case name (``NAME`` and ``NAME.NETWORK``) -> IPv4 addresses."""
    v6: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ptr: Mapping[str, str] = field(default_factory=dict)
    """Address (canonical text) -> ``NAME.NETWORK`` of the endpoint that holds it."""
    internal: bool = False
    """An ``--internal`` network: nothing is forwarded for it (REFUSED instead)."""

    def knows(self, key: str) -> bool:
        return key in self.v4 or key in self.v6

    def inside(self, client: str) -> bool:
        """Whether ``client`` is an address of one of the network's subnets."""
        try:
            ip = ipaddress.ip_address(client.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip.version == s.version and ip in s for s in self.subnets)


def build_names(net: Network, endpoints: Iterable[Endpoint],
                aliases: Mapping[str, Sequence[str]] | None = None) -> NetworkNames:
    """The ``NetworkNames`` of ``net`` from its visible endpoints; ``aliases``: endpoint id ->
    further names of that endpoint. Conflict losers are left out (their address is the
    winner's); the first endpoint (by creation) holding an address names it for PTR."""
    netname = net.name.lower()
    v4: dict[str, list[str]] = {}
    v6: dict[str, list[str]] = {}
    ptr: dict[str, str] = {}
    for ep in sorted(endpoints, key=lambda e: (e.created, e.id)):
        if ep.conflict or ep.network != net.id:
            continue
        names = [ep.name, *(aliases or {}).get(ep.id, ())]
        for n in dict.fromkeys(x.lower() for x in names):
            for key in (n, f"{n}.{netname}"):
                if ep.ipv4 and len(v4.setdefault(key, [])) < MAX_ANSWERS and ep.ipv4 not in v4[key]:
                    v4[key].append(ep.ipv4)
                if ep.ipv6 and len(v6.setdefault(key, [])) < MAX_ANSWERS and ep.ipv6 not in v6[key]:
                    v6[key].append(ep.ipv6)
        for addr in (ep.ipv4, ep.ipv6):
            if addr:
                ptr.setdefault(str(ipaddress.ip_address(addr)), f"{ep.name.lower()}.{netname}")
    # gateways(): every subnet of the network (with --subnet given twice per family too)
    subnets = tuple(ipaddress.ip_network(s, strict=False) for s, _ in net.gateways())
    return NetworkNames(net.id, netname, subnets,
                        {k: tuple(v) for k, v in v4.items() if v}, {k: tuple(v) for k, v in v6.items() if v}, ptr,
                        net.internal)


class NameIndex:
    """Every network's ``NetworkNames``, refreshed by ``update`` (called on table changes);
    a network whose endpoints did not change keeps its entry (no rebuild)."""

    def __init__(self) -> None:
        self._names: dict[str, NetworkNames] = {}
        self._inputs: dict[str, tuple[Network, tuple[Endpoint, ...], tuple[tuple[str, tuple[str, ...]], ...]]] = {}
        self.rebuilds = 0
        """Networks whose entry was rebuilt, in all (a test's view of the "not per query" rule)."""

    def update(self, networks: Iterable[Network], endpoints: Iterable[Endpoint],
               aliases: Mapping[str, Sequence[str]] | None = None) -> set[str]:
        """Take the tables' networks in force and visible endpoints; returns the ids of
        networks whose names changed (added, removed or different)."""
        by_net: dict[str, list[Endpoint]] = {}
        for ep in endpoints:
            by_net.setdefault(ep.network, []).append(ep)
        changed: set[str] = set()
        seen: set[str] = set()
        for net in networks:
            seen.add(net.id)
            eps = tuple(by_net.get(net.id, ()))
            al = tuple((e.id, tuple((aliases or {}).get(e.id, ()))) for e in eps if aliases and e.id in aliases)
            key = (net, eps, al)
            if self._inputs.get(net.id) == key:
                continue
            self._inputs[net.id] = key
            self._names[net.id] = build_names(net, eps, aliases)
            self.rebuilds += 1
            changed.add(net.id)
        for gone in [n for n in self._names if n not in seen]:
            del self._names[gone]
            del self._inputs[gone]
            changed.add(gone)
        return changed

    def get(self, network_id: str) -> NetworkNames | None:
        return self._names.get(network_id)

    def __len__(self) -> int:
        return len(self._names)


# -- decisions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``wire`` back to the client."""

    wire: bytes
    rcode: int
    authoritative: bool


@dataclass(frozen=True, slots=True)
class Forward:
    """Ask the host's resolvers: send the query with ``with_id`` and relay the reply
    (``upstream_reply``); ``failed`` is the client's SERVFAIL if nobody answers."""

    query: dns.message.Message
    wire: bytes
    """The client's query as it came."""
    failed: bytes

    def with_id(self, qid: int) -> bytes:
        return struct.pack("!H", qid & 0xFFFF) + self.wire[2:]


Decision = Reply | Forward | None
"""None: drop silently (no header, or a response: answering those makes loops and reflections)."""


def decide(data: bytes, client: str, names: NetworkNames, *, tcp: bool = False,
           also: Sequence[NetworkNames] = ()) -> Decision:
    """What to do with one query ``data`` from address ``client``; ``also``: the other
    networks of the client's container (answered after ``names``). Never raises."""
    if len(data) < _HEADER.size or len(data) > MAX_QUERY:
        return None
    qid, flags, qdcount, *_ = _HEADER.unpack_from(data)
    if flags & _QR:
        return None
    if flags & _OPCODE:  # not a QUERY (opcode 0)
        return Reply(_bare(qid, flags, dns.rcode.NOTIMP), dns.rcode.NOTIMP, False)
    if qdcount != 1:
        return Reply(_bare(qid, flags, dns.rcode.FORMERR), dns.rcode.FORMERR, False)
    try:
        # Only the header and the question are read, with the header's flags cut down to
        # RD and CD: dnspython keeps an enum member for every flags value it ever parsed
        # (Python's Flag caches pseudo-members), so arbitrary flags, and the EDNS flags of
        # the additional section, would grow memory with every new value an attacker sends.
        clean = data[:2] + struct.pack("!H", flags & (_RD | _CD)) + data[4:]
        msg = dns.message.from_wire(clean, question_only=True)
    except Exception:  # dnspython raises many kinds (FormError, ShortHeader, BadLabelType, ...)
        return Reply(_bare(qid, flags, dns.rcode.FORMERR), dns.rcode.FORMERR, False)
    if not names.inside(client):
        return _reply(msg, dns.rcode.REFUSED, tcp=tcp)
    q = msg.question[0]
    qname, qtype = q.name, q.rdtype
    if q.rdclass != dns.rdataclass.IN or qname == dns.name.root:
        return _forward(msg, data, names, tcp)
    nets = (names, *also)
    if any(qname.is_subdomain(zone) for zone in _REVERSE):
        return _reverse(msg, qname, qtype, data, nets, tcp)
    key = qname.to_text(omit_final_dot=True).lower()
    for net in nets:
        if net.knows(key):
            return _answer(msg, qname, qtype, key, net, tcp)
    if len(qname.labels) == 2 or any(key.endswith("." + net.name) for net in nets):
        return _reply(msg, dns.rcode.NXDOMAIN, tcp=tcp, aa=True)
    return _forward(msg, data, names, tcp)


def _answer(msg: dns.message.Message, qname: dns.name.Name, qtype: int, key: str, names: NetworkNames,
            tcp: bool) -> Reply:
    """A known name: its addresses of the asked type (none: NOERROR with no data)."""
    r = _response(msg)
    want_a = qtype in (dns.rdatatype.A, dns.rdatatype.ANY)
    want_aaaa = qtype in (dns.rdatatype.AAAA, dns.rdatatype.ANY)
    if want_a and names.v4.get(key):
        rrs = dns.rrset.RRset(qname, dns.rdataclass.IN, dns.rdatatype.A)
        for a in names.v4[key]:
            rrs.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.A, a), TTL)
        r.answer.append(rrs)
    if want_aaaa and names.v6.get(key):
        rrs = dns.rrset.RRset(qname, dns.rdataclass.IN, dns.rdatatype.AAAA)
        for a in names.v6[key]:
            rrs.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.AAAA, a), TTL)
        r.answer.append(rrs)
    return _finish(r, dns.rcode.NOERROR, tcp=tcp, aa=True)


def _reverse(msg: dns.message.Message, qname: dns.name.Name, qtype: int, data: bytes,
             nets: tuple[NetworkNames, ...], tcp: bool) -> Reply | Forward:
    """A reverse name: ours (answer or NXDOMAIN) when it is an address of the subnets of
    ``nets`` (the network asked first, then the client's other networks)."""
    names = nets[0]
    try:
        addr = str(ipaddress.ip_address(dns.reversename.to_address(qname)))
    except Exception:  # a partial reverse name (a zone cut, e.g. 0.10.in-addr.arpa): not an address
        return _forward(msg, data, names, tcp)
    holder = next((net for net in nets if net.inside(addr)), None)
    if holder is None:
        return _forward(msg, data, names, tcp)
    target = holder.ptr.get(addr)
    if target is None:
        return _reply(msg, dns.rcode.NXDOMAIN, tcp=tcp, aa=True)
    r = _response(msg)
    if qtype in (dns.rdatatype.PTR, dns.rdatatype.ANY):
        try:
            rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.PTR, target + ".")
        except dns.exception.DNSException:  # a name that is no DNS name (a label over 63 characters)
            return _reply(msg, dns.rcode.NXDOMAIN, tcp=tcp, aa=True)
        rrs = dns.rrset.RRset(qname, dns.rdataclass.IN, dns.rdatatype.PTR)
        rrs.add(rdata, TTL)
        r.answer.append(rrs)
    return _finish(r, dns.rcode.NOERROR, tcp=tcp, aa=True)


def _forward(msg: dns.message.Message, data: bytes, names: NetworkNames, tcp: bool) -> Reply | Forward:
    """Ask the host's resolvers; refused for an internal network (no egress, DNS included)."""
    if names.internal:
        return _reply(msg, dns.rcode.REFUSED, tcp=tcp)
    failed = _reply(msg, dns.rcode.SERVFAIL, tcp=tcp)
    return Forward(msg, data, failed.wire)


def _response(msg: dns.message.Message) -> dns.message.Message:
    return dns.message.make_response(msg, recursion_available=True)


def _reply(msg: dns.message.Message, rcode: int, *, tcp: bool, aa: bool = False) -> Reply:
    return _finish(_response(msg), rcode, tcp=tcp, aa=aa)


def _finish(r: dns.message.Message, rcode: int, *, tcp: bool, aa: bool) -> Reply:
    r.set_rcode(dns.rcode.Rcode.make(rcode))
    if aa:
        r.flags |= dns.flags.AA
    # The additional section is not read (see decide): no EDNS, so 512 bytes over UDP.
    limit = 65535 if tcp else PLAIN_UDP
    return Reply(r.to_wire(max_size=limit, prefer_truncation=True), rcode, aa)


def _bare(qid: int, flags: int, rcode: int) -> bytes:
    """A header-only reply to a query we could not parse: its id, opcode and RD kept."""
    out = _QR | (flags & 0x7800) | (flags & 0x0100) | 0x0080 | rcode  # opcode, RD; RA
    return _HEADER.pack(qid, out, 0, 0, 0, 0)


def upstream_reply(forward: Forward, sent_id: int, data: bytes) -> bytes | None:
    """The upstream's answer ``data`` made into the client's (its id back), or None when it
    is not the answer to what we sent (another id or question: late, or spoofed)."""
    if len(data) < _HEADER.size or len(data) > 65535:
        return None
    qid, flags, *_ = _HEADER.unpack_from(data)
    if qid != sent_id or not flags & _QR:
        return None
    try:
        reply = dns.message.from_wire(data[:2] + struct.pack("!H", _QR) + data[4:], question_only=True)  # see decide
    except Exception:  # see decide
        return None
    if reply.question != forward.query.question:
        return None
    return forward.wire[:2] + data[2:]


def nameservers(text: str, exclude: Iterable[str] = ()) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf text, at most three like glibc, without
    ``exclude`` (our own gateway addresses: forwarding to ourselves would loop)."""
    skip = set()
    for x in exclude:
        try:
            skip.add(ipaddress.ip_address(x))
        except ValueError:
            continue
    out: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != "nameserver":
            continue
        try:
            ip = ipaddress.ip_address(parts[1].split("%", 1)[0])
        except ValueError:
            continue
        if ip in skip or ip.is_unspecified or str(ip) in out:
            continue
        out.append(str(ip))
        if len(out) == MAX_NAMESERVERS:
            break
    return out
