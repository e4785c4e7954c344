"""The agent's ``cni`` op and the lifecycle detector in in-process agents (fake kernel and veths).

Fast tier (no root): ``tests.agent.test_overlay``'s agents on 127.0.0.x with
``FakePlumber``. Covered: ADD/DEL/CHECK-less paths of the op, its argument errors,
the container id kept with the endpoint across an agent restart (DEL after a restart
finds it), GC, STATUS, and an endpoint whose interface vanishes being withdrawn on
both agents (the periodic sweep: no netlink with a fake plumber).
"""

from __future__ import annotations

import os
from typing import Any

import trio

from agent.runtimes.cni.attachments import RUNTIME
from tests.agent.conftest import query, sockdir, wait_until
from tests.agent.test_overlay import Agent, FakePlumber, error_of, netns_file, pair, ready, start

__all__ = ["pair", "sockdir"]

CID = "c" * 64


async def cni(agent: Agent, **args: Any) -> Any:
    return await query(agent.socket, "cni", args)


async def net(a: Agent, b: Agent, sockdir: str) -> dict[str, Any]:
    """Network blue, with an endpoint on b so that b takes part in it (sees its endpoints)."""
    n: dict[str, Any] = await query(a.socket, "network", {"action": "create", "name": "blue",
                                                          "subnets": ["10.9.0.0/24"]})

    async def b_has_it() -> bool:
        return any(x["ID"] == n["ID"] for x in await query(b.socket, "network", {"action": "ls"}))

    await wait_until(b_has_it, "the network on b")
    await query(b.socket, "endpoint", {"action": "create", "network": "blue", "netns": netns_file(sockdir, "on-b")})
    return n


async def ids_on(agent: Agent) -> set[str]:
    return {e["id"] for e in await query(agent.socket, "endpoint", {"action": "ls"})}


async def test_add_del_gc_status(pair: tuple[Agent, Agent], sockdir: str) -> None:
    a, b = pair
    await net(a, b, sockdir)
    ns = netns_file(sockdir, "c1")
    ep = await cni(a, action="add", network="blue", container=CID, netns=ns, ifname="eth0", name="web")
    assert ep["name"] == "web" and ep["container"] == CID and ep["ipv4_cidr"].startswith("10.9.0.")
    assert a.overlay.interfaces[ep["id"]]["runtime"] == RUNTIME
    again = await cni(a, action="add", network="blue", container=CID, netns=ns, ifname="eth0")
    assert again["id"] == ep["id"]  # a repeated ADD is the same attachment
    # a second container named like the first gets a generated name, not an error
    other = await cni(a, action="add", network="blue", container="d" * 64, netns=netns_file(sockdir, "c2"),
                      ifname="eth0", name="web")
    assert other["name"].startswith("ep-")
    await wait_until(lambda: _has(b, {ep["id"], other["id"]}), "b to see both endpoints")

    assert await cni(a, action="status", network="blue") == {"network": ep["network"], "ready": True}
    assert await cni(a, action="gc", network="blue", valid=[{"container": CID, "ifname": "eth0"}]) == {
        "removed": [other["id"]]}
    assert await cni(a, action="del", network="blue", container=CID, ifname="eth0") == {"removed": [ep["id"]]}
    assert await cni(a, action="del", network="blue", container=CID, ifname="eth0") == {"removed": []}
    assert await cni(a, action="del", network="nosuch", container="e" * 64, ifname="eth0") == {"removed": []}
    await wait_until(lambda: _lacks(b, {ep["id"], other["id"]}), "b to drop both endpoints")
    assert not a.plumber.made

    for args, text in [
        ({"action": "frob", "network": "blue"}, "unknown action"),
        ({"action": "add", "network": "blue", "container": "-x", "netns": ns, "ifname": "eth0"}, "container id"),
        ({"action": "add", "network": "blue", "container": CID, "ifname": "eth0"}, "'netns'"),
        ({"action": "add", "network": "nosuch", "container": CID, "netns": ns, "ifname": "eth0"}, "nosuch"),
        ({"action": "gc", "network": "blue", "valid": "x"}, "'valid'"),
        ({"action": "status", "network": "nosuch"}, "nosuch"),
    ]:
        assert text in await error_of(a.socket, "cni", args)


async def _has(agent: Agent, ids: set[str]) -> bool:
    return ids <= await ids_on(agent)


async def _lacks(agent: Agent, ids: set[str]) -> bool:
    return not ids & await ids_on(agent)


async def test_vanished_interface_is_withdrawn_everywhere(pair: tuple[Agent, Agent], sockdir: str) -> None:
    a, b = pair
    await net(a, b, sockdir)
    gone = await cni(a, action="add", network="blue", container=CID, netns=netns_file(sockdir, "c1"), ifname="eth0")
    stays = await query(a.socket, "endpoint", {"action": "create", "network": "blue",
                                               "netns": netns_file(sockdir, "c2")})
    await wait_until(lambda: _has(b, {gone["id"], stays["id"]}), "b to see both endpoints")
    del a.plumber.made[gone["host_ifname"]]  # the kernel deleted the pair with the namespace
    await wait_until(lambda: _lacks(b, {gone["id"]}), "b to drop the vanished endpoint")
    assert await ids_on(a) >= {stays["id"]} and gone["id"] not in await ids_on(a)
    assert gone["id"] not in a.overlay.interfaces
    # its address is free again
    again = await cni(a, action="add", network="blue", container="f" * 64, netns=netns_file(sockdir, "c3"),
                      ifname="eth0", ip=gone["ipv4"])
    assert again["ipv4"] == gone["ipv4"]


async def test_container_id_survives_an_agent_restart(sockdir: str) -> None:
    state = os.path.join(sockdir, "state")
    plumber = FakePlumber()
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", plumber=plumber, state_dir=state)
        await wait_until(lambda: ready(a.socket), "a ready")
        await query(a.socket, "network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24"]})
        ep = await cni(a, action="add", network="blue", container=CID, netns=netns_file(sockdir, "c1"),
                       ifname="eth0")
        a.scope.cancel()
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", plumber=plumber, state_dir=state)
        await wait_until(lambda: ready(a.socket), "a restarted")
        assert a.overlay.interfaces[ep["id"]]["container"] == CID
        assert await cni(a, action="del", network="blue", container=CID, ifname="eth0") == {"removed": [ep["id"]]}
        nursery.cancel_scope.cancel()


async def test_add_with_ipam_ranges_creates_the_network_or_must_match_it(
        pair: tuple[Agent, Agent], sockdir: str) -> None:
    """The conflist's ``ipam.ranges`` (item 3): the first ADD creates the network with them
    (subnet, IP range, gateway: inspect shows Docker's keys), a matching ADD joins it, a
    differing one is refused in one line; aliases from ``runtimeConfig.aliases`` are published."""
    a, b = pair
    ranges = [{"subnet": "10.31.0.0/24", "ip_range": "10.31.0.64/26", "gateway": "10.31.0.254"}]
    ep = await cni(a, action="add", network="cninet", container=CID, netns=netns_file(sockdir, "r1"),
                   ifname="eth0", ranges=ranges, aliases=["db"])
    assert 64 <= int(ep["ipv4"].rsplit(".", 1)[1]) < 128, ep
    assert ep["gateways"] == [] or ep["gateways"] == ["10.31.0.254"], ep
    inspect = (await query(a.socket, "network", {"action": "inspect", "ref": "cninet"}))[0]
    assert inspect["IPAM"]["Config"] == [{"Subnet": "10.31.0.0/24", "IPRange": "10.31.0.64/26",
                                          "Gateway": "10.31.0.254"}], inspect["IPAM"]

    async def b_has_it() -> bool:
        return any(x["Name"] == "cninet" for x in await query(b.socket, "network", {"action": "ls"}))

    await wait_until(b_has_it, "the network on b")
    again = await cni(b, action="add", network="cninet", container="d" * 64, netns=netns_file(sockdir, "r2"),
                      ifname="eth0", ranges=ranges)
    assert again["network"] == ep["network"]
    listed = {e["id"]: e["aliases"] for e in await query(b.socket, "endpoint", {"action": "ls"})}
    assert listed.get(again["id"]) == []
    await wait_until(lambda: _aliases_seen(b, ep["id"], ["db"]), "b to see the alias")
    bad = [{"subnet": "10.31.0.0/24", "gateway": "10.31.0.1"}]
    text = await error_of(b.socket, "cni", {"action": "add", "network": "cninet", "container": "e" * 64,
                                            "netns": netns_file(sockdir, "r3"), "ifname": "eth0", "ranges": bad})
    assert "ipam.ranges differ from network 'cninet'" in text and "gateway 10.31.0.254" in text, text


async def _aliases_seen(agent: Agent, ep_id: str, names: list[str]) -> bool:
    return any(e["id"] == ep_id and e["aliases"] == names
               for e in await query(agent.socket, "endpoint", {"action": "ls"}))
