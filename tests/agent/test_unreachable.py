"""ICMP port unreachable: the transport reports it, the core fails the probe at once.

Loopback answers a datagram to a closed port with ICMP port unreachable, exactly as a
host whose agent was killed does.
"""

from __future__ import annotations

import dataclasses
import select
import socket

import pytest
import trio

from agent.membership import transport
from gossip.config import Config
from gossip.effects import MemberSuspected
from tests.unit.swimharness import Harness


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns


async def test_transport_reports_the_destination_that_answered_port_unreachable() -> None:
    sockets = await transport.bind(("127.0.0.1", 0))
    dead = ("127.0.0.1", _closed_udp_port())
    seen: list[tuple[str, int]] = []
    hello = trio.Event()

    def deliver(src: tuple[str, int], data: bytes) -> None:
        if data == b"hello":
            hello.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.receive_datagrams, sockets.udp, deliver, seen.append)
            with trio.fail_after(5):
                while dead not in seen:
                    assert await transport.send_datagram(sockets.udp, dead, b"ping")
                    await trio.sleep(0.05)
                # Normal datagrams still flow after the error.
                assert await transport.send_datagram(sockets.udp, sockets.addr, b"hello")
                await hello.wait()
            nursery.cancel_scope.cancel()
    finally:
        sockets.close()
    assert set(seen) == {dead}


async def test_an_error_a_send_reported_is_drained_not_spun_on() -> None:
    # The ICMP error of the first datagram is reported by the *second* send (it takes
    # the socket's pending error), but its error-queue entry stays: the socket stays
    # readable (POLLERR) with nothing to read. The receive loop must drain the queue
    # (and report the destination) instead of waking, finding nothing, and going round.
    sockets = await transport.bind(("127.0.0.1", 0))
    dead = ("127.0.0.1", _closed_udp_port())
    seen: list[tuple[str, int]] = []
    try:
        assert await transport.send_datagram(sockets.udp, dead, b"ping")
        with trio.fail_after(5):
            # Until a send reports the first one's error.
            while await transport.send_datagram(sockets.udp, dead, b"ping"):  # noqa: ASYNC110
                await trio.sleep(0.01)
        poller = select.poll()
        poller.register(sockets.udp.fileno(), select.POLLIN)
        assert poller.poll(0), "the queued error should keep the socket readable"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.receive_datagrams, sockets.udp, lambda *_: None,
                               seen.append)
            with trio.fail_after(5):
                while dead not in seen:  # noqa: ASYNC110 (seen is a plain list)
                    await trio.sleep(0.01)
                while poller.poll(0):  # noqa: ASYNC110 (the last error may still arrive)
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        sockets.close()
    assert set(seen) == {dead}


def test_port_unreachable_parses_only_icmp_port_unreachable() -> None:
    def ancdata(origin: int, icmp_type: int, code: int) -> list[tuple[int, int, bytes]]:
        err = transport._EXTENDED_ERR.pack(111, origin, icmp_type, code, 0, 0, 0) + bytes(16)
        return [(socket.IPPROTO_IP, transport._IP_RECVERR, err)]

    assert transport.port_unreachable(ancdata(2, 3, 3))  # ICMP, port unreachable
    assert transport.port_unreachable(ancdata(3, 1, 4))  # ICMPv6, port unreachable
    assert not transport.port_unreachable(ancdata(2, 3, 1))  # host unreachable: not conclusive
    assert not transport.port_unreachable(ancdata(1, 3, 3))  # local origin
    assert not transport.port_unreachable([(socket.IPPROTO_IP, transport._IP_RECVERR, b"\x00")])
    assert not transport.port_unreachable([])


def _probing(config: Config) -> tuple[Harness, str]:
    """A converged 3-node cluster in which a's probe of another member is in flight."""
    h = Harness(config)
    for name in ("a", "b", "c"):
        h.add(name)
    h.join_all("a")
    h.wait(lambda: h.converged(["a", "b", "c"]), timeout=10)
    a = h.nodes["a"]
    while a._prober.current is None:  # run a's timers alone until it starts a probe
        a.tick(a.next_deadline())
    return h, a._prober.current.target


@pytest.mark.parametrize("enabled", [True, False])
def test_unreachable_probe_target_is_suspected_at_once(enabled: bool) -> None:
    config = dataclasses.replace(Config.lan(), fail_probe_on_unreachable=enabled)
    h, target = _probing(config)
    a = h.nodes["a"]
    now = a.next_deadline() - 1e-6  # before any probe timer fires
    # An unrelated address changes nothing.
    assert a.handle_unreachable(now, ("10.9.9.9", 7946)) == []
    effects = a.handle_unreachable(now, h.addr(target))
    suspected = [e.member.name for e in effects if isinstance(e, MemberSuspected)]
    if enabled:
        assert suspected == [target] and a.stats.unreachable_probes == 1
        member = a.member(target)
        assert member is not None and member.status.label == "suspect"
        assert a.awareness == 0  # our own network answered: local health untouched
        assert a.handle_unreachable(now, h.addr(target)) == []  # the probe is over
    else:
        assert suspected == [] and a.stats.unreachable_probes == 0


async def test_the_direct_sender_delivers_and_reports_errors_like_trios_sendto() -> None:
    """``DatagramSender`` (what the driver sends with) skips trio's per-send round trip:
    datagrams still arrive, and a pending ICMP error still makes a send report False."""
    sockets = await transport.bind(("127.0.0.1", 0))
    sender = transport.DatagramSender(sockets.udp)
    dead = ("127.0.0.1", _closed_udp_port())
    got: list[bytes] = []
    arrived = trio.Event()

    def deliver(src: tuple[str, int], data: bytes) -> None:
        got.append(data)
        if len(got) == 3:
            arrived.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.receive_datagrams, sockets.udp, deliver)
            with trio.fail_after(5):
                for data in (b"one", b"two", b"three"):
                    assert await sender.send(sockets.addr, data)
                await arrived.wait()
            nursery.cancel_scope.cancel()
        # No receive loop now: it would drain the error queue, which clears the error.
        with trio.fail_after(5):
            assert await sender.send(dead, b"ping")
            while await sender.send(dead, b"ping"):  # noqa: ASYNC110 (until the ICMP error surfaces)
                await trio.sleep(0.01)
    finally:
        sender.close()
        sockets.close()
    assert got == [b"one", b"two", b"three"]


async def test_a_send_the_kernel_accepts_still_yields_and_honours_cancellation() -> None:
    """``DatagramSender.send`` is a trio checkpoint: a cancelled send raises Cancelled
    and sends nothing, and a loop of sends lets other tasks run."""
    sockets = await transport.bind(("127.0.0.1", 0))
    sender = transport.DatagramSender(sockets.udp)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sink.bind(("127.0.0.1", 0))
        to = sink.getsockname()
        with trio.CancelScope() as scope:
            scope.cancel()
            await sender.send(to, b"cancelled")
        assert scope.cancelled_caught
        assert await sender.send(to, b"marker")
        ready, _, _ = select.select([sink], [], [], 5)
        assert ready, "the marker never arrived"
        assert sink.recv(64) == b"marker"  # the cancelled datagram never went before it

        ran = False

        async def other() -> None:
            nonlocal ran
            ran = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            for _ in range(100):  # far below what fills the sink's buffer
                assert await sender.send(to, b"x")
                if ran:
                    break
        assert ran, "100 accepted sends never yielded to another task"
    finally:
        sender.close()
        sink.close()
        sockets.close()


async def test_datagrams_come_out_of_the_shared_receive_buffer_at_their_own_length() -> None:
    """The receive loop reuses one buffer: a short datagram after a long one carries
    none of the long one's bytes, and a delivered datagram is not overwritten later."""
    sockets = await transport.bind(("127.0.0.1", 0))
    sender = transport.DatagramSender(sockets.udp)
    sent = [b"a" * 60000, b"bcd", b"", b"e" * 1500]
    got: list[bytes] = []
    arrived = trio.Event()

    def deliver(src: tuple[str, int], data: bytes) -> None:
        got.append(data)
        if len(got) == 3:
            arrived.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.receive_datagrams, sockets.udp, deliver)
            with trio.fail_after(5):
                for data in sent:
                    assert await sender.send(sockets.addr, data)
                await arrived.wait()
            nursery.cancel_scope.cancel()
    finally:
        sender.close()
        sockets.close()
    assert got == [sent[0], sent[1], sent[3]]  # the empty one is discarded
