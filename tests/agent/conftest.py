"""Helpers for agent tests: short socket dirs, control-API queries, polling with deadlines.

In-process agents run ``service.run`` in the test's nursery (real sockets on
127.0.0.1, port 0, the ``local`` profile) and are "killed" by cancelling their
scope, which closes their sockets without a leave, like a crash.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from agent import service
from agent.cli import AgentOptions
from agent.control import protocol as api
from gossip.effects import Address

WAIT = 30.0
"""Generous upper bound for any convergence we wait for (never a timed assertion)."""


@pytest.fixture
def sockdir() -> Iterator[str]:
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="oa-test-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def control_exchange(path: str, payload: bytes) -> list[dict[str, Any]]:
    """Send raw bytes, half-close, and return every reply line the agent sends."""
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(payload)
        await stream.send_eof()
        buf = bytearray()
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                buf += chunk
    return [json.loads(line) for line in bytes(buf).splitlines() if line.strip()]


async def query(path: str, op: str, args: dict[str, Any] | None = None) -> Any:
    replies = await control_exchange(path, api.request_line(op, args))
    assert len(replies) == 1, replies
    assert replies[0]["ok"], replies[0]
    return replies[0]["result"]


async def statuses(path: str) -> dict[str, str]:
    """Member name -> status as seen by the agent behind ``path``."""
    return {m["name"]: m["status"] for m in await query(path, "members")}


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, within: float = WAIT) -> None:
    """Poll another agent's view (over its control API) until ``check`` holds."""
    with trio.move_on_after(within):
        while not await check():  # noqa: ASYNC110 - the state lives in other agents/processes
            await trio.sleep(0.05)
        return
    pytest.fail(f"timed out after {within}s waiting for {what}")


@dataclass
class InProcessAgent:
    name: str
    addr: Address
    socket: str
    scope: trio.CancelScope
    finished: trio.Event

    def kill(self) -> None:
        """Cancel the agent: sockets close, no leave is announced (a crash to peers)."""
        self.scope.cancel()


async def start_agent(
    nursery: trio.Nursery, sockdir: str, name: str, join: tuple[Address, ...] = (), **extra: Any
) -> InProcessAgent:
    extra.setdefault("bind", ("127.0.0.1", 0))
    opts = AgentOptions(
        node=name,
        join=join,
        control_socket=f"{sockdir}/{name}.sock",
        profile="local",
        tags={"role": "overlay-agent", "test": name},
        **extra,
    )
    scope = trio.CancelScope()
    finished = trio.Event()

    async def runner(task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                await service.run(opts, handle_signals=False, task_status=task_status)
        finally:
            finished.set()

    addr: Address = await nursery.start(runner)
    return InProcessAgent(name, addr, opts.control_socket, scope, finished)


@pytest.fixture
async def cluster(sockdir: str) -> AsyncIterator[list[InProcessAgent]]:
    """Three in-process agents that all see each other alive."""
    async with trio.open_nursery() as nursery:
        a = await start_agent(nursery, sockdir, "a")
        b = await start_agent(nursery, sockdir, "b", join=(a.addr,))
        c = await start_agent(nursery, sockdir, "c", join=(a.addr,))
        agents = [a, b, c]

        async def all_alive() -> bool:
            for agent in agents:
                seen = await statuses(agent.socket)
                if seen != {"a": "alive", "b": "alive", "c": "alive"}:
                    return False
            return True

        await wait_until(all_alive, "3 agents to see each other alive")
        yield agents
        nursery.cancel_scope.cancel()
