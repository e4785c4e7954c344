"""Three real agents in one process on 127.0.0.1: join, crash, graceful leave, bad input."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

import agent
from agent import service
from agent.cli import AgentOptions
from agent.ctl import main as ctl
from tests.agent.conftest import (
    InProcessAgent,
    control_exchange,
    query,
    start_agent,
    statuses,
    wait_until,
)


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
    assert not await trio.Path(c.socket).exists()

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
    assert lines[0].split() == ["NAME", "ADDRESS", "STATUS", "INCARNATION", "PROTOCOL", "TAGS"]
    # These in-process agents run no overlay extension, so they do not carry the tables'
    # agent tag: their default role tag marks them as agents from before it (protocol 1).
    assert {m["protocol"] for m in members} == {"1"}
    assert lines[1].startswith("a *") and "1" in lines[1].split()[4:6]
    out = io.StringIO()
    assert await trio.to_thread.run_sync(ctl.main, ["--socket", cluster[0].socket, "version"], out) == 0
    assert out.getvalue().splitlines() == [
        f"agentctl: {agent.__version__} (tables protocol 1-2)",
        f"agent:    {agent.__version__} on a, tables 1-2 (cluster uses 1)",
    ]
    out = io.StringIO()
    gone = str(Path(cluster[0].socket).with_name("none.sock"))
    assert await trio.to_thread.run_sync(ctl.main, ["--socket", gone, "version"], out) == 1
    assert out.getvalue().startswith(f"agentctl: {agent.__version__} (tables protocol 1-2)\nagent:    not reachable:")


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
    a, _b, c = cluster
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


async def test_ipv6_and_dual_stack(sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        v6 = await start_agent(nursery, sockdir, "v6", bind=("::1", 0))
        assert v6.addr[0] == "::1"
        other = await start_agent(nursery, sockdir, "other", join=(v6.addr,), bind=("::1", 0))
        # A dual-stack agent on "::" that IPv4 peers reach as 127.0.0.1.
        dual = await start_agent(nursery, sockdir, "dual", bind=("::", 0), advertise=("127.0.0.1", 0))
        assert dual.addr[0] == "127.0.0.1" and dual.addr[1] != 0
        v4 = await start_agent(nursery, sockdir, "v4", join=(dual.addr,))

        async def converged() -> bool:
            return (
                await statuses(v6.socket) == {"v6": "alive", "other": "alive"}
                and await statuses(dual.socket) == {"dual": "alive", "v4": "alive"}
                and await statuses(v4.socket) == {"dual": "alive", "v4": "alive"}
            )

        await wait_until(converged, "IPv6 and dual-stack pairs to converge")
        members = {m["name"]: m for m in await query(other.socket, "members")}
        assert members["v6"]["address"] == "::1"
        members = {m["name"]: m for m in await query(dual.socket, "members")}
        assert members["v4"]["address"] == "127.0.0.1"  # not ::ffff:127.0.0.1
        nursery.cancel_scope.cancel()


async def test_agentctl_events_follow(cluster: list[InProcessAgent]) -> None:
    a, _b, c = cluster
    out = io.StringIO()
    async with trio.open_nursery() as nursery:
        code: list[int] = []

        async def follow() -> None:
            argv = ["--socket", a.socket, "events", "--follow", "--format", "json"]
            code.append(await trio.to_thread.run_sync(ctl.main, argv, out))

        nursery.start_soon(follow)

        async def subscribed() -> bool:
            return bool((await query(a.socket, "status"))["subscribers"] == 1)

        await wait_until(subscribed, "agentctl to subscribe")
        c.kill()

        async def failure_printed() -> bool:
            return '"member-failed"' in out.getvalue()

        await wait_until(failure_printed, "agentctl to print c's failure")
        a.kill()  # the agent goes away: agentctl's stream ends and it exits 0
    assert code == [0]
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    failed = [e for e in events if e["type"] == "member-failed"]
    assert failed[0]["member"]["name"] == "c"


async def test_control_socket_in_use_or_stale(sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_agent(nursery, sockdir, "a")
        clash = AgentOptions(node="x", bind=("127.0.0.1", 0), control_socket=a.socket, profile="local")
        with pytest.raises(service.StartupError, match="in use by a running agent"):
            await service.run(clash, handle_signals=False)
        assert len(await query(a.socket, "members")) == 1  # the first agent is untouched
        nursery.cancel_scope.cancel()
    # A socket file left by a crashed agent is replaced.
    stale = f"{sockdir}/stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()
    async with trio.open_nursery() as nursery:
        b = await start_agent(nursery, sockdir, "stale")
        assert b.socket == stale
        assert len(await query(b.socket, "members")) == 1
        nursery.cancel_scope.cancel()


async def test_encrypted_cluster_refuses_a_wrong_key(sockdir: str, caplog: pytest.LogCaptureFixture) -> None:
    key, wrong = bytes(range(16)), bytes(range(1, 33))
    async with trio.open_nursery() as nursery:
        a = await start_agent(nursery, sockdir, "a", encrypt_keys=(key,))
        b = await start_agent(nursery, sockdir, "b", join=(a.addr,), encrypt_keys=(key,))
        c = await start_agent(nursery, sockdir, "c", join=(a.addr,), encrypt_keys=(wrong,))

        async def pair_formed() -> bool:
            return [await statuses(x.socket) for x in (a, b)] == [{"a": "alive", "b": "alive"}] * 2

        await wait_until(pair_formed, "a and b to form an encrypted cluster")

        async def refused() -> bool:
            return bool((await query(a.socket, "status"))["counters"]["decode_errors"] > 0)

        await wait_until(refused, "a to refuse c's join")
        assert await statuses(c.socket) == {"c": "alive"}
        assert "c" not in await statuses(a.socket)
        assert (await query(a.socket, "status"))["encrypted"] is True
        nursery.cancel_scope.cancel()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("event=decode-error" in w and "key" in w for w in warnings), warnings
