"""The overlay layer in in-process agents, without root: fake kernel, fake veth plumbing.

Real sockets on 127.0.0.1, the real tables and reconciler; ``FakeKernel`` stands in for
netlink and ``FakePlumber`` for the veth pairs, so the ops, their errors, rollback,
persistence/restore and readiness are tested in the fast tier. The real kernel and real
agents are in tests/netns/test_overlay_agents.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from agent import service
from agent.cli import AgentOptions
from agent.control import protocol as api
from agent.overlay.extension import READY_CONDITION, Overlay
from agent.overlay.veths import PlumbError, VethSpec, is_host_ifname
from dataplane.fake import FakeKernel
from dataplane.reconciler import ReconcilerConfig
from gossip.effects import Address
from tests.agent.conftest import WAIT, control_exchange, query, wait_until

NO_IPSEC = "IPsec unavailable: this kernel lacks ESP (test probe)"


@dataclass
class FakePlumber:
    """veth pairs in a dict; ``fail_next`` makes the next create fail like the kernel would."""

    made: dict[str, VethSpec] = field(default_factory=dict)
    fail_next: str | None = None
    removed: list[str] = field(default_factory=list)

    def check_target(self, path: str, ifname: str) -> None:
        if any(s.netns == path and s.ifname == ifname for s in self.made.values()):
            raise PlumbError(f"interface {ifname} already exists in network namespace {path}")

    def create(self, spec: VethSpec) -> None:
        if self.fail_next is not None:
            why, self.fail_next = self.fail_next, None
            raise PlumbError(why)
        self.made[spec.host_ifname] = spec

    def remove(self, host_ifname: str) -> bool:
        self.removed.append(host_ifname)
        return self.made.pop(host_ifname, None) is not None

    def existing(self, prefix: str) -> list[str]:
        return sorted(n for n in self.made if is_host_ifname(n, prefix))


@dataclass
class Agent:
    name: str
    addr: Address
    socket: str
    scope: trio.CancelScope
    overlay: Overlay
    kernel: FakeKernel
    plumber: FakePlumber


async def start(nursery: trio.Nursery, sockdir: str, name: str, *, join: tuple[Address, ...] = (),
                plumber: FakePlumber | None = None, ipsec: str | None = NO_IPSEC,
                state_dir: str | None = None, ip: str = "127.0.0.1", **extra: Any) -> Agent:
    kernel = FakeKernel()
    plumber = plumber or FakePlumber()
    overlay = Overlay(kernel_factory=lambda prefix: kernel, plumber=plumber,
                      reconciler_config=ReconcilerConfig(startup_grace=2.0), ipsec_probe=lambda: ipsec)
    opts = AgentOptions(node=name, bind=(ip, 0), join=join, control_socket=f"{sockdir}/{name}.sock",
                        profile="local", underlay_mtu=1500, state_dir=state_dir, **extra)
    scope = trio.CancelScope()

    async def runner(task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await service.run(opts, handle_signals=False, extensions=[overlay], task_status=task_status)

    addr: Address = await nursery.start(runner)
    return Agent(name, addr, opts.control_socket, scope, overlay, kernel, plumber)


async def error_of(path: str, op: str, args: dict[str, Any]) -> str:
    replies = await control_exchange(path, api.request_line(op, args))
    assert len(replies) == 1 and not replies[0]["ok"], replies
    message: str = replies[0]["error"]
    assert "\n" not in message and "Traceback" not in message
    return message


async def ready(path: str) -> bool:
    st = await query(path, "status")
    return bool(st["ready"])


@pytest.fixture
async def pair(sockdir: str) -> AsyncIterator[tuple[Agent, Agent]]:
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a")
        b = await start(nursery, sockdir, "b", join=(a.addr,), ip="127.0.0.2")  # its own VTEP
        for agent in (a, b):
            await wait_until(lambda agent=agent: ready(agent.socket), f"{agent.name} ready")
        yield a, b
        nursery.cancel_scope.cancel()


def netns_file(sockdir: str, name: str) -> str:
    """Stands in for a namespace path (the fake plumber only needs it to exist)."""
    path = os.path.join(sockdir, name)
    open(path, "w").close()
    return path


async def test_networks_and_endpoints_replicate_and_reach_the_dataplane(
    pair: tuple[Agent, Agent], sockdir: str
) -> None:
    a, b = pair
    net = await query(a.socket, "network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24"]})
    assert net["Driver"] == "overlay" and net["Scope"] == "global" and net["MTU"] is None

    async def b_has_it() -> bool:
        return [n["ID"] for n in await query(b.socket, "network", {"action": "ls"})] == [net["ID"]]

    await wait_until(b_has_it, "the network on b")
    ns_a, ns_b = netns_file(sockdir, "ca"), netns_file(sockdir, "cb")
    ea = await query(a.socket, "endpoint", {"action": "create", "network": "blue", "netns": ns_a,
                                             "ip": "10.9.0.5", "name": "web"})
    assert (ea["ipv4"], ea["mac"], ea["mtu"], ea["ifname"], ea["local"]) == (
        "10.9.0.5", "02:42:0a:09:00:05", 1450, "eth0", True)
    spec = a.plumber.made[ea["host_ifname"]]
    assert spec.addresses == (("10.9.0.5", 24),) and spec.mtu == 1450 and spec.netns == ns_a
    eb = await query(b.socket, "endpoint", {"action": "create", "network": net["ID"][:8], "netns": ns_b})

    async def both_see_both() -> bool:
        for agent in (a, b):
            rows = await query(agent.socket, "endpoint", {"action": "ls"})
            if {r["id"] for r in rows} != {ea["id"], eb["id"]}:
                return False
        return True

    await wait_until(both_see_both, "both endpoints on both agents")
    inspect = (await query(b.socket, "network", {"action": "inspect", "ref": "blue"}))[0]
    assert inspect["Options"]["com.docker.network.driver.overlay.vxlanid_list"] == str(net["VNI"])
    assert inspect["Containers"][ea["id"]]["IPv4Address"] == "10.9.0.5/24"
    assert inspect["Containers"][ea["id"]]["MacAddress"] == "02:42:0a:09:00:05"
    assert [p["Name"] for p in inspect["Peers"]] == ["a", "b"]

    # The kernel of a holds b's endpoint (the fake kernel: what the real one would get).
    vx = f"ov-vx-{net['VNI']}"

    def programmed() -> bool:
        return a.kernel.fdb.get((vx, eb["mac"])) == "127.0.0.2" and a.kernel.neigh.get((vx, eb["ipv4"])) == eb["mac"]

    async def check() -> bool:
        return programmed()

    await wait_until(check, "b's endpoint in a's kernel")
    report = await query(a.socket, "dataplane")
    assert report["networks"][0]["network_name"] == "blue" and report["networks"][0]["desired"]["fdb"] == 1
    st = await query(a.socket, "status")
    assert st["overlay"]["endpoints_local"] == 1 and st["overlay"]["endpoints_remote"] == 1
    assert st["last_reconcile"]["ok"] and READY_CONDITION not in st["waiting_for"]

    # Removal: interface, row, and the entries on the other side.
    removed = await query(a.socket, "endpoint", {"action": "rm", "ref": "web"})
    assert removed["id"] == ea["id"] and ea["host_ifname"] in a.plumber.removed

    async def gone() -> bool:
        return (ea["id"] not in {r["id"] for r in await query(b.socket, "endpoint", {"action": "ls"})}
                and (f"ov-vx-{net['VNI']}", ea["mac"]) not in b.kernel.fdb)

    await wait_until(gone, "a's endpoint gone from b")
    assert "in use" in await error_of(a.socket, "network", {"action": "rm", "ref": "blue"})
    await query(b.socket, "endpoint", {"action": "rm", "ref": eb["id"]})

    async def removable() -> bool:
        replies = await control_exchange(a.socket, api.request_line("network", {"action": "rm", "ref": "blue"}))
        return bool(replies[0]["ok"])

    await wait_until(removable, "the network to be removable")


async def test_bad_input_is_one_line_and_nothing_is_left(pair: tuple[Agent, Agent], sockdir: str) -> None:
    a, _ = pair
    await query(a.socket, "network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24"]})
    ns = netns_file(sockdir, "c1")
    cases = [
        ("network", {"action": "create", "name": "red", "subnets": ["10.9.0.0/16"]}, "overlaps"),
        ("network", {"action": "create", "name": "red", "subnets": ["bogus"]}, "bogus"),
        ("network", {"action": "create", "name": "red"}, "--subnet"),
        ("network", {"action": "create", "name": "red", "subnets": ["10.8.0.0/24"], "vni": "x"}, "integer"),
        ("network", {"action": "create", "name": "red", "subnets": ["10.8.0.0/24"], "encrypted": True}, NO_IPSEC),
        ("network", {"action": "inspect", "ref": "nope"}, "no such network"),
        ("network", {"action": "frob"}, "unknown action"),
        ("endpoint", {"action": "create", "network": "nope", "netns": ns}, "no such network"),
        ("endpoint", {"action": "create", "network": "blue", "netns": "missing-ns"}, "does not exist"),
        ("endpoint", {"action": "create", "network": "blue", "netns": ns, "ip": "10.1.1.1"}, "outside"),
        ("endpoint", {"action": "create", "network": "blue", "netns": ns, "mac": "01:00:5e:00:00:01"},
         "multicast"),
        ("endpoint", {"action": "create", "network": "blue", "netns": ns, "ifname": "a/b"}, "interface name"),
        ("endpoint", {"action": "create", "network": "blue"}, "--netns"),
        ("endpoint", {"action": "rm", "ref": "nope"}, "no such endpoint"),
    ]
    for op, args, needle in cases:
        assert needle in await error_of(a.socket, op, args), (op, args)
    # A failure while building the veth takes the published row back.
    a.plumber.fail_next = "cannot create the veth pair: Operation not permitted"
    message = await error_of(a.socket, "endpoint", {"action": "create", "network": "blue", "netns": ns})
    assert "Operation not permitted" in message
    assert await query(a.socket, "endpoint", {"action": "ls"}) == []
    assert a.plumber.made == {}
    st = await query(a.socket, "status")
    assert st["overlay"]["endpoints_local"] == 0
    # Still serving.
    ep = await query(a.socket, "endpoint", {"action": "create", "network": "blue", "netns": ns})
    # A retry of the same create (a client that timed out) gets the same endpoint back;
    # the same interface asked for with another spec is a conflict.
    again = await query(a.socket, "endpoint", {"action": "create", "network": "blue", "netns": ns,
                                                "ip": ep["ipv4"], "name": ep["name"]})
    assert (again["id"], again["ipv4"], again["mac"]) == (ep["id"], ep["ipv4"], ep["mac"])
    other_ip = "10.9.0.99" if ep["ipv4"] != "10.9.0.99" else "10.9.0.98"
    message = await error_of(a.socket, "endpoint", {"action": "create", "network": "blue", "netns": ns,
                                                     "ip": other_ip})
    assert "already belongs to endpoint" in message and "ipv4" in message
    assert "name differ" in await error_of(a.socket, "endpoint", {"action": "create", "network": "blue",
                                                                   "netns": ns, "name": "other"})
    assert [e["id"] for e in await query(a.socket, "endpoint", {"action": "ls"})] == [ep["id"]]


async def test_encrypted_network_when_the_kernel_supports_ipsec(sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", ipsec=None)
        net = await query(a.socket, "network", {"action": "create", "name": "sec", "subnets": ["10.7.0.0/24"],
                                                 "encrypted": True})
        assert net["Encrypted"] is True
        inspect = (await query(a.socket, "network", {"action": "inspect", "ref": "sec"}))[0]
        assert inspect["Options"]["encrypted"] == "" and inspect["MTU"] == 1416
        # Without the IPsec component (agent.overlay.ipsec) there is no per-peer SA view.
        assert "IPsec" not in inspect
        nursery.cancel_scope.cancel()


async def test_restart_restores_local_endpoints_and_drops_vanished_ones(sockdir: str, tmp_path: Any) -> None:
    state = str(tmp_path / "state")
    plumber = FakePlumber()
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", plumber=plumber, state_dir=state)
        await query(a.socket, "network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24"]})
        kept = await query(a.socket, "endpoint", {"action": "create", "network": "blue",
                                                   "netns": netns_file(sockdir, "c1"), "name": "kept"})
        lost = await query(a.socket, "endpoint", {"action": "create", "network": "blue",
                                                   "netns": netns_file(sockdir, "c2"), "name": "lost"})
        a.scope.cancel()
    del plumber.made[lost["host_ifname"]]  # its container went away while the agent was down
    plumber.made["ov-0123456789ab"] = VethSpec("ov-0123456789ab", "/x", "eth0", "02:00:00:00:00:01", (), 1450)
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", plumber=plumber, state_dir=state)
        rows = await query(a.socket, "endpoint", {"action": "ls"})
        assert [(r["id"], r["name"], r["ipv4"], r["ifname"]) for r in rows] == [
            (kept["id"], "kept", kept["ipv4"], "eth0")]
        assert "ov-0123456789ab" in plumber.removed  # an orphan veth of ours
        st = await query(a.socket, "status")
        assert any("lost" in w and "not restored" in w for w in st["warnings"])
        # The network came back with the endpoint (it is in use), alone in this cluster.
        assert [n["Name"] for n in await query(a.socket, "network", {"action": "ls"})] == ["blue"]
        nursery.cancel_scope.cancel()


async def test_dataplane_off_keeps_tables_and_refuses_endpoints(sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", dataplane=False)
        with trio.fail_after(WAIT):
            await wait_until(lambda: ready(a.socket), "ready without a dataplane")
        await query(a.socket, "network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24"]})
        assert "without a dataplane" in await error_of(
            a.socket, "endpoint", {"action": "create", "network": "blue", "netns": netns_file(sockdir, "c")})
        assert "without a dataplane" in await error_of(a.socket, "dataplane", {})
        assert a.overlay.rec is None and a.kernel.apply_calls == 0
        nursery.cancel_scope.cancel()


async def test_metrics_include_the_overlay(sockdir: str) -> None:
    from tests.agent.test_metrics import http_get, samples

    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", metrics_address=("127.0.0.1", 0))
        await query(a.socket, "network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24"]})
        await query(a.socket, "endpoint", {"action": "create", "network": "blue", "netns": netns_file(sockdir, "c")})
        host, port = (await query(a.socket, "status"))["metrics"].rsplit(":", 1)
        line, body = await http_get(host, int(port), b"GET /metrics HTTP/1.0\r\n\r\n")
        assert line == "HTTP/1.0 200 OK"
        got = samples(body.decode())
        assert got[("overlay_networks", ())] == 1
        assert got[("overlay_endpoints", (("scope", "local"),))] == 1
        assert got[("overlay_dataplane_reconciles_total", ())] >= 1
        assert got[("overlay_dataplane_entries", (("table", "fdb"),))] == 0
        nursery.cancel_scope.cancel()
