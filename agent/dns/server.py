"""The DNS responder's trio shell: UDP and TCP sockets on a gateway address, forwarding, limits.

Owns: ``Responder`` (one network: a UDP and a TCP socket on each of its gateway addresses,
bound with IP_FREEBIND so they can be opened before or while the gateway reconciler puts
the address on the bridge, and keep serving when the address is deleted and repaired),
the forwarding of what is not ours to the host's resolvers (``Upstreams``: the agent's own
/etc/resolv.conf, re-read when it changes; ``forward``: UDP for UDP clients, TCP for TCP
clients, a deadline per upstream and one for the whole), and the bounds on hostile input
(``DnsLimits``): the query size, a token bucket on UDP queries, forwards in flight, TCP
connections at a time, queries per connection, and an idle deadline on every read and
write of a TCP client (a slow client loses its connection, not our memory).
Does not: decide anything about a query (``agent.dns.resolver.decide``), or which networks
get a responder (``agent.dns.manager``).
"""

from __future__ import annotations

import errno
import logging
import os
import random
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import trio

from agent.dns.resolver import (
    MAX_QUERY,
    Forward,
    NetworkNames,
    Reply,
    decide,
    nameservers,
    upstream_reply,
)
from agent.log import kv

log = logging.getLogger("agent.dns.server")

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = getattr(socket, "IPV6_FREEBIND", 78)
"""linux/in.h and linux/in6.h; Python names neither on every version."""
DNS_PORT = 53
RESOLV_CONF = "/etc/resolv.conf"
RESOLV_CONF_MAX = 65536
"""Bytes of resolv.conf read (glibc's own parser stops far earlier)."""


@dataclass(frozen=True)
class DnsLimits:
    """The responder's bounds; each comment says what it protects."""

    udp_rate: float = 2000.0
    """Queries per second one responder takes over UDP (a flood must not starve gossip,
    which shares the agent's one thread); the excess is dropped and counted."""
    udp_burst: float = 400.0
    forwards: int = 64
    """Forwards in flight per responder; past it a query gets SERVFAIL at once."""
    forward_timeout: float = 2.0
    """Seconds we wait for one upstream."""
    forward_deadline: float = 4.0
    """Seconds for one forward over all upstreams (stub resolvers retry after 5 s)."""
    tcp_connections: int = 32
    """TCP connections at a time per responder address; more are closed at once."""
    tcp_idle: float = 5.0
    """Seconds a TCP client has for each query (length prefix and body) and each reply."""
    tcp_queries: int = 64
    """Queries one TCP connection may ask before it is closed."""


@dataclass
class DnsStats:
    """Counters over every responder of the agent (status and metrics)."""

    queries: int = 0
    answered: int = 0
    """Answered from the name index (names, PTR, NODATA)."""
    nxdomain: int = 0
    refused: int = 0
    """Clients outside the network's subnets."""
    malformed: int = 0
    """FORMERR, NOTIMP, or dropped without a reply (no header, a response, too long)."""
    forwarded: int = 0
    forward_failed: int = 0
    """Forwards answered with SERVFAIL (no upstream, timeouts, too many in flight)."""
    rate_limited: int = 0
    tcp_rejected: int = 0
    """TCP connections closed at once (too many) or for a bad length prefix or idleness."""


class Upstreams:
    """The host's resolvers: the ``nameserver`` lines of ``path`` (the agent's namespace),
    re-read when the file changes; ``exclude`` gives our own gateway addresses."""

    def __init__(self, path: str = RESOLV_CONF, exclude: Callable[[], Iterable[str]] = tuple,
                 port: int = DNS_PORT) -> None:
        self.path = path
        self.port = port
        """The upstreams' port (53; tests run theirs elsewhere)."""
        self.exclude = exclude
        self._seen: tuple[int, int] | None = None
        self._servers: list[str] = []
        self._checked = -1.0

    def current(self) -> list[str]:
        now = trio.current_time()
        if now - self._checked < 1.0:  # a stat per second at most, whatever the query rate
            return self._servers
        self._checked = now
        try:
            st = os.stat(self.path)
            seen = (st.st_mtime_ns, st.st_size)
            if seen != self._seen:
                with open(self.path, "rb") as f:
                    text = f.read(RESOLV_CONF_MAX).decode("utf-8", "replace")
                self._servers = nameservers(text, self.exclude())
                self._seen = seen
        except OSError:
            self._servers, self._seen = [], None
        return self._servers


async def _exchange_udp(server: tuple[str, int], wire: bytes, fwd: Forward, qid: int) -> bytes | None:
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with trio.socket.socket(family, socket.SOCK_DGRAM) as s:
        await s.connect(server)
        await s.send(wire)
        while True:  # anything that is not the answer (late, spoofed) is skipped
            data = await s.recv(65535)
            reply = upstream_reply(fwd, qid, data)
            if reply is not None:
                return reply


async def _exchange_tcp(server: tuple[str, int], wire: bytes, fwd: Forward, qid: int) -> bytes | None:
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with trio.socket.socket(family, socket.SOCK_STREAM) as s:
        await s.connect(server)
        await _send_all(s, struct.pack("!H", len(wire)) + wire)
        head = await _recv_exactly(s, 2)
        if head is None:
            return None
        data = await _recv_exactly(s, struct.unpack("!H", head)[0])
        return None if data is None else upstream_reply(fwd, qid, data)


async def forward(fwd: Forward, servers: list[str], *, tcp: bool, limits: DnsLimits, rng: random.Random,
                  port: int = DNS_PORT) -> bytes | None:
    """The upstreams' answer to ``fwd`` (the first that answers, in resolv.conf's order),
    or None when none did within the deadlines."""
    exchange = _exchange_tcp if tcp else _exchange_udp
    with trio.move_on_after(limits.forward_deadline):
        for server in servers:
            qid = rng.randrange(1 << 16)  # a fresh id per try: replies to the client's id are not ours
            with trio.move_on_after(limits.forward_timeout):
                try:
                    reply = await exchange((server, port), fwd.with_id(qid), fwd, qid)
                except OSError:
                    continue
                if reply is not None:
                    return reply
    return None


async def _recv_exactly(s: trio.socket.SocketType, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = await s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


async def _send_all(s: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await s.send(view)
        view = view[sent:]


async def open_socket(address: str, port: int, kind: socket.SocketKind) -> trio.socket.SocketType:
    """A UDP or listening TCP socket on ``address``, bound even while the address is not
    (yet) on any interface (IP_FREEBIND). OSError (port taken, no such family)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = trio.socket.socket(family, kind)
    try:
        if family == socket.AF_INET:
            s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await s.bind((address, port))
        if kind == socket.SOCK_STREAM:
            s.listen(64)
    except BaseException:
        s.close()
        raise
    return s


class Responder:
    """One network's DNS service on its gateway addresses. See the module docstring."""

    def __init__(
        self,
        network_id: str,
        addresses: tuple[str, ...],
        names: Callable[[], NetworkNames | None],
        upstreams: Upstreams,
        *,
        also: Callable[[str], Sequence[NetworkNames]] | None = None,
        port: int = DNS_PORT,
        limits: DnsLimits | None = None,
        stats: DnsStats | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.network_id = network_id
        self.addresses = addresses
        self.names = names
        self.also = also
        """Client address -> the other networks of its container (answered after ours)."""
        self.upstreams = upstreams
        self.port = port
        self.limits = limits or DnsLimits()
        self.stats = stats or DnsStats()
        self.rng = rng or random.Random()
        self.bound: list[tuple[str, str, int]] = []
        """(udp|tcp, address, port) of every socket, once bound (port 0 picks one each)."""
        self._forwards = 0
        self._tcp_open: dict[str, int] = {}
        self._tokens = self.limits.udp_burst
        self._refilled = 0.0
        self._socks: list[tuple[str, str, trio.socket.SocketType]] = []

    async def bind(self) -> None:
        """Open every socket; OSError (nothing left open) when one cannot be bound."""
        try:
            for addr in self.addresses:
                for kind, name in ((socket.SOCK_DGRAM, "udp"), (socket.SOCK_STREAM, "tcp")):
                    s = await open_socket(addr, self.port, kind)
                    self._socks.append((name, addr, s))
                    self.bound.append((name, addr, s.getsockname()[1]))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for _, _, s in self._socks:
            s.close()
        self._socks = []

    async def serve(self) -> None:
        """Serve on the bound sockets until cancelled; they close with the task."""
        self._refilled = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                for name, addr, s in self._socks:
                    nursery.start_soon(self._serve_udp if name == "udp" else self._serve_tcp, s, addr, nursery)
        finally:
            self.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """``bind`` (its OSError before ``started``), then ``serve``."""
        await self.bind()
        task_status.started()
        await self.serve()

    # -- one query ---------------------------------------------------------------------------

    def _count(self, decision: Reply | Forward | None) -> None:
        st = self.stats
        if decision is None:
            st.malformed += 1
        elif isinstance(decision, Forward):
            st.forwarded += 1
        elif decision.rcode == 5:  # REFUSED
            st.refused += 1
        elif decision.rcode == 3 and decision.authoritative:
            st.nxdomain += 1
        elif decision.authoritative:
            st.answered += 1
        else:
            st.malformed += 1

    def _decide(self, data: bytes, client: str, *, tcp: bool) -> Reply | Forward | None:
        self.stats.queries += 1
        names = self.names()
        if names is None:  # the network went; the manager is about to stop us
            return None
        # An outsider is refused (by ``decide``) before the container's other networks are
        # looked up: a refused client costs no lookup and no other network's names.
        also = self.also(client) if self.also is not None and names.inside(client) else ()
        decision = decide(data, client, names, tcp=tcp, also=also)
        self._count(decision)
        return decision

    def _may_forward(self, fwd: Forward) -> list[str] | None:
        """The upstreams to ask, reserving a forward slot; None (counted) when we cannot."""
        servers = self.upstreams.current()
        if not servers or self._forwards >= self.limits.forwards:
            self.stats.forward_failed += 1
            return None
        self._forwards += 1
        return servers

    async def _forward(self, fwd: Forward, servers: list[str], *, tcp: bool) -> bytes:
        """The upstreams' reply, or the client's SERVFAIL; releases the slot."""
        try:
            reply = await forward(fwd, servers, tcp=tcp, limits=self.limits, rng=self.rng,
                                  port=self.upstreams.port)
        finally:
            self._forwards -= 1
        if reply is None:
            self.stats.forward_failed += 1
            return fwd.failed
        return reply

    async def _handle(self, data: bytes, client: str, *, tcp: bool) -> bytes | None:
        """The reply to one query (forwarding awaited here), or None for no reply."""
        decision = self._decide(data, client, tcp=tcp)
        if not isinstance(decision, Forward):
            return None if decision is None else decision.wire
        servers = self._may_forward(decision)
        if servers is None:
            return decision.failed
        return await self._forward(decision, servers, tcp=tcp)

    def _take_token(self) -> bool:
        now = trio.current_time()
        lim = self.limits
        self._tokens = min(lim.udp_burst, self._tokens + (now - self._refilled) * lim.udp_rate)
        self._refilled = now
        if self._tokens < 1.0:
            self.stats.rate_limited += 1
            return False
        self._tokens -= 1.0
        return True

    # -- UDP ---------------------------------------------------------------------------------

    async def _serve_udp(self, s: trio.socket.SocketType, addr: str, nursery: trio.Nursery) -> None:
        while True:
            try:
                data, peer = await s.recvfrom(MAX_QUERY + 1)
            except OSError as exc:  # ICMP errors reported on the socket; never fatal
                if exc.errno == errno.EBADF:
                    raise
                log.debug(kv("dns-udp-recv-error", address=addr, error=exc.strerror or str(exc)))
                continue
            if not self._take_token():
                continue
            decision = self._decide(data, peer[0], tcp=False)
            if isinstance(decision, Forward):  # off the receive loop: it may wait seconds
                servers = self._may_forward(decision)
                if servers is None:
                    await self._send_udp(s, decision.failed, peer)
                else:
                    nursery.start_soon(self._forward_udp, s, decision, servers, peer)
            elif decision is not None:
                await self._send_udp(s, decision.wire, peer)

    async def _forward_udp(self, s: trio.socket.SocketType, fwd: Forward, servers: list[str],
                           peer: tuple[str, int]) -> None:
        await self._send_udp(s, await self._forward(fwd, servers, tcp=False), peer)

    async def _send_udp(self, s: trio.socket.SocketType, wire: bytes, peer: tuple[str, int]) -> None:
        try:
            await s.sendto(wire, peer)
        except OSError as exc:
            log.debug(kv("dns-udp-send-error", peer=peer[0], error=exc.strerror or str(exc)))

    # -- TCP ---------------------------------------------------------------------------------

    async def _serve_tcp(self, s: trio.socket.SocketType, addr: str, nursery: trio.Nursery) -> None:
        while True:
            try:
                conn, peer = await s.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning(kv("dns-tcp-accept-failed", address=addr, error=exc.strerror or str(exc)))
                    await trio.sleep(0.1)  # out of descriptors: let connections finish first
                continue
            if self._tcp_open.get(addr, 0) >= self.limits.tcp_connections:
                self.stats.tcp_rejected += 1
                conn.close()
                continue
            self._tcp_open[addr] = self._tcp_open.get(addr, 0) + 1
            nursery.start_soon(self._tcp_client, conn, peer[0], addr)

    async def _tcp_client(self, conn: trio.socket.SocketType, client: str, addr: str) -> None:
        lim = self.limits
        try:
            for _ in range(lim.tcp_queries):
                data = None
                with trio.move_on_after(lim.tcp_idle):
                    head = await _recv_exactly(conn, 2)
                    if head is None:
                        return
                    size = struct.unpack("!H", head)[0]
                    if size < 12 or size > MAX_QUERY:  # a hostile length prefix: no buffer for it
                        self.stats.tcp_rejected += 1
                        return
                    data = await _recv_exactly(conn, size)
                if data is None:
                    self.stats.tcp_rejected += 1  # idle or closed mid-message
                    return
                reply = await self._handle(data, client, tcp=True)
                if reply is None:
                    return  # nothing sensible to say: RFC 7766 lets us close
                with trio.move_on_after(lim.tcp_idle) as cs:
                    await _send_all(conn, struct.pack("!H", len(reply)) + reply)
                if cs.cancelled_caught:
                    self.stats.tcp_rejected += 1
                    return
        except OSError:
            return  # reset by the client
        finally:
            conn.close()
            self._tcp_open[addr] -= 1
