"""Real traffic across the VXLAN overlay, programmed only from compiled state (no agent).

Two "hosts" (namespaces on an underlay), each with "containers" (namespaces with a
veth whose host end the dataplane attaches to its bridge). Each host gets
``compile(view)`` applied through ``LinuxKernel``; then containers ping each other.
Two networks share one subnet (and even the same addresses) and must stay isolated.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.lab.netlab import Lab
from dataplane.compile import compile
from dataplane.kernel import LinuxKernel
from dataplane.model import EndpointSpec, NetworkSpec, OverlayView
from dataplane.plan import plan
from dataplane.scratch import Scratch

pytestmark = pytest.mark.netns

BLUE = NetworkSpec("blue", 100, subnets=("10.0.0.0/24",))
RED = NetworkSpec("red", 200, subnets=("10.0.0.0/24",))


def add_container(
    s: Scratch, host_ns: str, tag: str, ip: str, mac: str, mtu: int
) -> tuple[str, str]:
    """A container namespace with eth0 (ip/24, mac, mtu); returns (its ns, host-side ifname)."""
    ns = s.add(tag)
    s.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
    ifname = f"ovh-{tag[-6:]}"
    s.batch(
        ns,
        [
            f"link add eth0 type veth peer name {ifname} netns {host_ns}",
            f"link set eth0 address {mac} mtu {mtu}",
            f"addr add {ip}/24 dev eth0",
            "link set eth0 up",
        ],
    )
    return ns, ifname


def ep(
    net: NetworkSpec, eid: str, ip: str, mac: str, owner: str, vtep: str, me: str, ifname: str
) -> EndpointSpec:
    local = owner == me
    return EndpointSpec(
        net.id, eid, mac, ip, None, owner, vtep, local, ifname if local else None, 1
    )


def program(
    host_ns: str, rows: list[tuple[NetworkSpec, str, str, str, str, str, str]], me: str, vtep: str
) -> None:
    view = OverlayView(
        (BLUE, RED),
        tuple(
            ep(net, eid, ip, mac, owner, vt, me, ifn) for net, eid, ip, mac, owner, vt, ifn in rows
        ),
        vtep,
        owner_alive={"h0": True, "h1": True},
    )
    desired = compile(view)
    assert desired.problems == ()
    kernel = LinuxKernel(host_ns)
    try:
        result = kernel.apply(plan(desired, kernel.read(desired)))
        assert result.ok, result.errors
    finally:
        kernel.close()


def ping(s: Scratch, ns: str, ip: str, *extra: str) -> bool:
    out = s.exec(
        ns, ["ping", "-c", "2", "-i", "0.2", "-W", "2", *extra, ip], check=False, timeout=30
    )
    return " 0% packet loss" in out


def build(s: Scratch, hosts: list[tuple[str, str]], mtu: int) -> dict[str, str]:
    """Blue and red containers on both hosts; returns container tag -> namespace."""
    # (network, tag, ip, mac, host index): red reuses blue's address on host 0 on purpose.
    plan_rows = [
        (BLUE, "b0", "10.0.0.2", "02:42:0a:00:00:02", 0),
        (BLUE, "b1", "10.0.0.3", "02:42:0a:00:00:03", 1),
        (RED, "r0", "10.0.0.2", "02:43:0a:00:00:02", 0),
        (RED, "r1", "10.0.0.9", "02:43:0a:00:00:09", 1),
    ]
    names: dict[str, str] = {}
    rows = []
    for net, tag, ip, mac, h in plan_rows:
        ns, ifname = add_container(s, hosts[h][0], tag, ip, mac, mtu)
        names[tag] = ns
        rows.append((net, tag, ip, mac, f"h{h}", hosts[h][1], ifname))
    for h, (host_ns, vtep) in enumerate(hosts):
        program(host_ns, rows, f"h{h}", vtep)
    return names


def check_overlay(s: Scratch, c: dict[str, str], mtu: int, hosts: list[tuple[str, str]]) -> None:
    assert ping(s, c["b0"], "10.0.0.3")
    assert ping(s, c["r0"], "10.0.0.9")
    # ARP was answered by the VXLAN proxy from our permanent entry: the right MAC.
    assert "02:42:0a:00:00:03" in s.exec(c["b0"], ["ip", "neigh", "show", "10.0.0.3"])
    # Isolation, with the same subnet (and address 10.0.0.2) in both networks.
    assert not ping(s, c["b0"], "10.0.0.9")
    assert not ping(s, c["r0"], "10.0.0.3")
    # MTU: a DF ping of exactly MTU - 28 bytes passes; one byte more does not.
    assert ping(s, c["b0"], "10.0.0.3", "-M", "do", "-s", str(mtu - 28))
    assert not ping(s, c["b0"], "10.0.0.3", "-M", "do", "-s", str(mtu - 27))
    # Unicast needs no flooding: drop the all-zero rows, unicast FDB + proxy ARP suffice.
    s.exec(c["b0"], ["ip", "neigh", "flush", "dev", "eth0"])
    for host_ns, _ in hosts:
        for dev in ("ov-vx-100", "ov-vx-200"):
            for row in s.json(host_ns, "bridge", "fdb", "show", "dev", dev):
                if row["mac"] == "00:00:00:00:00:00":
                    s.batch(
                        host_ns,
                        [f"fdb del 00:00:00:00:00:00 dev {dev} dst {row['dst']}"],
                        tool="bridge",
                    )
    assert ping(s, c["b0"], "10.0.0.3")


def test_ping_across_the_overlay_between_two_hosts(
    lab_factory: Callable[..., Lab], kernel_scratch: Scratch
) -> None:
    lab = lab_factory(2, subnet="192.0.2.0/24")
    hosts = [(h.netns, h.addr) for h in lab.hosts]
    containers = build(kernel_scratch, hosts, 1450)
    check_overlay(kernel_scratch, containers, 1450, hosts)


def test_ping_across_an_ipv6_underlay(kernel_scratch: Scratch) -> None:
    h0, h1 = kernel_scratch.add("u6h0"), kernel_scratch.add("u6h1")
    kernel_scratch.ip(h0, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", h1)
    for ns, addr in ((h0, "2001:db8::1"), (h1, "2001:db8::2")):
        kernel_scratch.batch(ns, [f"addr add {addr}/64 dev eth0 nodad", "link set eth0 up"])
    hosts = [(h0, "2001:db8::1"), (h1, "2001:db8::2")]
    containers = build(kernel_scratch, hosts, 1430)
    check_overlay(kernel_scratch, containers, 1430, hosts)
