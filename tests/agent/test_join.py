"""``agentctl join`` / the ``join`` control op: a running agent joins through seeds.

Agents start without seeds, then are told to join (what ``serf join`` does): the
reply counts the seeds contacted and names those that failed; bad addresses are
one-line errors, never a traceback, and the agent keeps running.
"""

from __future__ import annotations

import io
import json
import socket

import pytest
import trio

from agent.addresses import format_address
from agent.control import protocol as api
from agent.ctl import main as ctl
from tests.agent.conftest import control_exchange, query, start_agent, statuses, wait_until


def _closed_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on (connections are refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def _ctl(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = await trio.to_thread.run_sync(ctl.main, list(args), out)
    return code, out.getvalue()


async def test_agentctl_join_makes_two_lone_agents_one_cluster(sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_agent(nursery, sockdir, "a")
        b = await start_agent(nursery, sockdir, "b")
        c = await start_agent(nursery, sockdir, "c")
        assert set(await statuses(b.socket)) == {"b"}

        code, out = await _ctl("--socket", b.socket, "join", format_address(a.addr))
        assert code == 0
        assert out == "Successfully joined cluster by contacting 1 nodes.\n"

        code, out = await _ctl("--socket", c.socket, "join", "--format", "json", format_address(b.addr))
        assert code == 0
        assert json.loads(out) == {"contacted": 1, "failed": []}

        async def all_see_all() -> bool:
            for agent in (a, b, c):
                if await statuses(agent.socket) != {"a": "alive", "b": "alive", "c": "alive"}:
                    return False
            return True

        await wait_until(all_see_all, "the three agents to see each other after the joins")
        assert (await query(c.socket, "status"))["ready"] is True
        nursery.cancel_scope.cancel()


async def test_join_reports_unreachable_seeds(sockdir: str, capsys: pytest.CaptureFixture[str]) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_agent(nursery, sockdir, "a")
        b = await start_agent(nursery, sockdir, "b")
        dead = f"127.0.0.1:{_closed_port()}"

        code, out = await _ctl("--socket", b.socket, "join", dead, format_address(a.addr))
        assert code == 0
        assert out == f"Successfully joined cluster by contacting 1 nodes.\ncould not reach {dead}\n"

        code, out = await _ctl("--socket", b.socket, "join", dead)
        assert code == 1
        assert out == f"could not reach {dead}\n"
        assert capsys.readouterr().err == f"agentctl: join: no seed answered ({dead})\n"
        assert await query(b.socket, "status")  # still running
        nursery.cancel_scope.cancel()


async def test_bad_join_addresses_are_clear_errors(sockdir: str, capsys: pytest.CaptureFixture[str]) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_agent(nursery, sockdir, "a")
        code, _ = await _ctl("--socket", a.socket, "join", "seed.example")
        assert code == 1
        err = capsys.readouterr().err
        assert err.startswith("agentctl: join: 'seed.example' is not an IP address") and "Traceback" not in err

        code, _ = await _ctl("--socket", a.socket, "join", "127.0.0.1:99999")
        assert code == 1
        assert "port 99999 out of range" in capsys.readouterr().err

        # The op itself validates too (other clients than agentctl).
        for args, needle in (
            (None, '"addresses" must be a non-empty list'),
            ({"addresses": []}, '"addresses" must be a non-empty list'),
            ({"addresses": "127.0.0.1"}, '"addresses" must be a non-empty list'),
            ({"addresses": [7946]}, '"addresses" must be a non-empty list'),
            ({"addresses": ["1.2.3"]}, "is not an IP address"),
            ({"addresses": ["127.0.0.1"] * 300}, "at most 256 addresses"),
        ):
            [reply] = await control_exchange(a.socket, api.request_line("join", args))
            assert reply["ok"] is False and needle in reply["error"], (args, reply)
        assert set(await statuses(a.socket)) == {"a"}
        nursery.cancel_scope.cancel()
