"""Fuzzing the DNS responder's decode path: junk never raises out, replies stay bounded, memory too.

The path is ``Responder._decide`` (the server's step for every UDP datagram and TCP
message: counting, then ``agent.dns.resolver.decide``) with no socket behind it.
Inputs: arbitrary bytes, and valid queries with bytes flipped, cut, or spliced.
"""

from __future__ import annotations

import gc
import random
import tracemalloc

import dns.message
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.dns.resolver import MAX_QUERY, PLAIN_UDP, Forward, NameIndex, Reply
from agent.dns.server import Responder, Upstreams
from gossip.tables.rows import Endpoint, Network

NET = "f" * 64


def _responder() -> Responder:
    net = Network(id=NET, name="blue", subnets=("10.70.0.0/24", "fd00:70::/64"), vni=9, encrypted=False, mtu=None,
                  created_at=0.0, creator="h", created=1)
    eps = [Endpoint(id=f"{i:064x}", name=f"web{i % 7}", network=NET, ipv4=f"10.70.0.{i + 2}",
                    ipv6=f"fd00:70::{i + 2:x}", mac="02:00:00:00:00:01", owner="h", vtep="192.0.2.1", created=i)
           for i in range(40)]
    ix = NameIndex()
    ix.update([net], eps)
    return Responder(NET, ("10.70.0.1",), lambda: ix.get(NET), Upstreams("/nonexistent"))


RESPONDER = _responder()
CLIENTS = ("10.70.0.9", "fd00:70::9", "192.0.2.7", "")


def check(data: bytes, client: str, tcp: bool) -> None:
    d = RESPONDER._decide(data, client, tcp=tcp)
    assert d is None or isinstance(d, Reply | Forward)
    if isinstance(d, Reply):
        assert len(d.wire) <= (65535 if tcp else PLAIN_UDP)
        reply = dns.message.from_wire(d.wire)  # what we send is always well-formed
        assert reply.id == int.from_bytes(data[:2], "big")
    if isinstance(d, Forward):
        assert d.wire == data and len(d.failed) <= 65535


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=MAX_QUERY + 64), st.sampled_from(CLIENTS), st.booleans())
def test_arbitrary_bytes_never_raise(data: bytes, client: str, tcp: bool) -> None:
    check(data, client, tcp)


NAMES = st.sampled_from(["web1", "web1.blue", "WEB3.Blue.", "nope", "example.com", "3.0.70.10.in-addr.arpa",
                         "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.7.0.0.0.0.d.f.ip6.arpa", "70.10.in-addr.arpa",
                         "a" * 63 + ".blue", "."])
TYPES = st.sampled_from(["A", "AAAA", "PTR", "ANY", "TXT", "MX", "AXFR", "OPT", "TYPE65280"])


@st.composite
def mutated_queries(draw: st.DrawFn) -> bytes:
    q = dns.message.make_query(draw(NAMES), draw(TYPES), use_edns=draw(st.sampled_from([None, 0])),
                               payload=draw(st.integers(0, 65535)))
    wire = bytearray(q.to_wire())
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "splice", "count"]))
        if op == "flip" and wire:
            i = draw(st.integers(0, len(wire) - 1))
            wire[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            wire = wire[: draw(st.integers(0, len(wire)))]
        elif op == "splice":
            i = draw(st.integers(0, len(wire)))
            wire[i:i] = draw(st.binary(max_size=40))
        elif op == "count" and len(wire) >= 12:  # lie about a section's size
            i = draw(st.sampled_from([4, 6, 8, 10]))
            wire[i:i + 2] = draw(st.integers(0, 65535)).to_bytes(2, "big")
    return bytes(wire)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_queries(), st.sampled_from(CLIENTS), st.booleans())
def test_mutated_queries_never_raise(data: bytes, client: str, tcp: bool) -> None:
    check(data, client, tcp)


@pytest.mark.slow
def test_memory_stays_bounded_over_many_hostile_inputs() -> None:
    """3,000 junk and mutated inputs: nothing is kept per query (traced memory after the
    run is what it was before, within 64 KiB: before the flags were cut down, dnspython's
    enum cache kept ~100 bytes per new flags value, ~290 KiB here), and no single input
    costs more than 4 MiB."""
    rng = random.Random(7)
    valid = [dns.message.make_query(n, t).to_wire() for n in ("web1", "example.com", "web2.blue")
             for t in ("A", "AAAA", "ANY")]

    def junk(i: int) -> bytes:
        if i % 2:
            return rng.randbytes(rng.randrange(0, MAX_QUERY + 2))
        b = bytearray(rng.choice(valid))
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)

    for i in range(200):  # warm caches (dnspython's, ours) before measuring
        check(junk(i), CLIENTS[i % 4], bool(i % 3))
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(3_000):
            check(junk(i), CLIENTS[i % 4], bool(i % 3))
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024, (before, after)
    assert peak - before < 4 * 1024 * 1024, (before, peak)
    assert RESPONDER.stats.malformed > 0 and RESPONDER.stats.queries >= 3_000


def test_every_query_type_on_our_names_is_answered_or_refused_not_forwarded() -> None:
    """Ours stays ours whatever the type: a name of the network is never sent upstream."""
    for qtype in ("A", "AAAA", "TXT", "MX", "SRV", "CNAME", "ANY"):
        for name in ("web1", "web1.blue", "nope.blue"):
            wire = dns.message.make_query(name, dns.rdatatype.from_text(qtype)).to_wire()
            d = RESPONDER._decide(wire, "10.70.0.9", tcp=False)
            assert isinstance(d, Reply) and d.authoritative, (name, qtype)
