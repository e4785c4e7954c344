"""Endpoint aliases through the agent (fake kernel): given at create, shown by ``endpoint
ls``, refused when invalid, kept across an agent restart (state dir)."""

from __future__ import annotations

import os

import trio

from tests.agent.conftest import query, sockdir, wait_until
from tests.agent.test_overlay import FakePlumber, error_of, netns_file, ready, start

__all__ = ["sockdir"]


async def _aliases(socket: str, ep_id: str) -> list[str] | None:
    return next((e["aliases"] for e in await query(socket, "endpoint", {"action": "ls"}) if e["id"] == ep_id), None)


async def test_aliases_are_published_checked_and_survive_a_restart(sockdir: str) -> None:
    state = os.path.join(sockdir, "state")
    plumber = FakePlumber()
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", plumber=plumber, state_dir=state)
        await wait_until(lambda: ready(a.socket), "a ready")
        await query(a.socket, "network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24"]})
        bad = await error_of(a.socket, "endpoint", {"action": "create", "network": "blue",
                                                    "netns": netns_file(sockdir, "c0"), "aliases": ["no space"]})
        assert "invalid alias name" in bad
        assert await query(a.socket, "endpoint", {"action": "ls"}) == []  # nothing made
        ep = await query(a.socket, "endpoint", {"action": "create", "network": "blue", "name": "db1",
                                                "netns": netns_file(sockdir, "c1"), "aliases": ["db", "primary"]})
        assert ep["aliases"] == ["db", "primary"]
        assert await _aliases(a.socket, ep["id"]) == ["db", "primary"]
        a.scope.cancel()
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", plumber=plumber, state_dir=state)
        await wait_until(lambda: ready(a.socket), "a restarted")
        assert await _aliases(a.socket, ep["id"]) == ["db", "primary"]
        await query(a.socket, "endpoint", {"action": "rm", "ref": "db1"})
        assert await _aliases(a.socket, ep["id"]) is None
        nursery.cancel_scope.cancel()
