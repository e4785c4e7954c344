"""Gossip sockets: UDP datagrams and memberlist's one-message-per-connection TCP streams.

Owns: binding the UDP + TCP pair on one port (IPv4, IPv6, dual-stack wildcard),
applying ``agent.addresses``' IPv4-mapped <-> plain IPv4 mapping to every datagram and
stream (so the core only ever sees plain text addresses), ICMP port-unreachable
reports from the socket error queue, the inbound stream server (read one complete
message, hand it on, write the reply, close; at most ``STREAM_LIMIT`` at once),
and outbound stream requests. Every socket operation has a deadline; no socket
error escapes as an exception. Does not: interpret messages beyond framing
(``gossip.wire.codec.stream_message_size``), parse addresses (``agent.addresses``),
or decide anything about members.

memberlist 0.2.2's transport, which this one matches (docs/wire.md, "memberlist 0.2.2
facts the code relies on"; from its ``net.go``/``net_transport.go`` and checked
against serf 0.9.4): one port for UDP and TCP; a TCP connection carries one request
and its reply under one deadline, then closes; the Go side never half-closes (it keeps
writing open while it waits), so a reader must stop at the end of the declared
message instead of waiting for EOF; it reads datagrams into 64 KiB, asks for a 2 MiB
receive buffer, ignores empty datagrams and drops inbound push/pulls beyond 128 at once.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket as stdsocket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from agent.addresses import family_of, format_address, peer_address, sockaddr_for
from gossip.effects import Address
from gossip.errors import DecodeError
from gossip.wire.codec import stream_message_size

log = logging.getLogger("agent.membership.transport")

MAX_DATAGRAM = 65536
"""Receive buffer per datagram, as memberlist's (a UDP datagram is never larger)."""
SOCKET_RCVBUF = 2 * 1024 * 1024
"""Kernel receive buffer we ask for (memberlist tries 2 MiB too); best effort."""
MAX_STREAM = 32 * 1024 * 1024
"""Largest stream message we read; memberlist 0.2.2 has no limit (memory hazard)."""
STREAM_LIMIT = 128
"""Concurrent inbound streams, as memberlist; more are closed at once."""

# Linux error-queue constants (<linux/in.h>, <linux/in6.h>, <linux/errqueue.h>); the
# socket module of Python 3.11 does not name them.
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_SO_EE_ORIGIN_ICMP = 2
_SO_EE_ORIGIN_ICMP6 = 3
_PORT_UNREACHABLE = {_SO_EE_ORIGIN_ICMP: (3, 3), _SO_EE_ORIGIN_ICMP6: (1, 4)}
"""(ICMP type, code) of "port unreachable" per origin."""
_EXTENDED_ERR = struct.Struct("=IBBBBII")
"""struct sock_extended_err: errno, origin, type, code, pad, info, data."""
_ERROR_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})

StreamHandler = Callable[[Address, bytes], Awaitable[bytes | None]]
DecodeErrorSink = Callable[[Address, DecodeError], None]


@dataclass
class Sockets:
    udp: trio.socket.SocketType
    tcp: trio.socket.SocketType
    addr: Address
    """What we are bound to, with the real port when 0 was asked for."""

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


async def _bind_pair(ip: str, port: int) -> Sockets:
    family = family_of(ip)
    wildcard = ipaddress.ip_address(ip).is_unspecified
    tcp = trio.socket.socket(family, stdsocket.SOCK_STREAM)
    udp = trio.socket.socket(family, stdsocket.SOCK_DGRAM)
    try:
        if family == stdsocket.AF_INET6:
            # "::" serves IPv4 too (dual stack); a specific IPv6 address only IPv6.
            for s in (tcp, udp):
                s.setsockopt(stdsocket.IPPROTO_IPV6, stdsocket.IPV6_V6ONLY, 0 if wildcard else 1)
        # Restarts must not wait for TIME_WAIT; never on UDP (it would allow a
        # second agent on the same port on Linux).
        tcp.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
        await tcp.bind((ip, port))
        real_port = int(tcp.getsockname()[1])
        await udp.bind((ip, real_port))
        tcp.listen(STREAM_LIMIT)
        with contextlib.suppress(OSError):  # best effort, as memberlist
            udp.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, SOCKET_RCVBUF)
        with contextlib.suppress(OSError):  # ICMP errors to the error queue (Linux)
            if family == stdsocket.AF_INET6:
                udp.setsockopt(stdsocket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
                if wildcard:
                    udp.setsockopt(stdsocket.IPPROTO_IP, _IP_RECVERR, 1)
            else:
                udp.setsockopt(stdsocket.IPPROTO_IP, _IP_RECVERR, 1)
        return Sockets(udp=udp, tcp=tcp, addr=(ip, real_port))
    except BaseException:
        tcp.close()
        udp.close()
        raise


async def bind(addr: Address) -> Sockets:
    """Bind UDP and TCP on the same port. Port 0 picks a port free for both.

    Raises OSError with the reason (address in use, not an address of this host).
    """
    ip, port = addr
    attempts = 20 if port == 0 else 1
    for attempt in range(attempts):
        try:
            return await _bind_pair(ip, port)
        except OSError as exc:
            # With port 0 the TCP port the kernel chose may be taken for UDP: retry.
            if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def port_unreachable(ancdata: list[tuple[int, int, bytes]]) -> bool:
    """Whether an error-queue message's control data says ICMP(v6) port unreachable."""
    for level, kind, data in ancdata:
        if (level, kind) not in ((stdsocket.IPPROTO_IP, _IP_RECVERR),
                                 (stdsocket.IPPROTO_IPV6, _IPV6_RECVERR)):
            continue
        if len(data) < _EXTENDED_ERR.size:
            continue
        _, origin, icmp_type, code, _, _, _ = _EXTENDED_ERR.unpack_from(data)
        if _PORT_UNREACHABLE.get(origin) == (icmp_type, code):
            return True
    return False


class ErrorQueue:
    """Non-blocking reads of a UDP socket's error queue (IP_RECVERR), through a
    duplicate of its descriptor: trio's own recvmsg would wait for readability, and
    normal datagrams make the socket readable while the error queue stays empty."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = stdsocket.socket(fileno=os.dup(sock.fileno()))
        self._sock.setblocking(False)

    def drain(self, limit: int = 64) -> list[Address]:
        """Destinations whose datagrams met "port unreachable", oldest first."""
        found: list[Address] = []
        for _ in range(limit):
            try:
                _, ancdata, _, dest = self._sock.recvmsg(1, 1024, stdsocket.MSG_ERRQUEUE)
            except OSError:  # BlockingIOError: drained
                break
            if dest and port_unreachable(ancdata):
                found.append(peer_address(dest))
        return found

    def close(self) -> None:
        self._sock.close()


async def receive_datagrams(
    sock: trio.socket.SocketType,
    deliver: Callable[[Address, bytes], None],
    unreachable: Callable[[Address], None] | None = None,
) -> None:
    """Forever: read datagrams and ``deliver`` them (which must not block). With
    ``unreachable``, also report each destination that answered a datagram of ours with
    ICMP port unreachable (the kernel queues those when IP_RECVERR is on, and the next
    read fails once to say so)."""
    errors = ErrorQueue(sock) if unreachable is not None else None
    try:
        while True:
            try:
                data, src = await sock.recvfrom(MAX_DATAGRAM)
            except OSError as exc:
                if errors is not None and unreachable is not None and exc.errno in _ERROR_ERRNOS:
                    for dest in errors.drain():
                        unreachable(dest)
                    continue
                log.debug("event=udp-receive-error error=%s", exc.errno)
                await trio.sleep(0.01)  # never spin on a persistent error
                continue
            if data:  # memberlist discards zero-length datagrams too
                deliver(peer_address(src), data)
    finally:
        if errors is not None:
            errors.close()


async def send_datagram(sock: trio.socket.SocketType, to: Address, data: bytes) -> bool:
    try:
        await sock.sendto(data, sockaddr_for(sock.family, to))
    except OSError as exc:
        log.debug("event=udp-send-error to=%s error=%s", format_address(to), exc.errno)
        return False
    return True


async def read_message(stream: trio.abc.ReceiveStream, limit: int = MAX_STREAM) -> bytes | None:
    """Read until one complete stream message; None on EOF first or beyond ``limit``.

    Raises DecodeError when the bytes cannot be the start of a message. Reads
    nothing past the message: a Go peer keeps its side open waiting for our reply.
    """
    buf = bytearray()
    while True:
        if buf:
            size = stream_message_size(bytes(buf))
            if size is not None:
                return bytes(buf[:size])
            if len(buf) > limit:
                log.debug("event=stream-too-large bytes=%d", len(buf))
                return None
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        buf += chunk


async def serve_streams(
    sock: trio.socket.SocketType,
    handler: StreamHandler,
    on_decode_error: DecodeErrorSink,
    *,
    exchange_timeout: float,
    limit: int = STREAM_LIMIT,
) -> None:
    """Accept inbound streams forever; each gets ``exchange_timeout`` for all of it."""
    listener = trio.SocketListener(sock)
    active = 0

    async def serve_one(stream: trio.SocketStream, src: Address) -> None:
        nonlocal active
        try:
            async with stream:
                with trio.move_on_after(exchange_timeout):
                    try:
                        data = await read_message(stream)
                    except DecodeError as exc:
                        on_decode_error(src, exc)
                        return
                    if data is None:
                        return
                    reply = await handler(src, data)
                    if reply:
                        await stream.send_all(reply)
        except (OSError, trio.BrokenResourceError):
            pass  # the peer went away; it will time out or retry
        finally:
            active -= 1

    async with trio.open_nursery() as nursery:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # e.g. EMFILE: back off instead of spinning
                log.warning("event=tcp-accept-error errno=%s", exc.errno)
                await trio.sleep(0.1)
                continue
            if active >= limit:
                log.debug("event=tcp-stream-refused reason=too-many-streams")
                await stream.aclose()
                continue
            try:
                src = peer_address(stream.socket.getpeername())
            except OSError:  # reset before we looked
                await stream.aclose()
                continue
            active += 1
            nursery.start_soon(serve_one, stream, src)


async def request(
    to: Address,
    data: bytes,
    *,
    expect_reply: bool,
    exchange_timeout: float,
    on_decode_error: DecodeErrorSink,
) -> bytes | None:
    """One outbound stream exchange; the reply, b"" when none is expected, None on failure."""
    with trio.move_on_after(exchange_timeout):
        try:
            sock = trio.socket.socket(family_of(to[0]), stdsocket.SOCK_STREAM)
            with sock:
                await sock.connect(to)
                async with trio.SocketStream(sock) as stream:
                    await stream.send_all(data)
                    if not expect_reply:
                        return b""
                    return await read_message(stream)
        except (OSError, trio.BrokenResourceError) as exc:
            log.debug("event=tcp-request-failed to=%s error=%s", format_address(to), type(exc).__name__)
        except DecodeError as exc:
            on_decode_error(to, exc)
    return None
