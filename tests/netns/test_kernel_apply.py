"""LinuxKernel + Reconciler against the real kernel, in a scratch network namespace.

What iproute2 shows after an apply must equal the compiled state; operator objects
survive; stale devices go; a hand-deleted entry or device is repaired by the
monitor (not by the periodic resync, which is set to an hour here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from dataplane.compile import compile
from dataplane.kernel import LinuxKernel
from dataplane.model import EndpointSpec, NetworkSpec, OverlayView, State
from dataplane.plan import plan
from dataplane.reconciler import ReconcilerConfig
from dataplane.samples import docker_mac
from dataplane.scratch import Scratch, ScratchError
from dataplane.target import VxlanReconciler, VxlanTarget
from tests.netns.kernelhost import ME, add_host

pytestmark = pytest.mark.netns

NETS = (
    NetworkSpec("blue", 100, subnets=("10.0.0.0/24",)),
    NetworkSpec("red", 200, subnets=("10.0.0.0/24",)),  # overlapping on purpose
)


@pytest.fixture
def ns(kernel_scratch: Scratch) -> tuple[Scratch, str]:
    return kernel_scratch, add_host(kernel_scratch, "host", ME, ports=("b1", "r1"))


def remote(net: NetworkSpec, host: int, index: int, *, v6: bool = False) -> EndpointSpec:
    ip = f"10.0.0.{10 * host + index}"
    return EndpointSpec(
        net.id,
        f"{net.id}-{host}-{index}",
        docker_mac(ip),
        ip,
        f"fd00::{host:x}:{index:x}" if v6 else None,
        f"h{host}",
        f"198.51.100.{host}",
        version=1,
    )


def two_networks(extra: int = 0) -> OverlayView:
    rows = [
        EndpointSpec(
            "blue", "b1", docker_mac("10.0.0.2"), "10.0.0.2", None, "me", ME, True, "ovh-b1"
        ),
        EndpointSpec(
            "red", "r1", docker_mac("10.0.0.2"), "10.0.0.2", None, "me", ME, True, "ovh-r1"
        ),
    ]
    for host in (2, 3):
        for i in range(1, 4 + extra):
            rows.append(remote(NETS[0], host, i, v6=i == 1))
    rows.append(remote(NETS[1], 4, 1))
    alive = {"h2": True, "h3": True, "h4": True}
    return OverlayView(NETS, tuple(rows), ME, owner_alive=alive)


def equal_on_ours(actual: State, desired: State) -> bool:
    """Equal links and entries; ports equal in what we manage (not their kind)."""

    def port(state: State) -> dict[str, tuple[object, ...]]:
        return {n: (lk.master, lk.mtu, lk.up) for n, lk in state.ports.items()}

    entries = (actual.fdb, actual.flood, actual.neigh) == (
        desired.fdb,
        desired.flood,
        desired.neigh,
    )
    return entries and actual.links == desired.links and port(actual) == port(desired)


def kernel_view(s: Scratch, ns: str, desired: State) -> dict[str, Any]:
    """What iproute2 reports for the devices of ``desired``, in the model's terms."""
    fdb: dict[tuple[str, str], str] = {}
    flood: dict[tuple[str, str], bool] = {}
    neigh: dict[tuple[str, str], str] = {}
    links: dict[str, Any] = {}
    for name in desired.links:
        (info,) = s.json(ns, "ip", "-d", "link", "show", name)
        links[name] = info
        if info["linkinfo"]["info_kind"] != "vxlan":
            continue
        for row in s.json(ns, "bridge", "fdb", "show", "dev", name):
            if "self" in row.get("flags", []) and row.get("state") == "permanent" and "dst" in row:
                if row["mac"] == "00:00:00:00:00:00":
                    flood[(name, row["dst"])] = True
                else:
                    fdb[(name, row["mac"])] = row["dst"]
        for row in s.json(ns, "ip", "neigh", "show", "dev", name):
            if "PERMANENT" in row.get("state", []):
                neigh[(name, row["dst"])] = row["lladdr"]
    ports = {p: s.json(ns, "ip", "-d", "link", "show", p)[0] for p in desired.ports}
    return {"links": links, "ports": ports, "fdb": fdb, "flood": flood, "neigh": neigh}


def assert_kernel_matches(s: Scratch, ns: str, desired: State) -> None:
    seen = kernel_view(s, ns, desired)
    assert seen["fdb"] == dict(desired.fdb)
    assert seen["flood"] == dict(desired.flood)
    assert seen["neigh"] == dict(desired.neigh)
    for name, want in desired.links.items():
        info = seen["links"][name]
        assert info["mtu"] == want.mtu and "UP" in info["flags"]
        assert info.get("master") == want.master
        assert info["linkinfo"]["info_kind"] == want.kind
        assert info.get("inet6_addr_gen_mode") == "none"
        if want.vxlan is not None:
            data = info["linkinfo"]["info_data"]
            local = data["local6"] if ":" in want.vxlan.local else data["local"]
            assert data["id"] == want.vxlan.vni and local == want.vxlan.local
            assert data["port"] == want.vxlan.port
            assert data["learning"] is False and data["proxy"] is True
    for name, want in desired.ports.items():
        info = seen["ports"][name]
        assert (
            info["mtu"] == want.mtu and info.get("master") == want.master and "UP" in info["flags"]
        )


def test_apply_programs_exactly_the_compiled_state_and_is_idempotent(
    ns: tuple[Scratch, str],
) -> None:
    s, name = ns
    desired = compile(two_networks())
    kernel = LinuxKernel(name)
    try:
        ops = plan(desired, kernel.read(desired))
        result = kernel.apply(ops)
        assert result.ok, result.errors
        assert_kernel_matches(s, name, desired)
        again = kernel.read(desired)
        assert equal_on_ours(again, desired) and plan(desired, again) == []
        # Changed tables: one endpoint moves host, one disappears, more arrive.
        changed = compile(two_networks(extra=2))
        result = kernel.apply(plan(changed, kernel.read(changed)))
        assert result.ok, result.errors
        assert_kernel_matches(s, name, changed)
        # Last local endpoint of "red" gone: its devices go, "blue" stays intact.
        view = two_networks()
        view = OverlayView(
            view.networks,
            tuple(e for e in view.endpoints if e.id != "r1"),
            ME,
            owner_alive=view.owner_alive,
        )
        fewer = compile(view)
        assert kernel.apply(plan(fewer, kernel.read(fewer))).ok
        assert "ov-vx-200" not in s.ip(name, "link") and "ov-br-200" not in s.ip(name, "link")
        assert_kernel_matches(s, name, fewer)
    finally:
        kernel.close()


def test_operator_objects_survive_and_stale_devices_are_removed(ns: tuple[Scratch, str]) -> None:
    s, name = ns
    s.batch(
        name,
        [
            "link add opbr0 type bridge",
            f"link add opvx0 type vxlan id 999 local {ME} dstport 4789 nolearning",
            "link set opvx0 master opbr0",
            "neigh replace 198.51.100.77 lladdr 02:00:00:00:00:77 dev eth0 nud permanent",
            # a network of ours whose endpoints left while the agent was down
            "link add ov-br-300 type bridge",
            f"link add ov-vx-300 type vxlan id 300 local {ME} dstport 4789",
        ],
    )
    s.batch(name, ["fdb append 00:00:00:00:00:00 dev opvx0 dst 198.51.100.9"], tool="bridge")
    s.batch(
        name,
        ["fdb replace 02:00:00:00:00:09 dev opvx0 dst 198.51.100.9 self permanent"],
        tool="bridge",
    )
    before = (
        s.json(name, "bridge", "fdb", "show", "dev", "opvx0"),
        s.json(name, "ip", "neigh", "show", "dev", "eth0", "nud", "permanent"),
        s.json(name, "ip", "-d", "link", "show", "opvx0")[0]["linkinfo"],
    )
    desired = compile(two_networks())
    kernel = LinuxKernel(name)
    try:
        assert kernel.apply(plan(desired, kernel.read(desired))).ok
        assert kernel.apply(plan(desired, kernel.read(desired))).applied == 0
    finally:
        kernel.close()
    after = (
        s.json(name, "bridge", "fdb", "show", "dev", "opvx0"),
        s.json(name, "ip", "neigh", "show", "dev", "eth0", "nud", "permanent"),
        s.json(name, "ip", "-d", "link", "show", "opvx0")[0]["linkinfo"],
    )
    assert after == before
    links = s.ip(name, "-o", "link")
    assert "ov-vx-300" not in links and "ov-br-300" not in links and "opbr0" in links
    assert_kernel_matches(s, name, desired)


def test_ipv6_underlay(ns: tuple[Scratch, str]) -> None:
    s, name = ns
    s.ip(name, "addr", "add", "2001:db8::1/64", "dev", "eth0", "nodad")
    view = two_networks()
    rows = tuple(
        e
        if e.local
        else EndpointSpec(
            e.network_id,
            e.id,
            e.mac,
            e.ipv4,
            e.ipv6,
            e.owner,
            f"2001:db8::{e.owner[1:]}",
            version=1,
        )
        for e in view.endpoints
    )
    desired = compile(OverlayView(NETS, rows, "2001:db8::1", owner_alive=view.owner_alive))
    assert desired.links["ov-vx-100"].mtu == 1430
    kernel = LinuxKernel(name)
    try:
        assert kernel.apply(plan(desired, kernel.read(desired))).ok
        assert equal_on_ours(kernel.read(desired), desired)
    finally:
        kernel.close()
    seen = kernel_view(s, name, desired)
    assert seen["fdb"] == dict(desired.fdb) and ("ov-vx-100", "2001:db8::2") in seen["flood"]
    assert seen["links"]["ov-vx-100"]["linkinfo"]["info_data"]["local6"] == "2001:db8::1"


def bulk_rows(vtep: Callable[[int], str], keep: int = 40) -> OverlayView:
    """blue: ``keep`` dual-stack remote endpoints per host on two hosts (neighbour runs
    of both families: split by family, each packed by columns); red: 40 IPv4-only ones
    (runs of one family), as are both networks' FDB rows; the flood rows are runs too
    short for columns (packed entry by entry)."""
    rows = [
        EndpointSpec("blue", "b1", docker_mac("10.0.0.2"), "10.0.0.2", None, "me", ME, True, "ovh-b1"),
        EndpointSpec("red", "r1", docker_mac("10.0.0.2"), "10.0.0.2", None, "me", ME, True, "ovh-r1"),
    ]  # fmt: skip
    for host in (2, 3):
        for i in range(keep):
            ip = f"10.0.{host}.{i + 10}"
            v6 = f"fd00::{host}:{i + 10:x}"
            row = EndpointSpec("blue", f"b-{host}-{i}", docker_mac(ip), ip, v6, f"h{host}", vtep(host))
            rows.append(row)
    for i in range(40):
        ip = f"10.0.4.{i + 10}"
        rows.append(EndpointSpec("red", f"r-{i}", docker_mac(ip), ip, None, "h4", vtep(4), version=1))
    local = vtep(1)
    rows = [
        EndpointSpec(e.network_id, e.id, e.mac, e.ipv4, e.ipv6, e.owner, local, True, e.ifname_host)
        if e.local
        else e
        for e in rows
    ]
    return OverlayView(NETS, tuple(rows), local, owner_alive={"h2": True, "h3": True, "h4": True})


def test_bulk_runs_packed_by_columns_or_entry_by_entry_match_iproute2(
    ns: tuple[Scratch, str],
) -> None:
    """Runs long enough for the column encoder (netlink_batch.encode_group), dual-stack
    neighbour runs split by family, short runs packed entry by entry, writes and
    deletes, IPv4 and IPv6 VTEPs: iproute2 shows exactly the compiled entries after
    each apply."""
    s, name = ns
    s.ip(name, "addr", "add", "2001:db8::1/64", "dev", "eth0", "nodad")
    kernel = LinuxKernel(name)
    try:
        for view in (
            bulk_rows(lambda h: f"198.51.100.{h}"),
            bulk_rows(lambda h: f"198.51.100.{h}", keep=10),  # deletes: 60 FDB rows, 120 neighbours
            bulk_rows(lambda h: f"2001:db8::{h}"),  # devices re-created, IPv6 FDB destinations
        ):
            desired = compile(view)
            assert len(desired.fdb) >= 60
            result = kernel.apply(plan(desired, kernel.read(desired)))
            assert result.ok, result.errors
            assert_kernel_matches(s, name, desired)
            assert plan(desired, kernel.read(desired)) == []
    finally:
        kernel.close()


async def until(rec: VxlanReconciler, predicate: Callable[[], bool]) -> None:
    """Wait, pass by pass, until ``predicate()`` holds (the deadline only bounds a broken run)."""
    with trio.fail_after(20):
        while not predicate():
            await rec.next_pass()


async def test_reconciler_repairs_what_an_operator_breaks(ns: tuple[Scratch, str]) -> None:
    s, name = ns
    view = two_networks()
    desired = compile(view)
    cfg = ReconcilerConfig(resync_interval=3600)  # repairs below can only come from the monitor
    rec = VxlanReconciler(VxlanTarget(LinuxKernel(name)), lambda: view, cfg)
    rec.ready()

    def fdb_rows() -> list[dict[str, Any]]:
        try:
            return list(s.json(name, "bridge", "fdb", "show", "dev", "ov-vx-100"))
        except ScratchError:  # the device is being re-created
            return []

    async with trio.open_nursery() as nursery:
        await nursery.start(rec.run)
        await rec.settled()
        assert rec.last.ok, rec.last.errors
        assert_kernel_matches(s, name, desired)
        passes = rec.counters.reconciles

        mac = docker_mac("10.0.0.21")
        s.batch(name, [f"fdb del {mac} dev ov-vx-100 self"], tool="bridge")
        s.batch(name, ["neigh del 10.0.0.22 dev ov-vx-100"])
        s.batch(
            name, ["neigh replace 10.0.0.23 lladdr 02:00:00:00:00:01 dev ov-vx-100 nud permanent"]
        )
        await until(rec, lambda: kernel_view(s, name, desired)["neigh"] == dict(desired.neigh))
        await until(rec, lambda: any(r["mac"] == mac for r in fdb_rows()))
        assert rec.counters.monitor_repairs >= 1 and rec.counters.reconciles > passes

        s.ip(name, "link", "del", "ov-vx-100")  # the whole device, with its entries
        await until(
            rec, lambda: len(fdb_rows()) >= len([k for k in desired.fdb if k[0] == "ov-vx-100"])
        )
        await rec.settled()
        assert_kernel_matches(s, name, desired)

        s.ip(name, "link", "set", "ovh-b1", "nomaster")  # a port detached by hand
        await until(
            rec,
            lambda: s.json(name, "ip", "link", "show", "ovh-b1")[0].get("master") == "ov-br-100",
        )
        report = await rec.inspect()
        assert all(row["in_sync"] for row in report["networks"]), report
        assert rec.counters.resyncs == 0
        nursery.cancel_scope.cancel()
