"""Real overlay agents in network namespaces: networks, endpoints and traffic across hosts.

Each "host" is a namespace on the lab underlay (192.0.2.0/24) running the installed
``overlay-agent``; each "container" is a namespace given to ``agentctl endpoint
create --netns``. Covers issue 4 item 2 (tables across real agents) and issue 5
items 1-5, 8 and 9 (see each test's docstring). Kernel state is read with iproute2,
traffic checked with ping and tcpdump. No timing is asserted beyond generous
deadlines; measured figures are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import re
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.lab.netlab import Host, Lab
from dataplane.xfrm.probe import kernel_support_problem
from tests import pcap
from tests.netns.overlaylab import OverlayLab, percentile, wait_for

pytestmark = pytest.mark.netns

VNI_OPTION = "com.docker.network.driver.overlay.vxlanid_list"
LabFactory = Callable[..., Lab]


def vni_of(net: dict[str, Any]) -> int:
    return int(net["Options"][VNI_OPTION])


def vxlan_frames(path: Path) -> list[tuple[int, int, bytes]]:
    """(UDP destination port, VNI, inner Ethernet frame) of every VXLAN datagram captured."""
    datagrams, _ = pcap.read(path)
    out = []
    for d in datagrams:
        if len(d.payload) >= 8 + 14 and d.payload[0] & 0x08:
            vni = int.from_bytes(d.payload[4:7], "big")
            out.append((d.dst[1], vni, d.payload[8:]))
    return out


def inner_ethertype(frame: bytes) -> int:
    return int(struct.unpack_from("!H", frame, 12)[0])


def container_link(ol: OverlayLab, netns: str, ifname: str = "eth0") -> dict[str, Any]:
    r = ol.in_container(netns, ["ip", "-j", "addr", "show", "dev", ifname], check=True)
    link: dict[str, Any] = json.loads(r.stdout)[0]
    return link


def our_links(ol: OverlayLab, i: int) -> list[str]:
    r = ol.lab.run(ol.nodes[i].host, ["ip", "-j", "link"])
    return sorted(lk["ifname"] for lk in json.loads(r.stdout) if lk["ifname"].startswith("ov-"))


def test_two_hosts_ping_over_vxlan_with_permanent_entries(lab_factory: LabFactory, tmp_path: Path) -> None:
    """Issue 5 items 1, 2, 6: 0 % loss across hosts; VXLAN on UDP 4789 with the network's VNI;
    permanent FDB + neighbour entries for every remote endpoint; no ARP crosses the underlay
    after the container's ARP cache is flushed; DF ping of MTU-28 passes, one byte more fails.
    Issue 4: the network shows on the other host; bad input is one line, nothing half-created."""
    lab = lab_factory(2)
    ol = OverlayLab(lab)
    ol.start_all()
    net = ol.create_network(0, "blue", "--subnet", "10.10.0.0/24")
    vni = vni_of(net)
    assert net["Driver"] == "overlay" and net["Scope"] == "global"
    assert net["IPAM"]["Config"] == [{"Subnet": "10.10.0.0/24", "Gateway": "10.10.0.1"}]
    wait_for(lambda: [n["ID"] for n in ol.request(1, "network", {"action": "ls"})] == [net["Id"]],
             "the network on host1")
    listing = ol.ctl(1, "network", "ls").stdout.splitlines()
    assert listing[0].split() == ["ID", "NAME", "DRIVER", "SCOPE", "VNI", "SUBNET"]
    assert listing[1].split() == [net["Id"][:12], "blue", "overlay", "global", str(vni), "10.10.0.0/24"]

    c0, c1 = ol.container(), ol.container()
    e0 = ol.create_endpoint(0, "blue", c0, "--ip", "10.10.0.2", "--name", "web")
    e1 = ol.create_endpoint(1, "blue", c1)
    assert e0["mac"] == "02:42:0a:0a:00:02" and e0["name"] == "web" and e0["vtep"] == "192.0.2.1"
    assert e1["ipv4"] != e0["ipv4"] and e1["node"] == "host1"
    link = container_link(ol, c0)
    assert link["mtu"] == 1450 and link["address"] == e0["mac"] and "UP" in link["flags"]
    assert {"local": "10.10.0.2", "prefixlen": 24} in [
        {"local": a["local"], "prefixlen": a["prefixlen"]} for a in link["addr_info"]]

    # Item 2: permanent entries for every remote endpoint, on both hosts.
    wait_for(lambda: ol.entries_for(0, vni, [e1]) and ol.entries_for(1, vni, [e0]), "FDB + neighbours")
    assert ol.flood(0, vni) == {"192.0.2.2"} and ol.flood(1, vni) == {"192.0.2.1"}

    # Item 1: ping with 0 % loss, VXLAN on UDP 4789 with the network's VNI on the underlay.
    cap = ol.capture(1, tmp_path / "ping.pcap")
    assert ol.ping(c0, e1["ipv4"], count=5)
    ol.stop_capture(cap)
    frames = vxlan_frames(tmp_path / "ping.pcap")
    icmp = [f for f in frames if inner_ethertype(f[2]) == 0x0800 and f[2][14 + 9] == 1]
    assert len(icmp) >= 10, frames  # 5 requests + 5 replies
    assert {(port, v) for port, v, _ in icmp} == {(4789, vni)}

    # Item 2: after flushing the container's ARP cache, no ARP crosses the underlay.
    ol.in_container(c0, ["ip", "neigh", "flush", "dev", "eth0"], check=True)
    cap = ol.capture(1, tmp_path / "arp.pcap", "udp port 4789")
    assert ol.ping(c0, e1["ipv4"], count=2)
    ol.stop_capture(cap)
    frames = vxlan_frames(tmp_path / "arp.pcap")
    assert frames and not [f for f in frames if inner_ethertype(f[2]) == 0x0806], "ARP crossed the underlay"
    neigh = ol.in_container(c0, ["ip", "neigh", "show", e1["ipv4"]], check=True).stdout
    assert e1["mac"] in neigh

    # Item 6: the MTU holds end to end.
    assert ol.ping(c0, e1["ipv4"], "-M", "do", "-s", str(1450 - 28), count=2)
    assert not ol.ping(c0, e1["ipv4"], "-M", "do", "-s", str(1450 - 27), count=1)

    report = ol.request(0, "dataplane")
    assert [r["in_sync"] for r in report["networks"]] == [True]
    text = ol.ctl(0, "dataplane").stdout
    assert "blue" in text and "in sync" in text

    # Bad input: one line, exit status 1, nothing half-created (issue 4).
    before = (our_links(ol, 0), sorted(e["id"] for e in ol.endpoints(0)))
    c2 = ol.container()
    bad = [
        (["network", "create", "red", "--subnet", "10.10.0.128/25"], "overlaps"),
        (["network", "create", "red", "--subnet", "10.300.0.0/24"], "10.300.0.0/24"),
        (["endpoint", "create", "nosuch", "--netns", c2], "no such network"),
        (["endpoint", "create", "blue", "--netns", "no-such-ns"], "does not exist"),
        (["endpoint", "create", "blue", "--netns", c2, "--ip", "10.99.0.5"], "outside the subnet"),
        (["endpoint", "create", "blue", "--netns", c2, "--ip", e1["ipv4"]], "already in use"),
        (["endpoint", "create", "blue", "--netns", c2, "--mac", "zz:42"], "invalid MAC"),
        # eth0 is taken there by another spec (a retry of the same spec returns it: below)
        (["endpoint", "create", "blue", "--netns", c0, "--name", "other"], "eth0"),
        (["endpoint", "rm", e1["id"]], "belongs to node host1"),
        (["network", "rm", "blue"], "in use"),
    ]
    for args, needle in bad:
        r = ol.ctl(0, *args, check=False)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and needle in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert (our_links(ol, 0), sorted(e["id"] for e in ol.endpoints(0))) == before
    assert ol.in_container(c2, ["ip", "-br", "link"]).stdout.split()[0] == "lo"
    # A retried create of the same spec (a client that timed out) gets the endpoint back.
    again = ol.create_endpoint(0, "blue", c0, "--ip", "10.10.0.2", "--name", "web")
    assert again["id"] == e0["id"]
    assert (our_links(ol, 0), sorted(e["id"] for e in ol.endpoints(0))) == before

    # An encrypted network: refused with what the kernel lacks exactly when it lacks
    # ESP/GCM (the agent's own probe, asked here), created otherwise.
    problem = kernel_support_problem()
    r = ol.ctl(0, "network", "create", "red", "--subnet", "10.20.0.0/24", "--encrypted", check=False)
    if problem is None:
        assert r.returncode == 0, r.stderr
        assert ol.request(0, "network", {"action": "inspect", "ref": "red"})[0]["Options"].get("encrypted") == ""
        ol.ctl(0, "network", "rm", "red")
    else:
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert "IPsec unavailable" in r.stderr and "Traceback" not in r.stderr
    assert (our_links(ol, 0), sorted(e["id"] for e in ol.endpoints(0))) == before

    # Remove: the interface and the row go, on both hosts' kernels.
    ol.ctl(1, "endpoint", "rm", e1["id"][:12])
    assert ol.in_container(c1, ["ip", "link", "show", "eth0"]).returncode != 0
    wait_for(lambda: ol.entries_for(0, vni, []), "host0 to drop host1's endpoint")
    wait_for(lambda: "ov-vx-" not in " ".join(our_links(ol, 1)), "host1's devices to go with its last endpoint")
    for i in (0, 1):
        ol.check_running(i)


def test_networks_stay_isolated_and_a_container_on_both_reaches_both(lab_factory: LabFactory) -> None:
    """Issue 5 item 5 / AT-6: dognet and catnet across two hosts; dog<->dog and cat<->cat
    work, dog<->cat does not, an admin container on both reaches both; the cat endpoints
    reuse the dog endpoints' MAC addresses, and each network's entries stay on its own
    device. (Two networks with the *same* subnet cannot be made through the agent: issue 4
    refuses overlapping subnets; kernel-level isolation of equal subnets and addresses is
    tests/netns/test_kernel_overlay.py.)"""
    lab = lab_factory(2)
    ol = OverlayLab(lab)
    ol.start_all()
    dog = ol.create_network(0, "dognet", "--subnet", "10.1.0.0/24")
    cat = ol.create_network(1, "catnet", "--subnet", "10.2.0.0/24")
    assert vni_of(dog) != vni_of(cat)
    r = ol.ctl(0, "network", "create", "cat2", "--subnet", "10.2.0.0/16", check=False)
    assert r.returncode == 1 and "overlaps" in r.stderr
    macs = ["02:00:00:00:00:0a", "02:00:00:00:00:0b"]
    eps: dict[str, dict[str, Any]] = {}
    names: dict[str, str] = {}
    for tag, host, net, ip, mac in (
        ("dog0", 0, "dognet", "10.1.0.10", macs[0]), ("dog1", 1, "dognet", "10.1.0.11", macs[1]),
        ("cat0", 0, "catnet", "10.2.0.10", macs[0]), ("cat1", 1, "catnet", "10.2.0.11", macs[1]),
    ):
        names[tag] = ol.container(tag)
        eps[tag] = ol.create_endpoint(host, net, names[tag], "--ip", ip, "--mac", mac)
    admin = ol.container("admin")
    ol.create_endpoint(0, "dognet", admin, "--ip", "10.1.0.100")
    ol.create_endpoint(0, "catnet", admin, "--ip", "10.2.0.100", "--ifname", "eth1")
    wait_for(lambda: ol.entries_for(0, vni_of(dog), [eps["dog1"]]) and ol.entries_for(0, vni_of(cat), [eps["cat1"]]),
             "host0's entries")
    wait_for(lambda: len(ol.neigh(1, vni_of(dog))) == 2 and len(ol.neigh(1, vni_of(cat))) == 2, "host1's entries")
    assert set(ol.neigh(1, vni_of(dog))) == {"10.1.0.10", "10.1.0.100"}
    assert set(ol.neigh(1, vni_of(cat))) == {"10.2.0.10", "10.2.0.100"}
    assert ol.ping(names["dog0"], "10.1.0.11") and ol.ping(names["cat0"], "10.2.0.11")
    assert ol.ping(names["dog1"], "10.1.0.10") and ol.ping(names["cat1"], "10.2.0.10")
    # No route between the networks, and no L2 path even to a MAC that exists in the other.
    assert not ol.ping(names["dog0"], "10.2.0.11", count=1)
    ol.in_container(names["dog0"], ["ip", "neigh", "replace", "10.1.0.77", "lladdr", macs[1], "dev", "eth0"],
                    check=True)
    assert not ol.ping(names["dog0"], "10.1.0.77", count=1)
    for target in ("10.1.0.10", "10.1.0.11", "10.2.0.10", "10.2.0.11"):
        assert ol.ping(admin, target, count=2), target


def _create_fast(ol: OverlayLab, i: int, network: str, netns: str, ifname: str) -> dict[str, Any]:
    """``endpoint create`` through the control API (what agentctl sends), without a process start."""
    result: dict[str, Any] = ol.request(i, "endpoint", {"action": "create", "network": network,
                                                        "netns": netns, "ifname": ifname})
    return result


def test_three_hosts_follow_endpoints_members_deaths_and_leaves(lab_factory: LabFactory) -> None:
    """Issue 4 item 2: a network made on host0 shows on hosts 1 and 2; endpoints made on
    host1 appear in ``endpoint ls`` on hosts 0 and 2 (p99 over a batch is printed); after a
    SIGKILL of host1's agent its endpoints vanish from the others' views once it is declared
    dead, and come back when it restarts. Issue 5 items 3 and 4: the kernels follow
    (entries appear/disappear with endpoints, go when the owner is declared dead, come
    back on restart, and go at once on ``agentctl leave``); nothing stale remains."""
    lab = lab_factory(3)
    ol = OverlayLab(lab)
    ol.start_all()
    net = ol.create_network(0, "blue", "--subnet", "10.40.0.0/22")
    vni = vni_of(net)
    for i in (1, 2):
        wait_for(lambda i=i: [n["ID"] for n in ol.request(i, "network", {"action": "ls"})] == [net["Id"]],
                 f"the network on host{i}")
        by_prefix = json.loads(ol.ctl(i, "network", "inspect", net["Id"][:10]).stdout)
        by_name = json.loads(ol.ctl(i, "network", "inspect", "blue").stdout)
        assert by_prefix[0]["Id"] == by_name[0]["Id"] == net["Id"] and vni_of(by_name[0]) == vni
    # One endpoint per host first: hosts take part in a network's gossip only while they
    # have an endpoint on it (lazy, like Docker), so only then they see the others' rows.
    cns = {i: ol.container(f"h{i}") for i in range(3)}
    first = {i: ol.create_endpoint(i, "blue", cns[i]) for i in range(3)}
    for i in range(3):
        wait_for(lambda i=i: ol.endpoint_ids(i) == {e["id"] for e in first.values()}, f"host{i}'s view")
    peers = json.loads(ol.ctl(2, "network", "inspect", "blue").stdout)[0]["Peers"]
    assert peers == [{"IP": f"192.0.2.{i + 1}", "Name": f"host{i}"} for i in range(3)]

    # A batch of creates on host1, each timed until host0 and host2 both list it.
    batch_ns = ol.container("batch")
    batch: list[dict[str, Any]] = []
    seen_after: list[float] = []
    for k in range(50):
        start = time.monotonic()
        ep = _create_fast(ol, 1, "blue", batch_ns, f"e{k}")
        wait_for(lambda ep=ep: ep["id"] in ol.endpoint_ids(0) and ep["id"] in ol.endpoint_ids(2),
                 f"endpoint {k} on hosts 0 and 2", every=0.002)
        seen_after.append(time.monotonic() - start)
        batch.append(ep)
    p50, p99 = percentile(seen_after, 50) * 1000, percentile(seen_after, 99) * 1000
    print(f"\nendpoint create on host1 -> listed on hosts 0 and 2: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
          f"(n={len(seen_after)}, from the request to both listings)")
    remote0 = [first[1], first[2], *batch]
    wait_for(lambda: ol.entries_for(0, vni, remote0), "host0's kernel to hold every remote endpoint")
    table = ol.ctl(0, "endpoint", "ls", "--network", "blue").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "NETWORK", "NODE", "VTEP", "MAC", "IPV4", "IPV6"]
    assert len(table) == 1 + 3 + len(batch)
    assert sum(" host0 * " in line for line in table) == 1

    # Item 3: removals propagate to the other kernels.
    gone, batch = batch[:10], batch[10:]
    for ep in gone:
        ol.request(1, "endpoint", {"action": "rm", "ref": ep["id"]})
    remote0 = [first[1], first[2], *batch]
    wait_for(lambda: ol.entries_for(0, vni, remote0), "host0's kernel to drop removed endpoints")
    wait_for(lambda: ol.entries_for(2, vni, [first[0], first[1], *batch]), "host2's kernel likewise")
    assert ol.in_container(batch_ns, ["ip", "link", "show", "e0"]).returncode != 0

    # SIGKILL host1: its rows vanish when it is declared dead, kernels follow; then restart.
    host1_ids = {first[1]["id"], *(e["id"] for e in batch)}
    ol.kill(1)
    killed = time.monotonic()
    wait_for(lambda: ol.status_of(0, "host1") == "dead", "host0 to declare host1 dead")
    dead_after = time.monotonic() - killed
    for i in (0, 2):
        wait_for(lambda i=i: not (ol.endpoint_ids(i) & host1_ids), f"host1's endpoints to vanish on host{i}")
    others = {0: [first[2]], 2: [first[0]]}
    for i in (0, 2):
        wait_for(lambda i=i: ol.entries_for(i, vni, others[i]) and "192.0.2.2" not in ol.flood(i, vni),
                 f"host{i}'s kernel to drop host1's entries")
    print(f"host1 SIGKILLed: declared dead on host0 after {dead_after:.1f} s")
    ol.start(1)
    for i in (0, 2):
        wait_for(lambda i=i: host1_ids <= ol.endpoint_ids(i), f"host1's endpoints back on host{i}")
    wait_for(lambda: ol.entries_for(0, vni, [first[1], first[2], *batch]), "host0's kernel restored")
    assert ol.ping(cns[0], first[1]["ipv4"]) and ol.ping(cns[2], batch[-1]["ipv4"])

    # Item 4: agentctl leave removes host2's entries on the others at once.
    leaving = threading.Thread(target=ol.ctl, args=(2, "leave"))  # returns once the leave went out
    left_at = time.monotonic()
    leaving.start()
    wait_for(lambda: ol.entries_for(0, vni, [first[1], *batch]), "host0 to drop host2's entries", every=0.005)
    leave_after = time.monotonic() - left_at
    leaving.join(timeout=30)
    assert ol.status_of(0, "host2") == "left"
    wait_for(lambda: ol.entries_for(1, vni, [first[0]]), "host1 to drop host2's entries")
    print(f"agentctl leave on host2: its entries gone from host0 after {leave_after * 1000:.0f} ms")
    assert first[2]["id"] not in ol.endpoint_ids(0)
    for i in (0, 1):
        ol.check_running(i)



def _two_hosts_with_endpoints(lab_factory: LabFactory) -> tuple[OverlayLab, int, list[str], list[dict[str, Any]]]:
    lab = lab_factory(2)
    ol = OverlayLab(lab)
    ol.start_all()
    vni = vni_of(ol.create_network(0, "blue", "--subnet", "10.50.0.0/24"))
    cns = [ol.container(f"h{i}") for i in range(2)]
    eps = [ol.create_endpoint(i, "blue", cns[i], "--ip", f"10.50.0.{10 + i}") for i in range(2)]
    wait_for(lambda: ol.entries_for(0, vni, [eps[1]]) and ol.entries_for(1, vni, [eps[0]]), "entries")
    return ol, vni, cns, eps


def _time_until(check: Callable[[], bool], what: str) -> float:
    start = time.monotonic()
    wait_for(check, what, within=10.0, every=0.005)
    return time.monotonic() - start


def test_hand_deleted_entries_are_restored(lab_factory: LabFactory) -> None:
    """Issue 5 item 8: an FDB or neighbour entry deleted (or changed) by hand is put back
    by the running agent (the netlink monitor triggers the pass); times are printed."""
    ol, vni, _, eps = _two_hosts_with_endpoints(lab_factory)
    host = ol.nodes[0].host
    dev = f"ov-vx-{vni}"
    remote = eps[1]
    took = {}
    ol.lab.run(host, ["bridge", "fdb", "del", remote["mac"], "dev", dev, "dst", remote["vtep"], "self"])
    took["fdb del"] = _time_until(lambda: ol.entries_for(0, vni, [remote]), "the FDB entry back")
    ol.lab.run(host, ["ip", "neigh", "del", remote["ipv4"], "dev", dev])
    took["neigh del"] = _time_until(lambda: ol.entries_for(0, vni, [remote]), "the neighbour back")
    ol.lab.run(host, ["ip", "neigh", "replace", remote["ipv4"], "lladdr", "02:00:00:00:00:99", "dev", dev,
                      "nud", "permanent"])
    took["neigh changed"] = _time_until(lambda: ol.entries_for(0, vni, [remote]), "the neighbour fixed")
    ol.lab.run(host, ["bridge", "fdb", "del", "00:00:00:00:00:00", "dev", dev, "dst", remote["vtep"], "self"])
    took["flood del"] = _time_until(lambda: ol.flood(0, vni) == {remote["vtep"]}, "the flood row back")
    print("\nrestored after: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in took.items()))
    counters = ol.request(0, "dataplane")["counters"]
    assert counters["monitor_repairs"] >= 4, counters


@pytest.mark.slow
def test_continuous_ping_across_agent_restarts_loses_nothing(lab_factory: LabFactory) -> None:
    """Issue 5 item 9: a 20/s ping between hosts across a restart (SIGTERM + start) of
    either agent and across a SIGKILL + start of either agent: 0 packets lost. The kernel
    keeps forwarding while an agent is down, and a starting agent adopts what it finds."""
    ol, vni, cns, eps = _two_hosts_with_endpoints(lab_factory)
    ping = subprocess.Popen(
        ["ip", "netns", "exec", cns[0], "ping", "-i", "0.05", "-W", "1", eps[1]["ipv4"]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)  # the pinger's own steady state before the first disturbance
        for i, how in ((1, "term"), (0, "term"), (1, "kill"), (0, "kill")):
            if how == "term":
                assert ol.stop(i) == 0
            else:
                ol.kill(i)
            time.sleep(0.5)  # a down agent: the kernel alone forwards
            ol.start(i)
            wait_for(lambda: ol.request(0, "dataplane")["networks"][0]["in_sync"], "in sync again")
            time.sleep(0.5)
    finally:
        ping.send_signal(signal.SIGINT)
        out, _ = ping.communicate(timeout=10)
    summary = next(line for line in out.splitlines() if "packets transmitted" in line)
    print(f"\ncontinuous ping across 4 agent restarts: {summary}")
    sent, received = (int(n) for n in re.findall(r"(\d+) (?:packets transmitted|received)", summary))
    assert sent > 100 and received == sent, out[-2000:]
    for i in (0, 1):
        assert ol.entries_for(i, vni, [eps[1 - i]])
        assert ol.log(i).count("event=endpoints-restored count=1") >= 1


def _routed_hosts(lab: Lab) -> list[Host]:
    """Two hosts on different L3 subnets joined by a router namespace (no shared L2, no multicast)."""
    names = [f"{lab.prefix}-r", f"{lab.prefix}-ra", f"{lab.prefix}-rb"]
    lab.add_namespaces(names)  # registered with the lab: deleted with it
    router, a, b = names
    lab.batch(router, [
        f"link add ra type veth peer name eth0 netns {a}",
        f"link add rb type veth peer name eth0 netns {b}",
        "addr add 198.51.100.1/25 dev ra", "addr add 198.51.100.129/25 dev rb",
        "link set ra up", "link set rb up", "link set lo up",
    ])
    lab.run(router, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    hosts = []
    for i, (ns, addr, gw) in enumerate(((a, "198.51.100.2", "198.51.100.1"), (b, "198.51.100.130", "198.51.100.129"))):
        lab.batch(ns, ["link set lo up", f"addr add {addr}/25 dev eth0", "link set eth0 up",
                       f"route add default via {gw}"])
        hosts.append(Host(index=i, netns=ns, addr=addr, prefixlen=25, mac="", port=""))
    return hosts


def test_hosts_on_different_subnets_behind_a_router(lab_factory: LabFactory) -> None:
    """Issue 5 item 7 (AT-13): hosts on different L3 subnets joined by a router namespace, no
    multicast: the overlay works (VXLAN devices have no underlay device; routing picks it)."""
    lab = lab_factory(0)
    ol = OverlayLab(lab, hosts=_routed_hosts(lab))
    ol.start_all()
    vni = vni_of(ol.create_network(0, "blue", "--subnet", "10.60.0.0/24"))
    cns = [ol.container(f"r{i}") for i in range(2)]
    eps = [ol.create_endpoint(i, "blue", cns[i], "--ip", f"10.60.0.{10 + i}") for i in range(2)]
    wait_for(lambda: ol.entries_for(0, vni, [eps[1]]) and ol.entries_for(1, vni, [eps[0]]), "entries")
    assert eps[0]["vtep"] == "198.51.100.2" and eps[1]["vtep"] == "198.51.100.130"
    assert ol.ping(cns[0], "10.60.0.11", count=5) and ol.ping(cns[1], "10.60.0.10", count=2)
    assert ol.ping(cns[0], "10.60.0.11", "-M", "do", "-s", str(1450 - 28), count=2)


@pytest.mark.slow
def test_three_way_partition_heals_to_one_state_everywhere(lab_factory: LabFactory) -> None:
    """Issue 5 item 10: a 3-way partition of the underlay between 6 hosts, endpoints changed
    on every side, then healed: every host's kernel converges to the same desired state
    (entries for exactly every other live endpoint), nothing stale."""
    lab = lab_factory(6)
    ol = OverlayLab(lab, extra=["--gossip", "rejoin_interval=2", "--gossip", "push_pull_interval=5"])
    ol.start_all()
    vni = vni_of(ol.create_network(0, "blue", "--subnet", "10.70.0.0/24"))
    cns = [ol.container(f"p{i}") for i in range(6)]
    eps: dict[str, dict[str, Any]] = {}
    for i in range(6):
        ep = ol.create_endpoint(i, "blue", cns[i])
        eps[ep["id"]] = ep

    def converged() -> bool:
        for i in range(6):
            mine = [e for e in eps.values() if e["node"] == f"host{i}"]
            others = [e for e in eps.values() if e["node"] != f"host{i}"]
            if mine and not ol.entries_for(i, vni, others):
                return False
            if not mine and ol.neigh(i, vni):
                return False  # no local endpoint: no devices, no entries
        return True

    wait_for(converged, "all kernels before the partition")
    sides = [[0, 1], [2, 3], [4, 5]]
    hosts = lab.hosts
    for x in range(3):
        for y in range(x + 1, 3):
            lab.cut([hosts[i] for i in sides[x]], [hosts[i] for i in sides[y]])
    # Cut off from 4 of 5 peers, a host's probes fail and most nacks it expects never
    # come, so Lifeguard stretches its probe interval (up to 8x) and the last of the
    # four may be probed late: the bound, not the typical 10-20 s, sets the wait.
    for side in sides:
        for i in side:
            outside = [f"host{j}" for j in range(6) if j not in side]
            wait_for(lambda i=i, outside=outside: all(ol.status_of(i, n) == "dead" for n in outside),
                     f"host{i} to see the other sides dead", within=120)
    # Changes on every side while cut off.
    old0 = next(e for e in eps.values() if e["node"] == "host0")
    ol.ctl(0, "endpoint", "rm", old0["id"])
    del eps[old0["id"]]
    new0 = ol.create_endpoint(0, "blue", cns[0], "--ifname", "eth1")
    eps[new0["id"]] = new0
    extra2 = ol.create_endpoint(2, "blue", cns[2], "--ifname", "eth1")
    eps[extra2["id"]] = extra2
    old5 = next(e for e in eps.values() if e["node"] == "host5")
    ol.ctl(5, "endpoint", "rm", old5["id"])
    del eps[old5["id"]]
    lab.heal()
    for i in range(6):
        wait_for(lambda i=i: all(ol.status_of(i, f"host{j}") == "alive" for j in range(6)),
                 f"host{i} to see everyone alive again", within=60)
    wait_for(converged, "every kernel to converge after the heal", within=60)
    views = [{e["id"] for e in ol.endpoints(i)} for i in range(5)]
    assert all(v == set(eps) for v in views), views
    assert "ov-vx-" not in " ".join(our_links(ol, 5))  # host5 has no endpoint left: no devices


def _ipv6_hosts(lab: Lab) -> list[Host]:
    """Two hosts on an IPv6-only point-to-point underlay (2001:db8::/64)."""
    a, b = f"{lab.prefix}-6a", f"{lab.prefix}-6b"
    lab.add_namespaces([a, b])  # registered with the lab: deleted with it
    hosts = []
    for i, ns in enumerate((a, b)):
        lab.run(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0",
                     "net.ipv6.conf.default.disable_ipv6=0"])
        hosts.append(Host(index=i, netns=ns, addr=f"2001:db8::{i + 1}", prefixlen=64, mac="", port=""))
    lab.batch(a, [f"link add eth0 type veth peer name eth0 netns {b}"])
    for h in hosts:
        lab.batch(h.netns, ["link set lo up", f"addr add {h.addr}/64 dev eth0 nodad", "link set eth0 up"])
    return hosts


def test_ipv6_underlay_and_a_dual_stack_overlay(lab_factory: LabFactory) -> None:
    """IPv6 underlay VTEPs (MTU = underlay - 70) and a dual-stack network: IPv4 and IPv6
    pings across hosts; permanent neighbours for both families."""
    lab = lab_factory(0)
    ol = OverlayLab(lab, hosts=_ipv6_hosts(lab))
    ol.start_all()
    net = ol.create_network(0, "v6", "--subnet", "10.80.0.0/24", "--subnet", "fd00:80::/64")
    vni = vni_of(net)
    assert net["EnableIPv6"] and net["MTU"] == 1430
    cns = [ol.container(f"6c{i}") for i in range(2)]
    for ns in cns:
        ol.in_container(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0",
                             "net.ipv6.conf.default.disable_ipv6=0"], check=True)
    eps = [ol.create_endpoint(i, "v6", cns[i], "--ip", f"10.80.0.{10 + i}", "--ip6", f"fd00:80::{10 + i}")
           for i in range(2)]
    assert eps[1]["vtep"] == "2001:db8::2" and eps[1]["mtu"] == 1430 and eps[1]["ipv6_cidr"] == "fd00:80::11/64"
    wait_for(lambda: ol.neigh(0, vni) == {"10.80.0.11": eps[1]["mac"], "fd00:80::11": eps[1]["mac"]},
             "both families' neighbours on host0")
    assert ol.fdb(0, vni) == {eps[1]["mac"]: "2001:db8::2"}
    assert ol.ping(cns[0], "10.80.0.11", count=2)
    assert ol.ping(cns[0], "fd00:80::11", count=2)
    assert ol.ping(cns[0], "10.80.0.11", "-M", "do", "-s", str(1430 - 28), count=2)
