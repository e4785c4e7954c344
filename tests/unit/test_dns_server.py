"""agent.dns.server on loopback: UDP and TCP answers, forwarding, and hostile clients.

The responder listens on 127.0.0.1 (port 0: one picked per socket) for a network whose
subnet is 127.0.0.0/8, so the test's sockets are clients inside the network. A fake
upstream on loopback stands in for the host's resolver (its port is given to
``Upstreams``). Every wait has a deadline (``trio.fail_after``); nothing asserts timing.
"""

from __future__ import annotations

import random
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset
import trio
import trio.socket as tsocket

from agent.dns.resolver import Forward, NameIndex
from agent.dns.server import DnsLimits, Responder, Upstreams
from gossip.tables.rows import Endpoint, Network

NET = "e" * 64
DEADLINE = 10.0


def _names() -> NameIndex:
    net = Network(id=NET, name="blue", subnets=("127.0.0.0/8",), vni=7, encrypted=False, mtu=None,
                  created_at=0.0, creator="h", created=1)
    web = Endpoint(id="1" * 64, name="web", network=NET, ipv4="127.0.0.5", ipv6=None, mac="02:00:00:00:00:05",
                   owner="h", vtep="192.0.2.1", created=2)
    ix = NameIndex()
    ix.update([net], [web])
    return ix


@asynccontextmanager
async def responder(tmp_path: Path, limits: DnsLimits | None = None, upstream_port: int = 53,
                    resolv: str = "") -> AsyncIterator[tuple[Responder, int, int]]:
    conf = tmp_path / "resolv.conf"
    conf.write_text(resolv)
    ix = _names()
    r = Responder(NET, ("127.0.0.1",), lambda: ix.get(NET), Upstreams(str(conf), port=upstream_port), port=0,
                  limits=limits)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.run)
        ports = {kind: port for kind, _, port in r.bound}
        yield r, ports["udp"], ports["tcp"]
        nursery.cancel_scope.cancel()


async def udp_ask(port: int, q: dns.message.Message) -> dns.message.Message:
    with tsocket.socket(tsocket.AF_INET, tsocket.SOCK_DGRAM) as s, trio.fail_after(DEADLINE):
        await s.connect(("127.0.0.1", port))
        await s.send(q.to_wire())
        return dns.message.from_wire(await s.recv(65535))


async def udp_ask_retrying(port: int, name: str) -> dns.message.Message:
    """Like a stub resolver: ask again every 0.5 s (a datagram sent while the responder's
    receive buffer was full of junk is dropped by the kernel), within the deadline."""
    with trio.fail_after(DEADLINE):
        while True:
            with trio.move_on_after(0.5):
                return await udp_ask(port, dns.message.make_query(name, "A"))


async def recv_exactly(s: tsocket.SocketType, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await s.recv(n - len(buf))
        assert chunk, "connection closed"
        buf += chunk
    return buf


async def tcp_ask(port: int, q: dns.message.Message) -> dns.message.Message:
    with tsocket.socket(tsocket.AF_INET, tsocket.SOCK_STREAM) as s, trio.fail_after(DEADLINE):
        await s.connect(("127.0.0.1", port))
        wire = q.to_wire()
        await s.send(struct.pack("!H", len(wire)) + wire)
        size = struct.unpack("!H", await recv_exactly(s, 2))[0]
        return dns.message.from_wire(await recv_exactly(s, size))


async def closed_by_peer(s: tsocket.SocketType) -> bool:
    """Whether the responder closes ``s`` (reads until EOF, within the deadline)."""
    with trio.fail_after(DEADLINE):
        while True:
            try:
                if not await s.recv(4096):
                    return True
            except ConnectionResetError:
                return True


async def until(cond: Callable[[], bool]) -> None:
    """Poll ``cond`` (state of the responder in this process) until it holds, within the deadline."""
    with trio.fail_after(DEADLINE):
        while True:
            if cond():
                return
            await trio.sleep(0.01)


def a_records(r: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrs in r.answer for rd in rrs)


async def test_udp_and_tcp_answer_names(tmp_path: Path) -> None:
    async with responder(tmp_path) as (r, udp, tcp):
        assert a_records(await udp_ask(udp, dns.message.make_query("web", "A"))) == ["127.0.0.5"]
        assert a_records(await tcp_ask(tcp, dns.message.make_query("web.blue", "A"))) == ["127.0.0.5"]
        assert (await udp_ask(udp, dns.message.make_query("gone", "A"))).rcode() == dns.rcode.NXDOMAIN
        assert r.stats.answered == 2 and r.stats.nxdomain == 1


async def fake_upstream(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED, *, silent: bool = False
                        ) -> None:
    """Answers every A query with 192.0.2.99 over UDP and TCP on one loopback port."""
    tcp = tsocket.socket(tsocket.AF_INET, tsocket.SOCK_STREAM)
    udp = tsocket.socket(tsocket.AF_INET, tsocket.SOCK_DGRAM)
    with tcp, udp:
        await tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)
        port = tcp.getsockname()[1]
        await udp.bind(("127.0.0.1", port))

        def answer(wire: bytes) -> bytes:
            q = dns.message.from_wire(wire)
            resp = dns.message.make_response(q)
            resp.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.99"))
            return resp.to_wire()

        async def serve_udp() -> None:
            while True:
                data, peer = await udp.recvfrom(65535)
                if not silent:
                    await udp.sendto(answer(data), peer)

        async def serve_tcp() -> None:
            while True:
                conn, _ = await tcp.accept()
                with conn:
                    size = struct.unpack("!H", await recv_exactly(conn, 2))[0]
                    out = answer(await recv_exactly(conn, size))
                    await conn.send(struct.pack("!H", len(out)) + out)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_udp)
            nursery.start_soon(serve_tcp)
            task_status.started(port)


async def test_other_names_are_forwarded_over_udp_and_tcp(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(fake_upstream)
        async with responder(tmp_path, upstream_port=port, resolv="nameserver 127.0.0.1\n") as (r, udp, tcp):
            q = dns.message.make_query("example.com", "A")
            reply = await udp_ask(udp, q)
            assert reply.id == q.id and a_records(reply) == ["192.0.2.99"]
            q = dns.message.make_query("example.org", "A")
            reply = await tcp_ask(tcp, q)
            assert reply.id == q.id and a_records(reply) == ["192.0.2.99"]
            assert r.stats.forwarded == 2 and r.stats.forward_failed == 0
        nursery.cancel_scope.cancel()


async def test_silent_or_missing_upstream_gives_servfail(tmp_path: Path) -> None:
    limits = DnsLimits(forward_timeout=0.2, forward_deadline=0.5)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: fake_upstream(task_status, silent=True))
        async with responder(tmp_path, limits, upstream_port=port, resolv="nameserver 127.0.0.1\n") as (r, udp, _):
            assert (await udp_ask(udp, dns.message.make_query("example.com", "A"))).rcode() == dns.rcode.SERVFAIL
        nursery.cancel_scope.cancel()
    async with responder(tmp_path, limits, resolv="# no nameserver\n") as (r, udp, tcp):
        assert (await udp_ask(udp, dns.message.make_query("example.com", "A"))).rcode() == dns.rcode.SERVFAIL
        assert (await tcp_ask(tcp, dns.message.make_query("example.com", "A"))).rcode() == dns.rcode.SERVFAIL
        assert r.stats.forward_failed == 2


async def test_junk_datagrams_do_not_stop_serving(tmp_path: Path) -> None:
    rng = random.Random(13)
    valid = dns.message.make_query("web", "A").to_wire()
    async with responder(tmp_path, DnsLimits(udp_rate=1e6, udp_burst=1e6)) as (r, udp, _):
        with tsocket.socket(tsocket.AF_INET, tsocket.SOCK_DGRAM) as s:
            await s.connect(("127.0.0.1", udp))
            for i in range(600):
                if i % 3 == 0:
                    junk = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
                elif i % 3 == 1:
                    junk = valid[: rng.randrange(0, len(valid))]  # truncated
                else:
                    b = bytearray(valid)  # bit flips
                    for _ in range(3):
                        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                    junk = bytes(b)
                await s.send(junk)
            await s.send(b"\x00" * 5000)  # longer than any query we parse
        assert a_records(await udp_ask_retrying(udp, "web")) == ["127.0.0.5"]
        assert r.stats.malformed > 0


async def test_udp_flood_is_rate_limited_and_serving_resumes(tmp_path: Path) -> None:
    async with responder(tmp_path, DnsLimits(udp_rate=20, udp_burst=5)) as (r, udp, _):
        wire = dns.message.make_query("web", "A").to_wire()
        with tsocket.socket(tsocket.AF_INET, tsocket.SOCK_DGRAM) as s:
            await s.connect(("127.0.0.1", udp))
            for _ in range(200):
                await s.send(wire)
            await until(lambda: r.stats.rate_limited > 0)
        assert a_records(await udp_ask_retrying(udp, "web")) == ["127.0.0.5"]  # tokens come back


async def test_tcp_hostile_length_prefix_slow_client_and_connection_cap(tmp_path: Path) -> None:
    limits = DnsLimits(tcp_idle=0.3, tcp_connections=3)
    async with responder(tmp_path, limits) as (r, udp, tcp):
        with tsocket.socket(tsocket.AF_INET, tsocket.SOCK_STREAM) as s:  # 64 KiB announced, never sent
            await s.connect(("127.0.0.1", tcp))
            await s.send(b"\xff\xff" + b"\x00" * 100)
            assert await closed_by_peer(s)
        with tsocket.socket(tsocket.AF_INET, tsocket.SOCK_STREAM) as s:  # half a prefix, then silence
            await s.connect(("127.0.0.1", tcp))
            await s.send(b"\x00")
            assert await closed_by_peer(s)
        assert r.stats.tcp_rejected >= 2
        # still serving both ways
        assert a_records(await tcp_ask(tcp, dns.message.make_query("web", "A"))) == ["127.0.0.5"]
    async with responder(tmp_path, DnsLimits(tcp_idle=60.0, tcp_connections=3)) as (r, udp, tcp):
        held = [tsocket.socket(tsocket.AF_INET, tsocket.SOCK_STREAM) for _ in range(3)]
        try:
            for s in held:
                await s.connect(("127.0.0.1", tcp))
            await until(lambda: sum(r._tcp_open.values()) == 3)
            with tsocket.socket(tsocket.AF_INET, tsocket.SOCK_STREAM) as extra:
                await extra.connect(("127.0.0.1", tcp))
                assert await closed_by_peer(extra)  # closed at once, not after the 60 s idle time
            assert a_records(await udp_ask(udp, dns.message.make_query("web", "A"))) == ["127.0.0.5"]
        finally:
            for s in held:
                s.close()
        await until(lambda: sum(r._tcp_open.values()) == 0)  # the slots come back once the holders leave
        assert a_records(await tcp_ask(tcp, dns.message.make_query("web", "A"))) == ["127.0.0.5"]


async def test_pipelined_tcp_queries_on_one_connection(tmp_path: Path) -> None:
    async with responder(tmp_path) as (_, _, tcp):
        with tsocket.socket(tsocket.AF_INET, tsocket.SOCK_STREAM) as s, trio.fail_after(DEADLINE):
            await s.connect(("127.0.0.1", tcp))
            qs = [dns.message.make_query(n, "A") for n in ("web", "web.blue", "nope")]
            await s.send(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in qs)))
            got = []
            for _ in qs:
                size = struct.unpack("!H", await recv_exactly(s, 2))[0]
                got.append(dns.message.from_wire(await recv_exactly(s, size)))
        assert [g.id for g in got] == [q.id for q in qs]
        assert [g.rcode() for g in got] == [dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.NXDOMAIN]


def test_an_outsider_is_refused_before_the_other_networks_are_looked_up(tmp_path: Path) -> None:
    """``also`` (the client's other networks) is asked only for a client inside the
    network: a refused outsider costs no lookup and learns none of their names."""
    ix = _names()
    asked: list[str] = []

    def also(client: str) -> tuple[()]:
        asked.append(client)
        return ()

    r = Responder(NET, ("127.0.0.1",), lambda: ix.get(NET), Upstreams(str(tmp_path / "resolv.conf")),
                  also=also, port=0)
    query = dns.message.make_query("web", "A").to_wire()
    decision = r._decide(query, "192.0.2.9", tcp=False)
    assert decision is not None and not isinstance(decision, Forward)
    assert decision.rcode == dns.rcode.REFUSED and r.stats.refused == 1
    assert asked == []
    decision = r._decide(query, "127.0.0.9", tcp=False)
    assert decision is not None and not isinstance(decision, Forward) and decision.rcode == dns.rcode.NOERROR
    assert asked == ["127.0.0.9"]
