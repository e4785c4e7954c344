"""The anycast gateway, egress and host access with real agents (issue 13 items 1, 2, 5);
a container that moves to another host keeps its gateway, route and names.

Two agent hosts on the lab underlay (192.0.2.1, .2) and a third namespace on the same
underlay without an agent, standing in for "the internet" (192.0.2.3). Checked with
iproute2, nft and tcpdump, independently of the agent's code; every wait has a deadline.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.lab.netlab import Lab
from dataplane.nft.compile import gateway_mac
from tests.netns.overlaylab import OverlayLab, wait_for
from tests.netns.test_dns import nslookup
from tests.netns.test_overlay_agents import inner_ethertype, vni_of, vxlan_frames

pytestmark = pytest.mark.netns
LabFactory = Callable[..., Lab]
SUBNET, GATEWAY = "10.50.0.0/24", "10.50.0.1"
SUBNET6, GATEWAY6 = "fd00:50::/64", "fd00:50::1"
INTERNET = "192.0.2.3"


IPV6_ON = ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0"]


def _lab(lab_factory: LabFactory) -> tuple[Lab, OverlayLab]:
    lab = lab_factory(3)
    for h in lab.hosts[:2]:  # the lab turns IPv6 off; the dual-stack network needs it
        lab.run(h, IPV6_ON)
    ol = OverlayLab(lab, hosts=lab.hosts[:2])
    ol.start_all()
    return lab, ol


def _json(lab: Lab, where: Any, argv: list[str]) -> Any:
    r = lab.run(where, argv, check=False)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None


def bridge_addresses(ol: OverlayLab, i: int, vni: int) -> set[str]:
    links = _json(ol.lab, ol.nodes[i].host, ["ip", "-j", "addr", "show", "dev", f"ov-br-{vni}"]) or []
    return {f"{a['local']}/{a['prefixlen']}" for lk in links for a in lk.get("addr_info", [])}


def bridge_mac(ol: OverlayLab, i: int, vni: int) -> str | None:
    links = _json(ol.lab, ol.nodes[i].host, ["ip", "-j", "link", "show", "dev", f"ov-br-{vni}"]) or []
    return links[0]["address"] if links else None


def our_tables(ol: OverlayLab, i: int) -> set[str]:
    doc = _json(ol.lab, ol.nodes[i].host, ["nft", "-j", "list", "tables"]) or {"nftables": []}
    return {f"{t['table']['family']} {t['table']['name']}" for t in doc["nftables"] if "table" in t}


def default_routes(ol: OverlayLab, netns: str, family: str = "-4") -> list[str]:
    routes = _json(ol.lab, netns, ["ip", "-j", family, "route", "show", "default"]) or []
    return [r.get("gateway", "") for r in routes]


def arp_target(frame: bytes) -> str | None:
    """The target IPv4 address of an ARP frame (None for anything else)."""
    if len(frame) < 42 or inner_ethertype(frame) != 0x0806:
        return None
    return ".".join(str(b) for b in frame[38:42])


def test_anycast_gateway_answers_locally_on_every_host(lab_factory: LabFactory, tmp_path: Path) -> None:
    """Item 1: each host holds the gateway (v4 and v6) on its bridge with the one MAC derived
    from the network; containers get a default route through it; a container pinging the
    gateway is answered by its own host: the underlay carries no ARP for the gateway and
    no frame from or to the gateway MAC, while container-to-container traffic (the control)
    does cross it."""
    lab, ol = _lab(lab_factory)
    net = ol.create_network(0, "gw", "--subnet", SUBNET, "--subnet", SUBNET6)
    vni, mac = vni_of(net), gateway_mac(net["Id"])
    cns = [ol.container(f"g{i}") for i in range(2)]
    for cn in cns:
        lab.run(cn, IPV6_ON)
    eps = [ol.create_endpoint(i, "gw", cns[i]) for i in range(2)]
    assert GATEWAY not in {e["ipv4"] for e in eps} and GATEWAY6 not in {e["ipv6"] for e in eps}
    want = {f"{GATEWAY}/24", f"{GATEWAY6}/64"}
    for i in range(2):
        wait_for(lambda i=i: bridge_addresses(ol, i, vni) == want, f"host{i}'s gateway addresses")  # type: ignore[misc]
        wait_for(lambda i=i: bridge_mac(ol, i, vni) == mac, f"host{i}'s gateway MAC")  # type: ignore[misc]
        assert default_routes(ol, cns[i]) == [GATEWAY]
        assert default_routes(ol, cns[i], "-6") == [GATEWAY6]
    cap = tmp_path / "underlay.pcap"
    proc = ol.capture(0, cap)
    try:
        for i in range(2):
            ol.in_container(cns[i], ["ip", "neigh", "flush", "all"])
            assert ol.ping(cns[i], GATEWAY), f"container on host{i} -> gateway"
            assert ol.ping(cns[i], GATEWAY6), f"container on host{i} -> IPv6 gateway"
            lladdr = _json(lab, cns[i], ["ip", "-j", "neigh", "show", GATEWAY]) or []
            assert [n.get("lladdr") for n in lladdr] == [mac], lladdr
        wait_for(lambda: ol.fdb(0, vni).get(eps[1]["mac"]) == "192.0.2.2", "host0's entry for the remote container")
        assert ol.ping(cns[0], eps[1]["ipv4"])  # the control: this crosses the underlay
    finally:
        ol.stop_capture(proc)
    frames = [f for _, v, f in vxlan_frames(cap) if v == vni]
    assert any(inner_ethertype(f) == 0x0800 for f in frames), "the control ping was not captured"
    assert not [f for f in frames if arp_target(f) == GATEWAY], "ARP for the gateway crossed the underlay"
    raw = bytes.fromhex(mac.replace(":", ""))
    assert not [f for f in frames if raw in (f[0:6], f[6:12])], "the gateway MAC crossed the underlay"


def test_egress_is_masqueraded_and_the_host_reaches_its_containers(lab_factory: LabFactory, tmp_path: Path) -> None:
    """Item 2: a container reaches an address outside the overlay ("the internet", a
    namespace on the underlay) and a host address (the other agent host), masqueraded to
    its host's address (tcpdump on the internet side); forwarding is on; the host pings
    its local container directly; new connections from outside into the network are
    dropped (the internet cannot ping the container even with a route to it)."""
    lab, ol = _lab(lab_factory)
    net = ol.create_network(0, "out", "--subnet", SUBNET)
    vni = vni_of(net)
    cn = ol.container("e0")
    ep = ol.create_endpoint(0, "out", cn)
    wait_for(lambda: our_tables(ol, 0) == {"inet overlay_agent", "bridge overlay_agent"}, "host0's nft tables")
    wait_for(lambda: bridge_addresses(ol, 0, vni) == {f"{GATEWAY}/24"}, "host0's gateway address")
    fwd = lab.run(ol.nodes[0].host, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()
    assert fwd == "1"
    internet = lab.hosts[2]
    cap = tmp_path / "internet.pcap"
    proc = lab.spawn(internet, ["tcpdump", "-i", internet.ifname, "-n", "-U", "--immediate-mode", "-w", str(cap),
                                "icmp"], name="tcpdump-internet")
    wait_for(lambda: "listening on" in proc.log_text() or not proc.running(), "tcpdump to start")
    try:
        assert ol.ping(cn, INTERNET), "container -> internet"
        assert ol.ping(cn, "192.0.2.2"), "container -> another host's underlay address"
    finally:
        lab.stop(proc, signal.SIGINT)
    lines = lab.run(internet, ["tcpdump", "-n", "-r", str(cap), "icmp[icmptype] == icmp-echo"]).stdout.splitlines()
    sources = {m.group(1) for line in lines if (m := re.search(r" IP (\S+) > 192\.0\.2\.3: ICMP echo request", line))}
    assert sources == {"192.0.2.1"}, lines  # the host's address, never 10.50.0.x
    r = lab.run(ol.nodes[0].host, ["ping", "-c", "3", "-i", "0.2", "-W", "2", ep["ipv4"]], check=False)
    assert " 0% packet loss" in r.stdout, r.stdout
    # No way in: the internet routes the subnet via host0, new connections are dropped.
    lab.run(internet, ["ip", "route", "add", SUBNET, "via", "192.0.2.1"])
    r = lab.run(internet, ["ping", "-c", "2", "-i", "0.2", "-W", "1", ep["ipv4"]], check=False)
    assert " 100% packet loss" in r.stdout, r.stdout


def test_gateway_and_rules_are_repaired_and_removed_with_the_network(lab_factory: LabFactory) -> None:
    """Items 2 and 5: the gateway addresses (IPv4 and IPv6), the bridge MAC and both nft
    tables come back after someone deletes them by hand (the monitor, not the hourly
    resync); after the last endpoint and the network are removed nothing of ours is left
    (no table, no address, no route, no device, nothing listening on port 53)."""
    lab, ol = _lab(lab_factory)
    net = ol.create_network(0, "fix", "--subnet", SUBNET, "--subnet", SUBNET6)
    vni, mac = vni_of(net), gateway_mac(net["Id"])
    cn = ol.container("r0")
    lab.run(cn, IPV6_ON)
    ep = ol.create_endpoint(0, "fix", cn)
    host = ol.nodes[0].host
    tables = {"inet overlay_agent", "bridge overlay_agent"}
    want = {f"{GATEWAY}/24", f"{GATEWAY6}/64"}
    wait_for(lambda: our_tables(ol, 0) == tables, "host0's nft tables")
    wait_for(lambda: bridge_addresses(ol, 0, vni) == want, "host0's gateway addresses")
    wait_for(lambda: _listening_53(lab, host) == {GATEWAY, GATEWAY6}, "the DNS responder on both gateways")
    rules = _rule_count(lab, host)
    assert rules >= 5, rules  # isolation, masquerade, gateway MAC off the VXLAN port, ...
    lab.run(host, ["ip", "addr", "del", f"{GATEWAY}/24", "dev", f"ov-br-{vni}"])
    lab.run(host, ["ip", "addr", "del", f"{GATEWAY6}/64", "dev", f"ov-br-{vni}"])
    wait_for(lambda: bridge_addresses(ol, 0, vni) == want, "the gateway addresses back")
    lab.run(host, ["ip", "link", "set", f"ov-br-{vni}", "address", "02:00:00:00:00:01"])
    wait_for(lambda: bridge_mac(ol, 0, vni) == mac, "the gateway MAC back")
    lab.run(host, ["nft", "delete", "table", "inet", "overlay_agent"])
    lab.run(host, ["nft", "delete", "rule", "bridge", "overlay_agent", "output", "handle",
                   str(_first_rule_handle(lab, host, "bridge", "output"))])
    wait_for(lambda: our_tables(ol, 0) == tables and _rule_count(lab, host) == rules, "the tables back, whole")
    assert ol.ping(cn, INTERNET), "egress works again"
    ol.ctl(0, "endpoint", "rm", ep["id"])
    ol.ctl(0, "network", "rm", "fix")
    wait_for(lambda: not our_tables(ol, 0), "our tables gone")
    wait_for(lambda: bridge_mac(ol, 0, vni) is None, "the bridge (and its addresses) gone")
    links = _json(lab, host, ["ip", "-j", "link", "show"]) or []
    assert not [lk["ifname"] for lk in links if lk["ifname"].startswith("ov-")], links
    for family, subnet in (("-4", SUBNET), ("-6", SUBNET6)):
        assert not _json(lab, host, ["ip", "-j", family, "route", "show", subnet]), f"a route to {subnet} left"
    wait_for(lambda: not _listening_53(lab, host), "the DNS responder's sockets closed")
    assert ol.request(0, "status").get("dns", {}).get("serving", 0) == 0


def _listening_53(lab: Lab, host: Any) -> set[str]:
    """Addresses with a UDP or TCP socket listening on port 53 in ``host`` (ss)."""
    out = set()
    for proto in ("-lnu", "-lnt"):
        for line in lab.run(host, ["ss", "-H", proto, "sport", "=", ":53"]).stdout.splitlines():
            local = line.split()[3]  # e.g. 10.50.0.1:53 or [fd00:50::1]:53
            out.add(local.rsplit(":", 1)[0].strip("[]").split("%")[0])
    return out


def _first_rule_handle(lab: Lab, host: Any, family: str, chain: str) -> int:
    doc = _json(lab, host, ["nft", "-j", "list", "chain", family, "overlay_agent", chain])
    return int(next(i["rule"]["handle"] for i in doc["nftables"] if "rule" in i))


def _rule_count(lab: Lab, host: Any) -> int:
    n = 0
    for family in ("inet", "bridge"):
        doc = _json(lab, host, ["nft", "-j", "list", "table", family, "overlay_agent"]) or {"nftables": []}
        n += sum(1 for i in doc["nftables"] if "rule" in i)
    return n


def test_a_container_that_moves_keeps_its_gateway_route_and_names(lab_factory: LabFactory) -> None:
    """Item 1, "works on any host and after the container moves": a container with a fixed
    address leaves host0 and is attached on host1 with that address; its default route
    is the same gateway, answered by host1 with the same MAC, the same nameserver
    address answers there, and it reaches a container on host0 over the overlay; host0
    resolves its name to the same address."""
    lab, ol = _lab(lab_factory)
    net = ol.create_network(0, "mv", "--subnet", SUBNET)
    mac = gateway_mac(net["Id"])
    mover, stay = ol.container("m0"), ol.container("m1")
    peer = ol.create_endpoint(0, "mv", stay, "--name", "stay")
    ep = ol.create_endpoint(0, "mv", mover, "--name", "mover", "--ip", "10.50.0.50")
    assert default_routes(ol, mover) == [GATEWAY]
    assert ol.ping(mover, GATEWAY) and ol.ping(mover, peer["ipv4"])
    ol.ctl(0, "endpoint", "rm", ep["id"])
    assert not default_routes(ol, mover)  # gone with its interface
    moved = ol.create_endpoint(1, "mv", mover, "--name", "mover", "--ip", "10.50.0.50")
    assert moved["ipv4"] == "10.50.0.50" and moved["node"] == ol.nodes[1].name, moved
    assert default_routes(ol, mover) == [GATEWAY]
    wait_for(lambda: ol.ping(mover, GATEWAY, count=1), "the gateway from the new host")
    lladdr = [n.get("lladdr") for n in _json(lab, mover, ["ip", "-j", "neigh", "show", GATEWAY]) or []]
    assert lladdr == [mac], lladdr
    wait_for(lambda: ol.ping(mover, peer["ipv4"], count=1), "host0's container from the new host")
    wait_for(lambda: nslookup(ol, mover, "stay", server=GATEWAY) == ("ok", [peer["ipv4"]]),
             "the same nameserver address to answer on the new host")
    wait_for(lambda: nslookup(ol, stay, "mover", server=GATEWAY) == ("ok", ["10.50.0.50"]),
             "host0 to resolve the moved container")


INTERNET6, HOST0_6 = "2001:db8:53::3", "2001:db8:53::1"


def test_ipv6_egress_is_masqueraded_to_the_hosts_address(lab_factory: LabFactory, tmp_path: Path) -> None:
    """Item 2 for IPv6: with IPv6 on the underlay (host0 and "the internet" get addresses of
    2001:db8:53::/64), a container of a dual-stack network pings the internet's IPv6
    address; tcpdump there sees host0's address, never the container's; the internet
    cannot open a connection into the network. A container of an ``--internal``
    dual-stack network reaches neither the internet nor its host over IPv6, only its
    gateway."""
    lab, ol = _lab(lab_factory)
    internet, host = lab.hosts[2], ol.nodes[0].host
    lab.run(internet, IPV6_ON)
    for where, addr in ((host, HOST0_6), (internet, INTERNET6)):
        lab.run(where, ["ip", "-6", "addr", "add", f"{addr}/64", "dev", where.ifname, "nodad"])
    net = ol.create_network(0, "out6", "--subnet", SUBNET, "--subnet", SUBNET6)
    cn = ol.container("e6")
    lab.run(cn, IPV6_ON)
    ep = ol.create_endpoint(0, "out6", cn)
    wait_for(lambda: bridge_addresses(ol, 0, vni_of(net)) == {f"{GATEWAY}/24", f"{GATEWAY6}/64"},
             "host0's gateway addresses")
    fwd = lab.run(host, ["cat", "/proc/sys/net/ipv6/conf/all/forwarding"]).stdout.strip()
    assert fwd == "1"
    cap = tmp_path / "internet6.pcap"
    proc = lab.spawn(internet, ["tcpdump", "-i", internet.ifname, "-n", "-U", "--immediate-mode", "-w", str(cap),
                                "icmp6"], name="tcpdump-internet6")
    wait_for(lambda: "listening on" in proc.log_text() or not proc.running(), "tcpdump to start")
    try:
        wait_for(lambda: ol.ping(cn, INTERNET6, count=1), "container -> the internet over IPv6")
        assert ol.ping(cn, INTERNET6)
    finally:
        lab.stop(proc, signal.SIGINT)
    lines = lab.run(internet, ["tcpdump", "-n", "-r", str(cap), "icmp6 and ip6[40] == 128"]).stdout.splitlines()
    sources = {m.group(1) for line in lines if (m := re.search(r" IP6 (\S+) > 2001:db8:53::3: ICMP6, echo request",
                                                                 line))}
    assert sources == {HOST0_6}, lines  # the host's address, never fd00:50::x
    # No way in: the internet routes the IPv6 subnet via host0, new connections are dropped.
    lab.run(internet, ["ip", "-6", "route", "add", SUBNET6, "via", HOST0_6])
    r = lab.run(internet, ["ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", ep["ipv6"]], check=False)
    assert " 100% packet loss" in r.stdout, r.stdout
    vault = ol.create_network(0, "vault6", "--subnet", "10.51.0.0/24", "--subnet", "fd00:51::/64", "--internal")
    inside = ol.container("v6")
    lab.run(inside, IPV6_ON)
    ol.create_endpoint(0, "vault6", inside)
    wait_for(lambda: "fd00:51::1/64" in bridge_addresses(ol, 0, vni_of(vault)), "host0's vault6 IPv6 gateway")
    wait_for(lambda: ol.ping(inside, "fd00:51::1", count=1), "the internal network's IPv6 gateway")
    assert nslookup(ol, inside, "v6probe.vault6", server="fd00:51::1")[0] == "NXDOMAIN"  # its responder answers
    assert not ol.ping(inside, INTERNET6, count=2), "an internal network reached the internet over IPv6"
    assert not ol.ping(inside, HOST0_6, count=2), "an internal network reached its host over IPv6"
    assert ol.ping(cn, INTERNET6, count=1), "the other network's egress is unaffected"
