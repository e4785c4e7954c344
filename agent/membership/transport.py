"""Gossip sockets: UDP datagrams and memberlist's one-message-per-connection TCP streams.

Owns: binding the UDP + TCP pair on one port (IPv4, IPv6, dual-stack wildcard),
applying ``agent.addresses``' IPv4-mapped <-> plain IPv4 mapping to every datagram and
stream (so the core only ever sees plain text addresses), ICMP port-unreachable
reports from the socket error queue, the inbound stream server (read one complete
message, hand it on, write the reply, close), the budgets of stream messages
(``StreamBudget``: slots per source and kept for members' addresses, accept order by
source, an idle timeout, the bytes all of them may buffer; ``agent.limits``), outbound
stream requests and datagram sends (``DatagramSender``: straight to the kernel, trio
only when its buffer is full). Every socket operation has a deadline; no socket error
escapes as an exception. Does not: interpret messages beyond framing
(``gossip.wire.codec.stream_message_end``), parse addresses (``agent.addresses``),
or decide anything about members (``is_known`` is the driver's answer).

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
import dataclasses
import errno
import ipaddress
import logging
import math
import os
import socket as stdsocket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from agent.addresses import family_of, format_address, peer_address, sockaddr_for
from agent.limits import Limits
from gossip.effects import Address
from gossip.errors import DecodeError
from gossip.wire.codec import stream_message_end

log = logging.getLogger("agent.membership.transport")

MAX_DATAGRAM = 65536
"""Receive buffer per datagram, as memberlist's (a UDP datagram is never larger)."""
SOCKET_RCVBUF = 2 * 1024 * 1024
"""Kernel receive buffer we ask for (memberlist tries 2 MiB too); best effort."""
MAX_STREAM = Limits().stream_max_bytes
"""Largest stream message we read by default (``limits.stream_max_bytes``); memberlist
0.2.2 has no limit (memory hazard)."""
STREAM_LIMIT = Limits().stream_slots
"""Listen backlog: memberlist's 128 concurrent inbound streams (``limits.stream_slots``)."""

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
        self.last_read = 0
        # One receive buffer for the socket's life: a fresh 64 KiB per datagram left
        # glibc holding freed memory (the 30-min soak grew ~0.1 MiB/min; issue 18).
        self._space = bytearray(MAX_DATAGRAM)

    def drain(self, limit: int = 64) -> list[Address]:
        """Destinations whose datagrams met "port unreachable", oldest first.
        ``last_read`` says how many queued errors this call took off the queue."""
        found: list[Address] = []
        self.last_read = 0
        for _ in range(limit):
            try:
                _, ancdata, _, dest = self._sock.recvmsg(1, 1024, stdsocket.MSG_ERRQUEUE)
            except OSError:  # BlockingIOError: drained
                break
            self.last_read += 1
            if dest and port_unreachable(ancdata):
                found.append(peer_address(dest))
        return found

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        """One datagram without waiting (BlockingIOError when there is none), at most
        ``size`` (≤ ``MAX_DATAGRAM``) bytes of it, copied out at its exact length."""
        n, src = self._sock.recvfrom_into(self._space, min(size, MAX_DATAGRAM))
        return bytes(memoryview(self._space)[:n]), src

    def close(self) -> None:
        self._sock.close()


async def receive_datagrams(
    sock: trio.socket.SocketType,
    deliver: Callable[[Address, bytes], None],
    unreachable: Callable[[Address], None] | None = None,
) -> None:
    """Forever: read datagrams and ``deliver`` them (which must not block). With
    ``unreachable``, also report each destination that answered a datagram of ours with
    ICMP port unreachable (the kernel queues those when IP_RECVERR is on).

    Why not ``sock.recvfrom``: a queued ICMP error keeps the socket "readable" (POLLERR)
    until the error queue is drained, and when a *send* is what reported the error, no
    read ever fails to say so: trio's recvfrom then waits, wakes at once, gets EAGAIN
    and goes round again, a busy loop that lasts until another error surfaces in a read
    (seen as a CPU-bound agent while peers were being killed and restarted). So the
    loop reads without waiting itself and drains the error queue whenever a wake-up
    finds no datagram.
    """
    errors = ErrorQueue(sock)
    fruitless = 0
    try:
        while True:
            try:
                data, src = errors.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                dests = errors.drain()
                if unreachable is not None:
                    for dest in dests:
                        unreachable(dest)
                # A wake-up with neither a datagram nor a queued error twice in a row:
                # something else keeps the socket readable; never spin on it.
                fruitless = fruitless + 1 if errors.last_read == 0 else 0
                if fruitless >= 2:
                    await trio.sleep(0.01)
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                if exc.errno in _ERROR_ERRNOS:
                    dests = errors.drain()
                    if unreachable is not None:
                        for dest in dests:
                            unreachable(dest)
                    await trio.lowlevel.checkpoint()
                    continue
                log.debug("event=udp-receive-error error=%s", exc.errno)
                await trio.sleep(0.01)  # never spin on a persistent error
                continue
            fruitless = 0
            if data:  # memberlist discards zero-length datagrams too
                deliver(peer_address(src), data)
            await trio.lowlevel.checkpoint()
    finally:
        errors.close()


async def send_datagram(sock: trio.socket.SocketType, to: Address, data: bytes) -> bool:
    try:
        await sock.sendto(data, sockaddr_for(sock.family, to))
    except OSError as exc:
        log.debug("event=udp-send-error to=%s error=%s", format_address(to), exc.errno)
        return False
    return True


class DatagramSender:
    """Sends on a trio UDP socket straight away when the kernel has room, through a
    duplicate of its descriptor; only a full send buffer waits, through trio.

    Why: trio's ``sendto`` resolves the (numeric) address with ``getaddrinfo`` and yields
    to the scheduler twice per datagram: ~13.5 us against ~4.4 us for the send itself
    (measured on loopback, 2,000 sends of 300 bytes each way). A 100-member warm join has
    every agent send a few hundred gossip datagrams; so does every probe round. The
    outcome is the same: True when the datagram went, False (logged at debug) on any
    socket error; so are the cancellation semantics (one schedule point per send, none
    of the address resolution): ~8 us a send with it, against ~13 us through trio's
    ``sendto`` and ~3.6 us for the bare system call (same loopback test, best of 5 x
    2,000, 2026-12-05, load 2.1).
    """

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._trio = sock
        self._family = sock.family
        self._raw = stdsocket.socket(fileno=os.dup(sock.fileno()))
        self._raw.setblocking(False)

    async def send(self, to: Address, data: bytes) -> bool:
        # Trio's contract for an async operation (its own socket calls do the same):
        # cancelled before = not sent and Cancelled raised; sent = a schedule point
        # after, shielded so the caller learns the outcome. Without the yield a loop
        # of sends the kernel accepts never let another task run.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._raw.sendto(data, sockaddr_for(self._family, to))
        except BlockingIOError:
            return await send_datagram(self._trio, to, data)  # waits for room, as before
        except OSError as exc:
            log.debug("event=udp-send-error to=%s error=%s", format_address(to), exc.errno)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return False
        await trio.lowlevel.cancel_shielded_checkpoint()
        return True

    def close(self) -> None:
        self._raw.close()


# -- inbound stream budgets --------------------------------------------------------------------


READ_CHUNK = 64 * 1024
"""Read size while a stream message's end is not known yet."""
BODY_CHUNK = 1024 * 1024
"""Read size once it is (the rest is copied once, never parsed again)."""
_ZEROS: list[memoryview] = []
"""What a stream body's buffer grows by (a slice of it) before the kernel writes into it:
one block of ``BODY_CHUNK`` zeros, made by ``_zeros`` when the first message needs more
than one read (an agent whose streams all fit one read never makes it: ~0.07 MiB of RSS
measured, docs/performance.md)."""


def _zeros() -> memoryview:
    if not _ZEROS:
        _ZEROS.append(memoryview(bytes(BODY_CHUNK)))
    return _ZEROS[0]
QUIET_WAIT = 0.02
"""Before framing is tried again on a buffer that grew less than twice since the last
try: how long the peer must be quiet (doubling after each try that still needed more)."""
QUIET_WAIT_MAX = 1.0


@dataclass(eq=False)
class Slot:
    """One stream's place in the ``StreamBudget``: its source, the bytes it holds."""

    ip: str
    known: bool
    """The source address is a known member's."""
    evictable: bool = True
    """An inbound stream still reading its message (handed on: no longer)."""
    held: int = 0
    scope: trio.CancelScope | None = None
    gone: bool = False
    """Released or evicted: its counts are no longer in the budget."""


@dataclass
class StreamCounters:
    admitted: int = 0
    refused: int = 0
    """Inbound streams closed at once: their source or the slots were full."""
    evicted: int = 0
    """Streams still reading that were closed to make room for a fairer claim."""
    idle: int = 0
    """Streams closed for sending nothing for ``stream_idle_timeout``."""
    too_large: int = 0
    byte_waits: int = 0
    """Times a stream waited for room in the byte budget."""


class StreamBudget:
    """Slots and buffered bytes of stream messages, per source and for all together.

    Slots (inbound streams): at most ``stream_slots`` at once; connections from
    addresses that are not known members' (``is_known``; joiners, and anyone else on
    the underlay) share ``stream_slots - stream_slots_reserved`` of them, at most
    ``stream_slots_per_source`` each, so a flood of idle connections cannot lock
    members out of push/pull. When the pool a newcomer belongs to is full, the oldest
    still-reading stream of the source holding the most slots is closed for it if that
    source holds more than the newcomer would (accept order by source; a member's
    stream also displaces a non-member's).
    Bytes: every stream message buffered (inbound, and replies to our requests) holds
    its bytes in a budget of ``stream_buffer_bytes``, of which non-members may hold
    ``stream_buffer_unknown_bytes``; a stream whose message does not fit waits (within
    its timeouts), after displacing a still-reading non-member stream whose source
    holds more than its own would.
    """

    def __init__(self, limits: Limits | None = None, is_known: Callable[[str], bool] | None = None) -> None:
        self.limits = limits or Limits()
        self.is_known = is_known or (lambda ip: False)
        self.counters = StreamCounters()
        self.slots: dict[str, list[Slot]] = {}
        """Active inbound slots by source IP, oldest first."""
        self.total = 0
        self.unknown = 0
        self.bytes = 0
        self.unknown_bytes = 0
        self._freed = trio.Event()
        self._bytes_by_ip: dict[str, int] = {}

    # -- slots ----------------------------------------------------------------------------------

    def admit(self, ip: str) -> Slot | None:
        """A slot for a new inbound stream from ``ip``, or None: close it."""
        lim = self.limits
        known = self.is_known(ip)
        mine = len(self.slots.get(ip, ()))
        if not known and mine >= lim.stream_slots_per_source:
            self.counters.refused += 1
            return None
        if not self._room(known):
            victim = self._victim(lambda s: (not s.known) or known, mine + 1, by_bytes=False, member=known)
            if victim is None:
                self.counters.refused += 1
                return None
            self.evict(victim)
        slot = Slot(ip, known)
        self.slots.setdefault(ip, []).append(slot)
        self.total += 1
        self.unknown += not known
        self.counters.admitted += 1
        return slot

    def _room(self, known: bool) -> bool:
        lim = self.limits
        if self.total >= lim.stream_slots:
            return False
        return known or self.unknown < lim.stream_slots - lim.stream_slots_reserved

    def _victim(self, eligible: Callable[[Slot], bool], mine: int, *, by_bytes: bool,
                member: bool) -> Slot | None:
        """The oldest evictable, ``eligible`` slot of the source with the most (slots or
        bytes), if that is more than ``mine`` (what the claimant's source would hold);
        non-members' first, and for a ``member`` claimant a non-member's in any case."""
        best: Slot | None = None
        best_key: tuple[int, int] | None = None
        for ip, slots in self.slots.items():
            candidates = [s for s in slots if s.evictable and eligible(s)]
            if not candidates:
                continue
            weight = self._bytes_by_ip.get(ip, 0) if by_bytes else len(slots)
            stranger = not candidates[0].known
            key = (int(stranger), weight)
            if (weight > mine or (member and stranger)) and (best_key is None or key > best_key):
                best, best_key = candidates[0], key
        return best

    def evict(self, slot: Slot) -> None:
        """Close a stream now (its task ends at its next checkpoint) and free its share."""
        self.counters.evicted += 1
        if slot.scope is not None:
            slot.scope.cancel()
        self.release(slot)

    def release(self, slot: Slot) -> None:
        """The stream is done: its slot and bytes go back (idempotent; its task releases
        again when it ends, for bytes it took between an eviction and its cancellation)."""
        self.give(slot)
        if slot.gone:
            return
        slot.gone = True
        slots = self.slots.get(slot.ip)
        if slots is not None and slot in slots:
            slots.remove(slot)
            if not slots:
                del self.slots[slot.ip]
            self.total -= 1
            self.unknown -= not slot.known

    # -- bytes ------------------------------------------------------------------------------------

    def _fits(self, slot: Slot, n: int) -> bool:
        lim = self.limits
        if self.bytes + n > lim.stream_buffer_bytes:
            return False
        return slot.known or self.unknown_bytes + n <= lim.stream_buffer_unknown_bytes

    def can_ever_hold(self, slot: Slot, size: int) -> bool:
        lim = self.limits
        return size <= (lim.stream_buffer_bytes if slot.known else lim.stream_buffer_unknown_bytes)

    async def take(self, slot: Slot, total: int) -> None:
        """Let ``slot`` hold ``total`` bytes (it holds ``slot.held``): waits for room."""
        need = total - slot.held
        if need <= 0:
            return
        if slot.gone:  # evicted: its cancellation is delivered here
            await trio.lowlevel.checkpoint()
        waited = False
        while not self._fits(slot, need):
            mine = self._bytes_by_ip.get(slot.ip, 0) + need
            victim = self._victim(lambda s: s is not slot and not s.known and (slot.known or s.ip != slot.ip),
                                  mine, by_bytes=True, member=slot.known)
            if victim is not None:
                self.evict(victim)
                continue
            if not waited:
                waited = True
                self.counters.byte_waits += 1
            freed = self._freed
            await freed.wait()
        slot.held += need
        self.bytes += need
        self.unknown_bytes += 0 if slot.known else need
        self._bytes_by_ip[slot.ip] = self._bytes_by_ip.get(slot.ip, 0) + need

    def give(self, slot: Slot) -> None:
        """Everything ``slot`` holds goes back."""
        n, slot.held = slot.held, 0
        if not n:
            return
        self.bytes -= n
        self.unknown_bytes -= 0 if slot.known else n
        left = self._bytes_by_ip.get(slot.ip, 0) - n
        if left > 0:
            self._bytes_by_ip[slot.ip] = left
        else:
            self._bytes_by_ip.pop(slot.ip, None)
        self._freed.set()
        self._freed = trio.Event()

    def status(self) -> dict[str, Any]:
        return {"inbound": self.total, "inbound_non_members": self.unknown, "buffered_bytes": self.bytes,
                **dataclasses.asdict(self.counters)}


# -- streams -------------------------------------------------------------------------------------


async def read_message(
    stream: trio.abc.ReceiveStream,
    limit: int = MAX_STREAM,
    *,
    budget: StreamBudget | None = None,
    slot: Slot | None = None,
    idle_timeout: float | None = None,
) -> bytes | None:
    """Read until one complete stream message; None on EOF first, beyond ``limit``, or
    after ``idle_timeout`` seconds without a byte (the exchange as a whole has its own).

    Raises DecodeError when the bytes cannot be the start of a message. Reads
    nothing past the message: a Go peer keeps its side open waiting for our reply.
    Framing is tried when the buffer doubled or the peer went quiet, so the head is
    parsed O(log n) times; once the end is known (an encrypted stream's length field,
    or a complete head: ``stream_message_end``) the rest is read in large chunks and
    never looked at again. With a ``budget``, the bytes are held in ``slot`` (released
    by the caller once the message is handled): the whole framed size as soon as it is
    known, else what was read so far.
    """
    # The head while the end is unknown (exactly the bytes read); then the message so far,
    # filled in place up to ``filled``.
    buf = bytearray()
    filled = 0
    scratch = bytearray(READ_CHUNK)
    end: int | None = None
    tried = 0
    quiet_wait = QUIET_WAIT
    quiet = False
    idle_at = trio.current_time() + idle_timeout if idle_timeout is not None else math.inf
    while True:
        if end is None and buf and (quiet or len(buf) >= 2 * tried):
            quiet = False
            tried = len(buf)
            end = stream_message_end(buf)
            if end is not None:
                if end > limit or (budget is not None and slot is not None
                                   and not budget.can_ever_hold(slot, end)):
                    log.debug("event=stream-too-large bytes=%d", end)
                    if budget is not None:
                        budget.counters.too_large += 1
                    return None
                if budget is not None and slot is not None:
                    await budget.take(slot, end)
        if end is not None and filled >= end:
            return bytes(memoryview(buf)[:end])
        if end is None and filled > limit:
            log.debug("event=stream-too-large bytes=%d", filled)
            if budget is not None:
                budget.counters.too_large += 1
            return None
        want = READ_CHUNK if end is None else min(BODY_CHUNK, end - filled)
        if budget is not None and slot is not None and end is None:
            await budget.take(slot, filled + want)
        # Framing would look at the same head again: retry it only once the peer is quiet.
        retry_at = trio.current_time() + quiet_wait if end is None and buf and len(buf) < 2 * tried else math.inf
        if end is None:
            into = memoryview(scratch)[:want]
        else:
            # The body goes straight into its place. The buffer grows only as bytes come
            # (by a slice of a shared zero block: no temporary object), so a peer that
            # declares a large message and stalls holds its budget, not our memory.
            if len(buf) < filled + want:
                buf += _zeros()[: filled + want - len(buf)]
            into = memoryview(buf)[filled : filled + want]
        n = None
        try:
            with trio.move_on_at(min(idle_at, retry_at)):
                n = await _receive_into(stream, into)
            if end is None and n:
                buf += into[:n]
        finally:
            into.release()  # ``buf`` cannot grow while a view of it exists
        if n is None:
            if trio.current_time() >= idle_at:
                log.debug("event=stream-idle bytes=%d", filled)
                if budget is not None:
                    budget.counters.idle += 1
                return None
            quiet, quiet_wait = True, min(quiet_wait * 2, QUIET_WAIT_MAX)
            continue
        if not n:
            return None
        filled += n
        if idle_timeout is not None:
            idle_at = trio.current_time() + idle_timeout


async def _receive_into(stream: trio.abc.ReceiveStream, into: memoryview) -> int:
    """Read at most ``len(into)`` bytes into ``into``; 0 at EOF. On a socket stream the
    kernel writes into the buffer itself: ``receive_some`` would allocate up to
    ``BODY_CHUNK`` per chunk, memory glibc keeps after it is freed (issue 18's soak)."""
    if isinstance(stream, trio.SocketStream):
        try:
            return await stream.socket.recv_into(into)
        except OSError as exc:  # what receive_some raises for the same failure
            raise trio.BrokenResourceError from exc
    chunk = await stream.receive_some(len(into))
    into[: len(chunk)] = chunk
    return len(chunk)


async def serve_streams(
    sock: trio.socket.SocketType,
    handler: StreamHandler,
    on_decode_error: DecodeErrorSink,
    *,
    exchange_timeout: float,
    budget: StreamBudget | None = None,
) -> None:
    """Accept inbound streams forever within ``budget``'s slots and bytes (a default
    one when not given); each gets ``exchange_timeout`` for all of it and
    ``stream_idle_timeout`` between bytes until its message is complete."""
    budget = budget or StreamBudget()
    lim = budget.limits
    listener = trio.SocketListener(sock)

    async def serve_one(stream: trio.SocketStream, src: Address, slot: Slot) -> None:
        try:
            with trio.CancelScope() as scope:
                slot.scope = scope
                if slot.gone:  # evicted before it started
                    scope.cancel()
                async with stream:
                    with trio.move_on_after(exchange_timeout):
                        try:
                            data = await read_message(stream, lim.stream_max_bytes, budget=budget, slot=slot,
                                                      idle_timeout=lim.stream_idle_timeout)
                        except DecodeError as exc:
                            on_decode_error(src, exc)
                            return
                        if data is None:
                            return
                        slot.evictable = False
                        reply = await handler(src, data)
                        del data
                        if reply:
                            await stream.send_all(reply)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away; it will time out or retry
        finally:
            budget.release(slot)

    async with trio.open_nursery() as nursery:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # e.g. EMFILE: back off instead of spinning
                log.warning("event=tcp-accept-error errno=%s", exc.errno)
                await trio.sleep(0.1)
                continue
            try:
                src = peer_address(stream.socket.getpeername())
            except OSError:  # reset before we looked
                await stream.aclose()
                continue
            slot = budget.admit(src[0])
            if slot is None:
                log.debug("event=tcp-stream-refused src=%s reason=no-slot", format_address(src))
                await stream.aclose()
                continue
            nursery.start_soon(serve_one, stream, src, slot)


async def request(
    to: Address,
    data: bytes,
    *,
    expect_reply: bool,
    exchange_timeout: float,
    on_decode_error: DecodeErrorSink,
    budget: StreamBudget | None = None,
) -> bytes | None:
    """One outbound stream exchange; the reply, b"" when none is expected, None on failure.
    The reply is read within ``budget``'s bytes like an inbound message (as a member's)."""
    slot = Slot(to[0], known=True, evictable=False)
    try:
        with trio.move_on_after(exchange_timeout):
            try:
                sock = trio.socket.socket(family_of(to[0]), stdsocket.SOCK_STREAM)
                with sock:
                    await sock.connect(to)
                    async with trio.SocketStream(sock) as stream:
                        await stream.send_all(data)
                        if not expect_reply:
                            return b""
                        limit = budget.limits.stream_max_bytes if budget is not None else MAX_STREAM
                        return await read_message(stream, limit, budget=budget, slot=slot)
            except (OSError, trio.BrokenResourceError) as exc:
                log.debug("event=tcp-request-failed to=%s error=%s", format_address(to), type(exc).__name__)
            except DecodeError as exc:
                on_decode_error(to, exc)
        return None
    finally:
        if budget is not None:
            budget.give(slot)
