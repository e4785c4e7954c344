"""Inbound gossip streams under abuse: slots, idle timeouts, byte budget, framing cost.

Real TCP sockets on loopback; attackers use their own source addresses in 127/8 (the
agents' members live on 127.0.0.1-4), so the per-source and members-first rules see
them as strangers. Issue 18 items 4 and 5: 128 idle connections used to lock out every
push/pull and join; a 20 MiB stream was copied and re-parsed on every 64 KiB chunk;
128 such streams were all buffered at once.
"""

from __future__ import annotations

import contextlib
import socket as stdsocket

import pytest
import trio
import trio.lowlevel
import trio.testing

from agent.limits import Limits, MiB
from agent.membership import transport
from agent.membership.transport import StreamBudget
from gossip.effects import Address
from gossip.wire.codec import encode_node_state, encode_push_pull_body, frame_stream
from gossip.wire.messages import NodeState, PushNodeState
from tests.agent.conftest import query, start_agent, statuses, wait_until


def push_pull(user_state: int) -> bytes:
    node = PushNodeState("x", bytes([127, 0, 0, 9]), 7946, b"", 1, NodeState.ALIVE)
    body = encode_push_pull_body(False, [encode_node_state(node)], b"u" * user_state)
    return frame_stream(body, compress=False, keyring=None)


def sealed_shape(size: int) -> bytes:
    """Bytes framed like an encrypted stream (type 10, u32 length): the transport only
    frames, so its content does not matter here."""
    return bytes([10]) + size.to_bytes(4, "big") + b"\0" * size


async def connect_from(ip: str, to: Address) -> trio.SocketStream:
    sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
    try:
        await sock.bind((ip, 0))
        await sock.connect(to)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def listening() -> tuple[trio.socket.SocketType, Address]:
    sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
    try:
        await sock.bind(("127.0.0.1", 0))
        sock.listen(256)
    except BaseException:
        sock.close()
        raise
    return sock, sock.getsockname()


async def test_a_20_mib_message_is_framed_once_not_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    message = push_pull(20 * MiB)
    calls = []
    real = transport.stream_message_end

    def counting(buf: bytes | bytearray) -> int | None:
        calls.append(len(buf))
        return real(buf)

    monkeypatch.setattr(transport, "stream_message_end", counting)
    left, right = stdsocket.socketpair()
    async with trio.SocketStream(trio.socket.from_stdlib_socket(left)) as sender, \
            trio.SocketStream(trio.socket.from_stdlib_socket(right)) as receiver:
        got: list[bytes | None] = []
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                for i in range(0, len(message), 65536):  # the way a peer's writes arrive
                    await sender.send_all(message[i : i + 65536])

            nursery.start_soon(send)
            budget = StreamBudget(Limits())
            slot = transport.Slot("127.0.0.9", known=True)
            got.append(await transport.read_message(receiver, 32 * MiB, budget=budget, slot=slot))
            assert slot.held == len(message)  # the whole framed size, reserved once known
            budget.give(slot)
            assert budget.bytes == 0
    assert got == [message]
    # The head came with the first chunk: framed once (the old reader framed a copy of
    # the whole buffer again after each of the 320 chunks: ~5.5 CPU-s).
    assert len(calls) <= 3, calls


async def test_framing_of_a_growing_head_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A head that arrives in small pieces is framed when the buffer doubled or the peer
    paused, not once per piece."""
    node = encode_node_state(PushNodeState("n" * 40, bytes([127, 0, 0, 9]), 7946, b"m" * 100, 1, NodeState.ALIVE))
    message = frame_stream(encode_push_pull_body(False, [node] * 4000, b""), compress=False, keyring=None)
    calls = []
    real = transport.stream_message_end
    monkeypatch.setattr(transport, "stream_message_end", lambda buf: calls.append(len(buf)) or real(buf))
    left, right = stdsocket.socketpair()
    async with trio.SocketStream(trio.socket.from_stdlib_socket(left)) as sender, \
            trio.SocketStream(trio.socket.from_stdlib_socket(right)) as receiver, \
            trio.open_nursery() as nursery:

        async def send() -> None:
            for i in range(0, len(message), 4096):
                await sender.send_all(message[i : i + 4096])
                await trio.lowlevel.checkpoint()

        nursery.start_soon(send)
        assert await transport.read_message(receiver, 32 * MiB) == message
    pieces = len(message) // 4096
    assert len(calls) < 40 < pieces, (len(calls), pieces)


async def test_an_idle_or_silent_stream_times_out_in_seconds() -> None:
    sock, addr = await listening()
    handled: list[bytes] = []

    async def handler(src: Address, data: bytes) -> bytes | None:
        handled.append(data)
        return None

    budget = StreamBudget(Limits(stream_idle_timeout=0.3))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: transport.serve_streams(sock, handler, lambda s, e: None,
                                                           exchange_timeout=30.0, budget=budget))
        idle = await connect_from("127.0.1.1", addr)
        partial = await connect_from("127.0.1.2", addr)
        await partial.send_all(sealed_shape(1000)[:100])  # starts, then stalls
        with trio.fail_after(5):
            assert await idle.receive_some(10) == b""  # closed by the agent, not by us
            assert await partial.receive_some(10) == b""
        assert budget.counters.idle == 2 and budget.total == 0 and budget.bytes == 0
        await idle.aclose()
        await partial.aclose()
        nursery.cancel_scope.cancel()
    sock.close()
    assert handled == []


def test_slots_are_shared_by_source_and_members_keep_theirs() -> None:
    members = {"10.0.0.1", "10.0.0.2"}
    budget = StreamBudget(Limits(stream_slots=8, stream_slots_reserved=4, stream_slots_per_source=2),
                          is_known=lambda ip: ip in members)
    # One stranger gets its per-source share, no more.
    a = [budget.admit("192.0.2.1") for _ in range(3)]
    assert a[0] and a[1] and a[2] is None
    # Strangers share the 4 unreserved slots.
    b = [budget.admit("192.0.2.2") for _ in range(2)]
    assert all(b) and budget.unknown == 4
    # A new stranger displaces the oldest stream of a source holding more than it would.
    c = budget.admit("192.0.2.3")
    assert c is not None and a[0] is not None and a[0].gone and budget.counters.evicted == 1
    # ... but not once every source holds as little as it would.
    d = budget.admit("192.0.2.4")
    assert d is not None and budget.admit("192.0.2.5") is None
    # Members use the reserved slots, then displace strangers.
    assert all(budget.admit("10.0.0.1") for _ in range(4)) and budget.total == 8
    e = budget.admit("10.0.0.2")
    assert e is not None and budget.total == 8 and budget.unknown == 3
    # A stream already handed on is never displaced.
    for slots in budget.slots.values():
        for s in slots:
            s.evictable = False
    assert budget.admit("10.0.0.2") is None
    for slots in list(budget.slots.values()):
        for s in list(slots):
            budget.release(s)
    assert budget.total == 0 and budget.unknown == 0 and not budget.slots


async def test_buffered_bytes_stay_within_the_budget_and_every_message_gets_through() -> None:
    sock, addr = await listening()
    limits = Limits(stream_buffer_bytes=4 * MiB, stream_buffer_unknown_bytes=2 * MiB, stream_slots=64,
                    stream_slots_reserved=8, stream_slots_per_source=8)
    budget = StreamBudget(limits, is_known=lambda ip: ip == "127.0.0.1")
    peak = {"all": 0, "strangers": 0}
    handled: list[tuple[str, int]] = []

    async def handler(src: Address, data: bytes) -> bytes | None:
        peak["all"] = max(peak["all"], budget.bytes)
        peak["strangers"] = max(peak["strangers"], budget.unknown_bytes)
        await trio.sleep(0.05)
        handled.append((src[0], len(data)))
        return b"ok"

    async def send(ip: str, size: int) -> None:
        """Until answered: a member displaces strangers still reading, who try again
        (as a memberlist peer does at its next push/pull)."""
        for _ in range(20):
            stream = await connect_from(ip, addr)
            async with stream:
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(sealed_shape(size))
                    if await stream.receive_some(10) == b"ok":
                        return
            assert ip != "127.0.0.1", "a member's message was displaced"
        raise AssertionError(f"{ip} never got through")

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: transport.serve_streams(sock, handler, lambda s, e: None,
                                                               exchange_timeout=15.0, budget=budget))
            async with trio.open_nursery() as senders:
                for i in range(12):  # 12 strangers x 700 KiB > the 2 MiB they may hold
                    senders.start_soon(send, f"127.0.2.{i + 1}", 700 * 1024)
                for _ in range(3):  # a member's 1.5 MiB messages at the same time
                    senders.start_soon(send, "127.0.0.1", 1536 * 1024)
            nursery.cancel_scope.cancel()
    sock.close()
    assert len(handled) >= 15
    assert peak["strangers"] <= 2 * MiB and peak["all"] <= 4 * MiB, peak
    assert budget.bytes == 0 and budget.total == 0
    assert budget.counters.byte_waits > 0  # the budget really was the bound


async def test_a_message_larger_than_its_budget_is_refused_at_once() -> None:
    sock, addr = await listening()
    budget = StreamBudget(Limits(stream_buffer_bytes=2 * MiB, stream_buffer_unknown_bytes=1 * MiB))

    async def handler(src: Address, data: bytes) -> bytes | None:
        raise AssertionError("not for this message")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: transport.serve_streams(sock, handler, lambda s, e: None,
                                                           exchange_timeout=15.0, budget=budget))
        stream = await connect_from("127.0.3.1", addr)
        async with stream:
            await stream.send_all(sealed_shape(3 * MiB)[:70000])  # declares 3 MiB
            with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
                while await stream.receive_some(10):
                    pass  # until the agent closes it (a reset: our bytes were unread)
        assert budget.counters.too_large == 1 and budget.bytes == 0
        nursery.cancel_scope.cancel()
    sock.close()


async def keep_idle_connections(to: Address, sources: list[str], per_source: int,
                                opened: list[int], stop: trio.Event) -> None:
    """An attacker: idle connections from each source, re-opened as soon as closed."""

    async def one(ip: str) -> None:
        while not stop.is_set():
            try:
                stream = await connect_from(ip, to)
            except OSError:
                await trio.sleep(0.05)
                continue
            opened[0] += 1
            async with stream:
                with trio.move_on_after(60), contextlib.suppress(trio.BrokenResourceError, OSError):
                    while await stream.receive_some(10):
                        pass
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        for ip in sources:
            for _ in range(per_source):
                nursery.start_soon(one, ip)
        await stop.wait()
        nursery.cancel_scope.cancel()


async def test_idle_connections_do_not_lock_out_joins_or_members(sockdir: str) -> None:
    """160 idle connections from 10 addresses, re-opened whenever closed (more than the
    128 slots): a member still push/pulls with the agent and a new agent still joins."""
    async with trio.open_nursery() as nursery:
        target = await start_agent(nursery, sockdir, "target", bind=("127.0.0.2", 0))
        member = await start_agent(nursery, sockdir, "member", join=(target.addr,), bind=("127.0.0.3", 0))

        async def pair() -> bool:
            return await statuses(target.socket) == {"target": "alive", "member": "alive"}

        await wait_until(pair, "target and member to see each other")
        stop, opened = trio.Event(), [0]
        nursery.start_soon(keep_idle_connections, target.addr,
                           [f"127.0.4.{i + 1}" for i in range(10)], 16, opened, stop)
        await wait_until(lambda: _async(opened[0] >= 160), "the attacker's connections")
        await trio.sleep(0.5)
        # A member's push/pull (agentctl join run on the member, towards the target).
        result = await query(member.socket, "join", {"addresses": [f"127.0.0.2:{target.addr[1]}"]})
        assert result == {"contacted": 1, "failed": []}
        # A new agent joins through the target.
        newcomer = await start_agent(nursery, sockdir, "newcomer", join=(target.addr,), bind=("127.0.0.4", 0))

        async def joined() -> bool:
            return (await statuses(newcomer.socket)).get("target") == "alive"

        await wait_until(joined, "the newcomer to join through the target", within=20)
        streams = (await query(target.socket, "status"))["streams"]
        assert streams["refused"] + streams["evicted"] > 0, streams
        assert streams["inbound_non_members"] <= 64, streams
        stop.set()
        nursery.cancel_scope.cancel()


async def _async(value: bool) -> bool:
    return value


def test_stream_message_end_is_known_before_the_message_is_complete() -> None:
    from gossip.wire.codec import stream_message_end, stream_message_size

    plain = push_pull(100_000)
    assert stream_message_end(plain[:200]) == len(plain)  # the head is complete
    assert stream_message_size(plain[:200]) is None  # the message is not
    assert stream_message_size(plain) == len(plain)
    sealed = sealed_shape(5000)
    assert stream_message_end(sealed[:5]) == len(sealed) and stream_message_end(sealed[:4]) is None
    assert stream_message_end(b"") is None


@pytest.mark.parametrize("piece", [509, 4093, 65536, 3 * MiB])
async def test_a_message_reads_the_same_from_any_receive_stream_in_any_pieces(piece: int) -> None:
    """Socket streams are read into the message's buffer in place (``recv_into``); any
    other receive stream through ``receive_some``: both give the exact message, and a
    following message's bytes are left unread, whatever pieces the bytes come in."""
    message = push_pull(2 * MiB + 7)
    after = push_pull(10)
    for kind in ("socket", "memory"):
        if kind == "socket":
            left, right = stdsocket.socketpair()
            send_side: trio.abc.SendStream = trio.SocketStream(trio.socket.from_stdlib_socket(left))
            recv_side: trio.abc.ReceiveStream = trio.SocketStream(trio.socket.from_stdlib_socket(right))
        else:
            send_side, recv_side = trio.testing.memory_stream_one_way_pair()
        async with send_side, recv_side, trio.open_nursery() as nursery:

            async def send(data: bytes = message + after, out: trio.abc.SendStream = send_side) -> None:
                for i in range(0, len(data), piece):
                    await out.send_all(data[i : i + piece])

            nursery.start_soon(send)
            with trio.fail_after(30):
                assert await transport.read_message(recv_side, 32 * MiB) == message, kind
                assert await transport.read_message(recv_side, 32 * MiB) == after, kind
