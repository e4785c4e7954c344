"""Three real agents in one process on 127.0.0.1: join, crash, graceful leave, bad input."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
from typing import Any

import trio

from agent import ctl
from tests.agent.conftest import InProcessAgent, control_exchange, query, statuses, wait_until


async def test_members_view(cluster: list[InProcessAgent]) -> None:
    a = cluster[0]
    members = await query(a.socket, "members")
    assert [m["name"] for m in members] == ["a", "b", "c"]
    by_name = {m["name"]: m for m in members}
    assert by_name["a"]["self"] is True
    assert by_name["b"]["self"] is False
    assert by_name["b"]["address"] == "127.0.0.1"
    assert by_name["b"]["port"] == cluster[1].addr[1]
    assert by_name["c"]["tags"] == {"role": "overlay-agent", "test": "c"}
    assert all(isinstance(m["incarnation"], int) for m in members)


async def test_control_socket_is_private(cluster: list[InProcessAgent]) -> None:
    mode = os.stat(cluster[0].socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


async def test_status(cluster: list[InProcessAgent]) -> None:
    st = await query(cluster[1].socket, "status")
    assert st["node"] == "b"
    assert st["members"]["alive"] == 3
    assert st["members"]["total"] == 3
    assert st["profile"] == "local"
    assert st["leaving"] is False
    assert st["counters"]["internal_errors"] == 0


async def test_crashed_member_is_marked_dead(cluster: list[InProcessAgent]) -> None:
    a, b, c = cluster
    c.kill()
    await c.finished.wait()

    async def both_see_c_dead() -> bool:
        return [(await statuses(x.socket))["c"] for x in (a, b)] == ["dead", "dead"]

    await wait_until(both_see_c_dead, "a and b to mark c dead")


async def test_agentctl_leave(cluster: list[InProcessAgent]) -> None:
    a, b, c = cluster
    out = io.StringIO()
    code = await trio.to_thread.run_sync(ctl.main, ["--socket", c.socket, "leave"], out)
    assert code == 0
    assert "leave" in out.getvalue().lower()
    with trio.fail_after(10):
        await c.finished.wait()  # the agent stops after a leave
    assert not os.path.exists(c.socket)

    async def both_see_c_left() -> bool:
        return [(await statuses(x.socket))["c"] for x in (a, b)] == ["left", "left"]

    await wait_until(both_see_c_left, "a and b to see c left")


async def test_agentctl_members_against_agent(cluster: list[InProcessAgent]) -> None:
    out = io.StringIO()
    code = await trio.to_thread.run_sync(
        ctl.main, ["--socket", cluster[0].socket, "members", "--format", "json"], out
    )
    assert code == 0
    members = json.loads(out.getvalue())
    assert {m["name"] for m in members} == {"a", "b", "c"}
    out = io.StringIO()
    assert await trio.to_thread.run_sync(ctl.main, ["--socket", cluster[0].socket, "members"], out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["NAME", "ADDRESS", "STATUS", "INCARNATION", "TAGS"]
    assert lines[1].startswith("a *")


async def test_malformed_control_requests_get_errors(cluster: list[InProcessAgent]) -> None:
    path = cluster[0].socket
    bad = [
        b"this is not json\n",
        b"[1, 2, 3]\n",
        b'{"op": "members"}\n',
        b'{"v": 99, "op": "members"}\n',
        b'{"v": 1}\n',
        b'{"v": 1, "op": "no-such-op"}\n',
        b'{"v": 1, "op": "members", "args": 5}\n',
        b"\xff\xfe\n",
    ]
    replies = await control_exchange(path, b"".join(bad) + b'{"v": 1, "op": "members", "id": 7}\n')
    assert len(replies) == len(bad) + 1
    for reply in replies[:-1]:
        assert reply["v"] == 1
        assert reply["ok"] is False
        assert reply["error"] and "\n" not in reply["error"]
    assert "unknown op" in replies[5]["error"]
    assert "version" in replies[3]["error"]
    assert replies[-1]["ok"] is True and replies[-1]["id"] == 7
    # Oversized: an error reply, the connection is closed, the agent serves on.
    replies = await control_exchange(path, b'{"v": 1, "op": "' + b"x" * 70000 + b'"}\n')
    assert len(replies) == 1 and replies[0]["ok"] is False
    assert "too large" in replies[0]["error"]
    replies = await control_exchange(path, b"y" * 200_000)
    assert replies[0]["ok"] is False
    assert len(await query(path, "members")) == 3


async def test_garbage_gossip_is_counted_not_fatal(cluster: list[InProcessAgent]) -> None:
    a = cluster[0]
    udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp:
        for payload in (b"\x07\x01\x00\x00", b"\xff" * 100, b"\x04\x81\xa1"):
            await udp.sendto(payload, a.addr)
    for payload in (b"\xee" * 10, b"\x06\x93\x01\x02"):
        tcp = await trio.open_tcp_stream(*a.addr)
        async with tcp:
            await tcp.send_all(payload)
            await tcp.send_eof()
            with trio.fail_after(10):
                assert await tcp.receive_some(100) == b""  # closed without a reply

    async def counted() -> bool:
        st = await query(a.socket, "status")
        return bool(st["counters"]["decode_errors"] >= 4)

    await wait_until(counted, "decode errors to be counted")
    st = await query(a.socket, "status")
    assert st["counters"]["internal_errors"] == 0
    assert st["members"]["alive"] == 3


async def _next_line(stream: trio.SocketStream, buf: bytearray) -> dict[str, Any]:
    while b"\n" not in buf:
        chunk = await stream.receive_some(4096)
        assert chunk, "agent closed the event stream"
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    reply: dict[str, Any] = json.loads(line)
    return reply


async def test_events_stream(cluster: list[InProcessAgent]) -> None:
    a, b, c = cluster
    stream = await trio.open_unix_socket(a.socket)
    async with stream:
        await stream.send_all(b'{"v": 1, "op": "events"}\n')
        buf = bytearray()
        with trio.fail_after(30):
            first = await _next_line(stream, buf)
            assert first["ok"] is True and first["result"] == {"subscribed": True}
            c.kill()
            while True:
                reply = await _next_line(stream, buf)
                assert reply["ok"] is True
                event = reply["event"]
                if event["type"] == "member-failed":
                    break
    assert event["member"]["name"] == "c"
    assert event["member"]["status"] == "dead"
