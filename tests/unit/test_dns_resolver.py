"""agent.dns.resolver: answers from the name index, NXDOMAIN, refusal, forwarding (pure, no sockets).

Queries are built and replies read with dnspython, the library the resolver uses for its
wire format; every expectation is about values (addresses, names, rcodes, flags).
"""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from agent.dns import resolver
from agent.dns.resolver import (
    Forward,
    NameIndex,
    Reply,
    decide,
    nameservers,
    upstream_reply,
)
from gossip.tables.rows import Endpoint, Network, NetworkOptions

NET = "a" * 64
OTHER = "b" * 64
INSIDE = "10.60.0.9"
INSIDE6 = "fd00:60::9"


def network(net_id: str = NET, name: str = "Blue", subnets: tuple[str, ...] = ("10.60.0.0/24", "fd00:60::/64")
            ) -> Network:
    return Network(id=net_id, name=name, subnets=subnets, vni=4096, encrypted=False, mtu=None,
                   created_at=0.0, creator="host0", created=1)


def endpoint(name: str, v4: str | None, v6: str | None = None, *, ep_id: str | None = None, created: int = 5,
             net: str = NET, owner: str = "host0") -> Endpoint:
    return Endpoint(id=ep_id or (name.encode().hex() + "0" * 64)[:64], name=name, network=net, ipv4=v4, ipv6=v6,
                    mac="02:00:00:00:00:01", owner=owner, vtep="192.0.2.1", created=created)


WEB = endpoint("web", "10.60.0.5", "fd00:60::5")
DB = endpoint("DB", "10.60.0.6")


def index(*eps: Endpoint, aliases: dict[str, list[str]] | None = None) -> NameIndex:
    ix = NameIndex()
    ix.update([network()], list(eps), aliases)
    return ix


def ask(ix: NameIndex, qname: str, qtype: str = "A", client: str = INSIDE, *, tcp: bool = False,
        ) -> dns.message.Message:
    names = ix.get(NET)
    assert names is not None
    q = dns.message.make_query(qname, qtype)
    d = decide(q.to_wire(), client, names, tcp=tcp)
    assert isinstance(d, Reply), d
    r = dns.message.from_wire(d.wire)
    assert r.id == q.id and r.flags & dns.flags.QR
    return r


def addresses(r: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrs in r.answer for rd in rrs)


@pytest.mark.parametrize("qname", ["web", "web.", "WEB", "web.blue", "Web.BLUE."])
def test_name_and_name_dot_network_answer_a(qname: str) -> None:
    r = ask(index(WEB, DB), qname)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA and r.flags & dns.flags.RA
    assert addresses(r) == ["10.60.0.5"]
    assert r.answer[0].name == dns.message.make_query(qname, "A").question[0].name  # the asked name, as asked
    assert 0 < r.answer[0].ttl <= resolver.TTL


def test_aaaa_and_nodata() -> None:
    ix = index(WEB, DB)
    assert addresses(ask(ix, "web.blue", "AAAA")) == ["fd00:60::5"]
    r = ask(ix, "db", "AAAA")  # a known name without an IPv6 address: NOERROR, no data
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.flags & dns.flags.AA
    r = ask(ix, "web", "ANY")
    assert addresses(r) == ["10.60.0.5", "fd00:60::5"]


def test_ptr_for_v4_and_v6() -> None:
    ix = index(WEB, DB)
    for addr, want in (("10.60.0.5", "web.blue."), ("fd00:60::5", "web.blue."), ("10.60.0.6", "db.blue.")):
        r = ask(ix, dns.reversename.from_address(addr).to_text(), "PTR")
        assert r.rcode() == dns.rcode.NOERROR and addresses(r) == [want], addr
    r = ask(ix, dns.reversename.from_address("10.60.0.77").to_text(), "PTR")  # ours, but nobody holds it
    assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA


def test_aliases_resolve_like_names() -> None:
    ix = index(WEB, DB, aliases={WEB.id: ["www", "Front.End"]})
    for qname in ("www", "www.blue", "front.end", "front.end.blue"):
        assert addresses(ask(ix, qname)) == ["10.60.0.5"], qname
    # PTR names the endpoint by its own name, not an alias
    r = ask(ix, dns.reversename.from_address("10.60.0.5").to_text(), "PTR")
    assert addresses(r) == ["web.blue."]


def test_unknown_single_label_and_network_names_are_nxdomain() -> None:
    ix = index(WEB)
    for qname in ("nope", "nope.blue", "x.y.blue"):
        r = ask(ix, qname)
        assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA, qname


def test_removed_name_is_nxdomain_at_once_and_index_rebuilds_only_on_change() -> None:
    ix = index(WEB, DB)
    assert addresses(ask(ix, "db")) == ["10.60.0.6"]
    built = ix.rebuilds
    for _ in range(5):  # queries never rebuild
        ask(ix, "db")
    assert ix.update([network()], [WEB, DB]) == set() and ix.rebuilds == built  # no change, no rebuild
    assert ix.update([network()], [WEB]) == {NET}
    assert ask(ix, "db").rcode() == dns.rcode.NXDOMAIN
    assert ask(ix, "db.blue").rcode() == dns.rcode.NXDOMAIN
    r = ask(ix, dns.reversename.from_address("10.60.0.6").to_text(), "PTR")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert ix.update([], []) == {NET} and ix.get(NET) is None  # the network went


def test_only_this_networks_endpoints_and_no_conflict_losers() -> None:
    other = endpoint("red", "10.61.0.5", net=OTHER)
    loser = replace(endpoint("dup", "10.60.0.5", ep_id="c" * 64, created=9), conflict=True)
    ix = NameIndex()
    ix.update([network(), network(OTHER, "red", ("10.61.0.0/24",))], [WEB, other, loser])
    names = ix.get(NET)
    assert names is not None
    assert "red" not in names.v4 and "dup" not in names.v4
    assert names.ptr["10.60.0.5"] == "web.blue"
    assert ask(ix, "red").rcode() == dns.rcode.NXDOMAIN


def test_same_name_on_two_hosts_gives_both_addresses() -> None:
    twin = endpoint("web", "10.60.0.7", ep_id="d" * 64, owner="host1", created=7)
    assert addresses(ask(index(WEB, twin), "web")) == ["10.60.0.5", "10.60.0.7"]


def test_outsiders_are_refused_everything() -> None:
    ix = index(WEB)
    for qname in ("web", "example.com"):
        for client in ("10.61.0.9", "192.0.2.7", "fd00:61::1", "not-an-address"):
            r = ask(ix, qname, client=client)
            assert r.rcode() == dns.rcode.REFUSED and not r.answer, (qname, client)
    assert ask(ix, "web", client=INSIDE6).rcode() == dns.rcode.NOERROR


def test_other_names_are_forwarded_for_insiders_only() -> None:
    names = index(WEB).get(NET)
    assert names is not None
    q = dns.message.make_query("example.com", "A")
    d = decide(q.to_wire(), INSIDE, names)
    assert isinstance(d, Forward)
    assert d.wire == q.to_wire()
    assert dns.message.from_wire(d.with_id(0x1234)).id == 0x1234
    failed = dns.message.from_wire(d.failed)
    assert failed.rcode() == dns.rcode.SERVFAIL and failed.id == q.id
    # a reverse name outside our subnets is not ours either
    ptr = dns.message.make_query(dns.reversename.from_address("8.8.8.8"), "PTR")
    assert isinstance(decide(ptr.to_wire(), INSIDE, names), Forward)


def test_an_internal_network_answers_its_names_and_forwards_nothing() -> None:
    """--internal: the host's resolvers are outside the network; recursion through them
    would be egress (a DNS tunnel), so what would be forwarded is REFUSED (UDP and TCP);
    the network's own names, NXDOMAIN and PTR are answered as ever."""
    ix = NameIndex()
    ix.update([replace(network(), options=NetworkOptions(internal=True))], [WEB])
    names = ix.get(NET)
    assert names is not None and names.internal
    assert not index(WEB).get(NET).internal  # type: ignore[union-attr]
    for tcp in (False, True):
        for q in (dns.message.make_query("example.com", "A"),
                  dns.message.make_query(dns.reversename.from_address("8.8.8.8"), "PTR"),
                  dns.message.make_query(".", "NS")):
            d = decide(q.to_wire(), INSIDE, names, tcp=tcp)
            assert isinstance(d, Reply) and d.rcode == dns.rcode.REFUSED, (q.question, d)
            r = dns.message.from_wire(d.wire)
            assert r.id == q.id and not r.answer
        assert addresses(ask(ix, "web.blue", tcp=tcp)) == ["10.60.0.5"]
        assert ask(ix, "nobody", tcp=tcp).rcode() == dns.rcode.NXDOMAIN
        ptr = ask(ix, dns.reversename.from_address("10.60.0.5").to_text(), "PTR", tcp=tcp)
        assert [rd.to_text() for rrs in ptr.answer for rd in rrs] == ["web.blue."]


def test_the_other_networks_of_the_clients_container_come_after_ours() -> None:
    """``also``: names, NAME.NETWORK and PTR of the client's other networks are answered,
    this network's names first; unknown names under theirs are NXDOMAIN; without ``also``
    nothing of theirs is known."""
    ix = NameIndex()
    green = network(OTHER, "Green", ("10.61.0.0/24",))
    db_g = endpoint("db", "10.61.0.7", net=OTHER)
    web_g = endpoint("web", "10.61.0.8", net=OTHER, ep_id="f" * 64)
    ix.update([network(), green], [WEB, db_g, web_g])
    blue, other = ix.get(NET), ix.get(OTHER)
    assert blue is not None and other is not None

    def reply(qname: str, qtype: str = "A", also: tuple[resolver.NetworkNames, ...] = (other,)
              ) -> dns.message.Message:
        d = decide(dns.message.make_query(qname, qtype).to_wire(), INSIDE, blue, also=also)
        assert isinstance(d, Reply), (qname, d)
        return dns.message.from_wire(d.wire)

    assert addresses(reply("db")) == ["10.61.0.7"] and addresses(reply("DB.green.")) == ["10.61.0.7"]
    assert addresses(reply("web")) == ["10.60.0.5"]  # ours first
    assert addresses(reply("web.green")) == ["10.61.0.8"]
    assert reply("nobody.green").rcode() == dns.rcode.NXDOMAIN
    ptr = reply(dns.reversename.from_address("10.61.0.7").to_text(), "PTR")
    assert [rd.to_text() for rrs in ptr.answer for rd in rrs] == ["db.green."]
    assert reply("db", also=()).rcode() == dns.rcode.NXDOMAIN
    q = dns.message.make_query("db.green", "A")
    assert isinstance(decide(q.to_wire(), INSIDE, blue), Forward)  # not ours without also
    # an outsider stays refused whatever also says
    d = decide(dns.message.make_query("db", "A").to_wire(), "10.61.0.9", blue, also=(other,))
    assert isinstance(d, Reply) and d.rcode == dns.rcode.REFUSED


def test_upstream_reply_is_checked_and_gets_the_clients_id_back() -> None:
    names = index(WEB).get(NET)
    assert names is not None
    q = dns.message.make_query("example.com", "A")
    d = decide(q.to_wire(), INSIDE, names)
    assert isinstance(d, Forward)
    sent = dns.message.from_wire(d.with_id(777))
    answer = dns.message.make_response(sent)
    out = upstream_reply(d, 777, answer.to_wire())
    assert out is not None and dns.message.from_wire(out).id == q.id
    assert upstream_reply(d, 778, answer.to_wire()) is None  # another id
    other = dns.message.make_response(dns.message.make_query("evil.example", "A", id=777))
    assert upstream_reply(d, 777, other.to_wire()) is None  # another question
    assert upstream_reply(d, 777, sent.to_wire()) is None  # not a response
    assert upstream_reply(d, 777, b"\x03\x09junk") is None


def test_malformed_input_gets_formerr_or_nothing() -> None:
    names = index(WEB).get(NET)
    assert names is not None
    assert decide(b"", INSIDE, names) is None
    assert decide(b"\x00" * 11, INSIDE, names) is None
    q = dns.message.make_query("web", "A")
    response = dns.message.make_response(q).to_wire()
    assert decide(response, INSIDE, names) is None  # never answer a response
    assert decide(q.to_wire() + b"\x00" * resolver.MAX_QUERY, INSIDE, names) is None
    junk = q.to_wire()[:2] + b"\x01\x00" + b"\x00\x05" + b"\xff" * 20  # five questions, none readable
    d = decide(junk, INSIDE, names)
    assert isinstance(d, Reply) and d.rcode == dns.rcode.FORMERR
    r = dns.message.from_wire(d.wire)
    assert r.id == q.id and r.rcode() == dns.rcode.FORMERR and r.flags & dns.flags.RD
    two = dns.message.make_query("web", "A")
    two.question.append(two.question[0])
    d = decide(two.to_wire(), INSIDE, names)
    assert isinstance(d, Reply) and d.rcode == dns.rcode.FORMERR


def test_not_a_query_is_notimp() -> None:
    names = index(WEB).get(NET)
    assert names is not None
    q = dns.message.make_query("web", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    d = decide(q.to_wire(), INSIDE, names)
    assert isinstance(d, Reply) and d.rcode == dns.rcode.NOTIMP


def test_large_answers_truncate_over_udp_and_not_over_tcp() -> None:
    many = [endpoint("web", f"10.60.0.{10 + i}", ep_id=f"{i:064x}", created=i) for i in range(40)]
    ix = index(*many)
    udp = ask(ix, "web.blue")
    full = ask(ix, "web.blue", tcp=True)
    assert len(addresses(full)) == resolver.MAX_ANSWERS  # bounded per name
    assert udp.flags & dns.flags.TC or len(addresses(udp)) == resolver.MAX_ANSWERS
    names = ix.get(NET)
    assert names is not None
    wire = decide(dns.message.make_query("web.blue", "A").to_wire(), INSIDE, names)
    assert isinstance(wire, Reply) and len(wire.wire) <= resolver.PLAIN_UDP


def test_nameservers_of_resolv_conf() -> None:
    text = """# comment
nameserver 10.60.0.1
nameserver 192.0.2.53
search example.net
nameserver fe80::1%eth0
nameserver not-an-ip
nameserver 192.0.2.53
nameserver 198.51.100.1
nameserver 198.51.100.2
"""
    assert nameservers(text, exclude=["10.60.0.1"]) == ["192.0.2.53", "fe80::1", "198.51.100.1"]
    assert nameservers("") == []


def test_resolver_is_pure() -> None:
    """No sockets, clocks, threads or randomness in the decision module (docs/design.md)."""
    tree = ast.parse(Path(resolver.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"socket", "trio", "time", "threading", "asyncio", "random", "subprocess", "os"}
