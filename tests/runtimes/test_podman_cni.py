"""podman 4.3 + CNI + ``overlay-cni`` on two lab hosts (issue 12 items 2-4).

Each host runs the installed agent and its own private podman set-up
(``tests.runtimes.podmanlab``). Covered: containers on two hosts ping each other over
the overlay (with ``tuning`` chained after our plugin), a podman container on host 0 and
an ``agentctl endpoint`` on host 1 share the network, ``podman rm -f`` withdraws the
container from the other host's kernel within 2 s, podman's ``--network-alias`` becomes
the endpoint's alias on the other host (with the capabilities of the packaged conflist),
the gateway of the ADD result's ``dns`` is the containers' nameserver and names resolve
across hosts with it (and vanish with the container), a container's egress to another
host's address is masqueraded to its host's address (tcpdump), ``podman network connect`` /
``disconnect`` of a running container, and a failed ADD (the address is taken) shows
one clear line and leaves nothing behind.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.lab.netlab import Lab
from tests.netns.overlaylab import OverlayLab, wait_for
from tests.runtimes import nslookup
from tests.runtimes.nslookup import Lookup
from tests.runtimes.podmanlab import PodmanLab, podman_skip_reason

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.podman]

VNI_OPTION = "com.docker.network.driver.overlay.vxlanid_list"
WITHDRAW_WITHIN = 2.0
LabFactory = Callable[..., Lab]
PACKAGED = Path(__file__).resolve().parents[2] / "packaging" / "overlay-cni.conflist"
CAPABILITIES = json.loads(PACKAGED.read_text())["plugins"][0]["capabilities"]
"""What the shipped conflist declares: the test runs podman with exactly that."""


def lookup(pl: PodmanLab, i: int, container: str, name: str) -> Lookup:
    """busybox ``nslookup NAME`` in ``container`` (with the nameserver and search domain
    podman wrote into its resolv.conf)."""
    return nslookup.parse(pl.exec(i, container, ["nslookup", name]).stdout)


def resolves(pl: PodmanLab, i: int, container: str, name: str) -> str | None:
    """The IPv4 address ``lookup`` gives, or None."""
    return lookup(pl, i, container, name).address


@pytest.fixture
def pl(lab_factory: LabFactory) -> Iterator[PodmanLab]:
    reason = podman_skip_reason()
    if reason:
        pytest.skip(reason)
    ol = OverlayLab(lab_factory(2))
    ol.start_all()
    lab = PodmanLab.for_overlay(ol)
    try:
        yield lab
    finally:
        problems = lab.close()
    assert not problems, problems


def test_two_hosts_ping_rm_withdraws(pl: PodmanLab) -> None:
    ol = pl.ol
    net = ol.create_network(0, "blue", "--subnet", "10.63.0.0/24")
    vni = int(net["Options"][VNI_OPTION])
    for i in (0, 1):
        pl.add_network(i, "blue", plugins=[{"type": "tuning"}], capabilities=CAPABILITIES)
    pl.run(0, "web-a", "blue")
    # --network-alias reaches the plugin as runtimeConfig.aliases (the aliases capability)
    r = pl.podman(1, "run", "-d", "--name", "web-b", "--network", "blue", "--network-alias", "db",
                  "--rootfs", str(pl.rootfs), "/bin/busybox", "sleep", "100000")
    pl._containers.add(r.stdout.strip())
    ip_a, ip_b = pl.ip_of(0, "web-a"), pl.ip_of(1, "web-b")
    assert ip_a != ip_b and ip_a.startswith("10.63.0.")
    names = {e["name"]: e for e in ol.endpoints(0)}
    assert names["web-a"]["ipv4"] == ip_a and names["web-b"]["ipv4"] == ip_b  # podman's names
    # podman 4.3 adds the container's short id to its aliases (Docker compatibility)
    short_b = pl.container_id(1, "web-b")[:12]
    wait_for(lambda: {"db", short_b} <= set({e["name"]: e for e in ol.endpoints(0)}["web-b"]["aliases"]),
             "host 0 to see web-b's aliases db and its short id")
    # the ADD result's routes and dns (the anycast gateway): the default route and the
    # nameserver podman wrote into the containers' resolv.conf, on both hosts
    for i, name in ((0, "web-a"), (1, "web-b")):
        route = pl.exec(i, name, ["ip", "-4", "route", "show", "default"], check=True).stdout
        assert route.split()[:3] == ["default", "via", "10.63.0.1"], route
        resolv = pl.exec(i, name, ["cat", "/etc/resolv.conf"], check=True).stdout
        assert "nameserver 10.63.0.1" in resolv.splitlines(), resolv
        assert any(ln.split()[:1] == ["search"] and "blue" in ln.split()[1:] for ln in resolv.splitlines()), resolv
    wait_for(lambda: resolves(pl, 0, "web-a", "web-b") == ip_b, "web-a to resolve web-b (host 1) by name")
    assert resolves(pl, 0, "web-a", "db") == ip_b and resolves(pl, 0, "web-a", short_b) == ip_b
    wait_for(lambda: resolves(pl, 1, "web-b", "web-a.blue") == ip_a, "web-b to resolve web-a.blue (host 0)")
    # egress: a podman container reaches a host address outside the overlay (host 1's
    # underlay address), masqueraded to its own host's address (tcpdump on host 1)
    lab, host0, host1 = ol.lab, ol.nodes[0].host, ol.nodes[1].host
    cap = lab.workdir / "podman-egress.pcap"
    dump = lab.spawn(host1, ["tcpdump", "-i", host1.ifname, "-n", "-U", "--immediate-mode", "-w", str(cap),
                             "icmp"], name="tcpdump-podman-egress")
    wait_for(lambda: "listening on" in dump.log_text() or not dump.running(), "tcpdump to start")
    try:
        assert pl.ping(0, "web-a", host1.addr), "podman container -> another host's underlay address"
    finally:
        lab.stop(dump, signal.SIGINT)
    lines = lab.run(host1, ["tcpdump", "-n", "-r", str(cap), "icmp[icmptype] == icmp-echo"]).stdout.splitlines()
    sources = {m.group(1) for ln in lines if (m := re.search(r" IP (\S+) > \S+: ICMP echo request", ln))}
    assert sources == {host0.addr}, lines  # the host's address, never the container's
    # the mixed case: an agentctl endpoint on host 1 in the same network
    nc = ol.container("c")
    e_c = ol.create_endpoint(1, "blue", nc)
    wait_for(lambda: {ip_b, e_c["ipv4"]} <= set(ol.neigh(0, vni)) and ip_a in ol.neigh(1, vni),
             "every host to learn the others' containers")
    wait_for(lambda: pl.ping(0, "web-a", ip_b, count=1), "the first ping across")
    assert pl.ping(0, "web-a", ip_b) and pl.ping(1, "web-b", ip_a)
    assert pl.ping(0, "web-a", e_c["ipv4"]) and ol.ping(nc, ip_a)

    mac_b = ol.neigh(0, vni)[ip_b]
    pl.podman(1, "rm", "-f", "-t", "0", "web-b")
    wait_for(lambda: ip_b not in ol.neigh(0, vni) and mac_b not in ol.fdb(0, vni),
             "host 0 to drop the removed container's entries", within=WITHDRAW_WITHIN)
    assert not [e for e in ol.endpoints(1) if e["local"] and e["ipv4"] == ip_b]
    wait_for(lambda: lookup(pl, 0, "web-a", "web-b").nxdomain, "web-b's name to go on host 0 (NXDOMAIN)")
    gone = lookup(pl, 0, "web-a", "db")
    assert gone.nxdomain, f"the alias goes with the container: {gone}"


def test_connect_disconnect_and_failed_add(pl: PodmanLab) -> None:
    ol = pl.ol
    ol.create_network(0, "blue", "--subnet", "10.63.0.0/24")
    green = ol.create_network(0, "green", "--subnet", "10.64.0.0/24")
    vni = int(green["Options"][VNI_OPTION])
    for i in (0, 1):
        pl.add_network(i, "blue")
        pl.add_network(i, "green")
    pl.run(0, "web-a", "blue")
    pl.run(1, "web-b", "green")
    ip_b = pl.ip_of(1, "web-b")

    pl.podman(0, "network", "connect", "green", "web-a")
    assert "eth1" in pl.links(0, "web-a")
    ip_a = pl.ip_of(0, "web-a", "eth1")
    assert ip_a.startswith("10.64.0.")
    wait_for(lambda: ip_a in ol.neigh(1, vni), "host 1 to learn the connected container")
    wait_for(lambda: pl.ping(0, "web-a", ip_b, count=1), "the first ping on green")
    assert pl.ping(1, "web-b", ip_a)
    pl.podman(0, "network", "disconnect", "green", "web-a")
    assert "eth1" not in pl.links(0, "web-a")
    wait_for(lambda: ip_a not in ol.neigh(1, vni), "host 1 to drop the disconnected container",
             within=WITHDRAW_WITHIN)

    # A failed ADD: the address is taken (by web-a on blue, a network this host takes part
    # in, so its tables know every address). One clear line; no container, endpoint or
    # namespace left.
    taken = pl.ip_of(0, "web-a")
    pl.add_network(0, "blue-fixed", "blue", args={"cni": {"ips": [taken]}})
    before = (sorted(e["id"] for e in ol.endpoints(0)), pl.podman(0, "ps", "-aq").stdout)
    r = pl.run(0, "web-x", "blue-fixed", "true", detach=False, check=False)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if 'plugin type="overlay-cni" failed (add)' in ln]
    assert len(lines) == 1 and f"address {taken} is already in use" in lines[0], r.stderr
    print(f"\nfailed ADD as podman shows it: {lines[0]}")
    assert "Traceback" not in r.stderr
    after = (sorted(e["id"] for e in ol.endpoints(0)), pl.podman(0, "ps", "-aq").stdout)
    assert after == before
