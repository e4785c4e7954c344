"""The Docker network + IPAM plugin with real dockerd daemons on two lab hosts (issue 12, items 1 and 4).

Each lab host runs an agent serving a uniquely named plugin and its own dockerd
(tests/runtimes/dockerlab.py). Covered: ``docker network create`` on both hosts maps
to one cluster network; named containers on the two hosts ping each other with 0 %
loss and the underlay carries VXLAN; ``docker stop`` withdraws the endpoint from the
other host's kernel (deadline wait); endpoints are named after their containers (each
agent asks its dockerd) on every host; ``docker network connect/disconnect`` of a
running container; a dockerd restart and an agent restart keep networks and running
containers working; a Docker container and an ``agentctl endpoint`` on the other host
share a network. Waits use deadlines; no timing is asserted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.lab.netlab import Lab
from tests.netns.overlaylab import wait_for
from tests.runtimes import nslookup
from tests.runtimes.dockerlab import IMAGE, DockerLab, docker_skip_reason, make_rootfs
from tests.runtimes.nslookup import Lookup

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.docker]

VNI_OPTION = "com.docker.network.driver.overlay.vxlanid_list"
SUBNET = "10.77.0.0/24"
WITHDRAW_WITHIN = 2.0
"""Issue 12: a stopped container's entries leave every peer's kernel within 2 s."""


@pytest.fixture
def dl(lab_factory: Callable[..., Lab], tmp_path: Path) -> Iterator[DockerLab]:
    reason = docker_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = lab_factory(2)
    dlab = DockerLab(lab, 2)
    try:
        dlab.start_agents()
        rootfs = make_rootfs(tmp_path / "rootfs")
        for i in range(2):
            dlab.start_dockerd(i)
            dlab.import_image(i, rootfs)
        yield dlab
    finally:
        problems = dlab.close()
        assert not problems, problems


def create_network(dl: DockerLab, i: int, name: str, *extra: str, subnet: str | None = SUBNET) -> None:
    p = dl.plugins[i]
    dl.docker(i, "network", "create", "-d", p, "--ipam-driver", p, *(["--subnet", subnet] if subnet else []),
              *extra, name)


def run(dl: DockerLab, i: int, name: str, network: str, *extra: str) -> str:
    dl.docker(i, "run", "-d", "--name", name, "--network", network, *extra, IMAGE, "sleep", "3600")
    return dl.container_ip(i, name, network)


def cluster_network(dl: DockerLab, i: int, name: str | None = None) -> dict[str, Any]:
    nets = [n for n in dl.ol.request(i, "network", {"action": "ls"}) if name is None or n["Name"] == name]
    assert len(nets) == 1, nets
    inspect: dict[str, Any] = dl.ol.request(i, "network", {"action": "inspect", "ref": nets[0]["ID"]})[0]
    return inspect


def names(dl: DockerLab, i: int) -> dict[str, str]:
    """Endpoint name by IPv4 address, as host i sees the cluster."""
    return {e["ipv4"]: e["name"] for e in dl.ol.endpoints(i)}


def lookup(dl: DockerLab, i: int, container: str, name: str) -> Lookup:
    """busybox ``nslookup NAME`` in ``container`` (its resolv.conf)."""
    return nslookup.parse(dl.exec(i, container, ["nslookup", name], timeout=30).stdout)


def resolves(dl: DockerLab, i: int, container: str, name: str) -> str | None:
    """The IPv4 address ``lookup`` gives, or None."""
    return lookup(dl, i, container, name).address


def working(dl: DockerLab, i: int, container: str, ip: str, what: str) -> None:
    """Wait (deadline) for a 3-ping round from ``container`` on host i to ``ip`` with 0 % loss."""
    wait_for(lambda: dl.ping(i, container, ip, count=3), what + " (3 pings, 0 % loss)")


def remote_entries(dl: DockerLab, i: int, vni: int) -> tuple[dict[str, str], dict[str, str]]:
    return dl.ol.fdb(i, vni), dl.ol.neigh(i, vni)


def test_two_hosts_ping_stop_withdraws(dl: DockerLab, tmp_path: Path) -> None:
    """Same network on both hosts; named containers ping each other over VXLAN; the
    container names resolve across hosts through the agent's DNS responder (``docker run
    --dns GATEWAY``, behind Docker's embedded resolver); docker stop withdraws the stopped
    container's entries from the other host within 2 s, and its name; web-b's
    ``--network-alias db`` resolves on host 0 and goes with it."""
    create_network(dl, 0, "blue")
    create_network(dl, 1, "blue")
    net = cluster_network(dl, 0)
    assert cluster_network(dl, 1)["Id"] == net["Id"]  # the second host joined, not a new network
    vni = int(net["Options"][VNI_OPTION])
    gateway = net["IPAM"]["Config"][0]["Gateway"]
    ip_a = run(dl, 0, "web-a", "blue", "--dns", gateway)
    ip_b = run(dl, 1, "web-b", "blue", "--network-alias", "db")
    assert ip_a != ip_b
    wait_for(lambda: ip_a in dl.ol.neigh(1, vni) and ip_b in dl.ol.neigh(0, vni), "both hosts to learn the other container")
    cap = dl.ol.capture(0, tmp_path / "vxlan.pcap")
    try:
        assert dl.ping(0, "web-a", ip_b), dl.exec(0, "web-a", ["ping", "-c", "1", ip_b]).stdout
        assert dl.ping(1, "web-b", ip_a)
    finally:
        dl.ol.stop_capture(cap)
    assert (tmp_path / "vxlan.pcap").stat().st_size > 24 + 16 * 4, "no VXLAN on the underlay"
    # no gateway bridge invented by Docker, in the host namespaces or the containers
    for i in range(2):
        links = dl.lab.run(dl.lab.hosts[i], ["ip", "-o", "link"]).stdout
        assert "docker_gwbridge" not in links and "docker0" not in links
    assert "eth1" not in dl.exec(0, "web-a", ["ip", "-o", "link"]).stdout
    # Endpoints are named after their containers (asked of each host's dockerd), on both hosts.
    wait_for(lambda: names(dl, 0) == {ip_a: "web-a", ip_b: "web-b"} == names(dl, 1),
             "both hosts to show the endpoints under their containers' names")
    wait_for(lambda: resolves(dl, 0, "web-a", "web-b") == ip_b, "web-a to resolve web-b (on host 1) by name")
    # NAME.NETWORK with the cluster network's name (docker-<id> here: no --ipam-opt network=)
    assert resolves(dl, 0, "web-a", f"web-b.{net['Name']}") == ip_b
    # Docker's --network-alias (read from host 1's dockerd) resolves on host 0 too.
    wait_for(lambda: resolves(dl, 0, "web-a", "db") == ip_b, "web-a to resolve web-b's alias db")

    mac_b = next(m for ip, m in dl.ol.neigh(0, vni).items() if ip == ip_b)
    dl.docker(1, "stop", "-t", "1", "web-b")
    wait_for(lambda: ip_b not in dl.ol.neigh(0, vni) and mac_b not in dl.ol.fdb(0, vni),
             "host 0 to drop the stopped container's entries", within=WITHDRAW_WITHIN)
    wait_for(lambda: lookup(dl, 0, "web-a", "web-b").nxdomain, "web-b's name to go (NXDOMAIN)")
    gone = lookup(dl, 0, "web-a", "db")
    assert gone.nxdomain, f"the alias goes with the endpoint: {gone}"


def test_connect_disconnect_running_container(dl: DockerLab) -> None:
    """``--ipam-opt network=NAME`` names the cluster network (the second host needs no
    subnet); ``docker network connect`` gives a running container a second interface on
    it, and its one resolver (blue's gateway, ``--dns``) then answers green's names too;
    ``disconnect`` takes it away and withdraws it from the other host's kernel."""
    create_network(dl, 0, "blue")
    create_network(dl, 0, "green", "--ipam-opt", "network=green", subnet="10.78.0.0/24")
    create_network(dl, 1, "green", "--ipam-opt", "network=green", subnet=None)
    green = cluster_network(dl, 1, "green")
    # refusals reach the user as one line, and change nothing
    p = dl.plugins[1]
    r = dl.docker(1, "network", "create", "-d", p, "--ipam-driver", p, "--ipam-opt", "network=green",
                  "--subnet", "10.99.0.0/24", "green2", check=False)
    assert r.returncode != 0 and "cluster network 'green' has subnet 10.78.0.0/24, not 10.99.0.0/24" in r.stderr
    r = dl.docker(1, "network", "create", "-d", p, "--ipam-driver", p, "--subnet", "10.98.0.0/24",
                  "--ipam-opt", "bogus=1", "odd", check=False)
    assert r.returncode != 0 and "unknown --ipam-opt 'bogus'" in r.stderr, r.stderr
    assert len(dl.ol.request(1, "network", {"action": "ls"})) == 2
    assert dl.ol.request(1, "status")["docker_plugin"]["networks"] == 1
    assert green["IPAM"]["Config"][0]["Subnet"] == "10.78.0.0/24"
    vni = int(green["Options"][VNI_OPTION])
    blue = next(n for n in dl.ol.request(0, "network", {"action": "ls"}) if n["Subnets"] == [SUBNET])
    blue_gw = dl.ol.request(0, "network", {"action": "inspect", "ref": blue["ID"]})[0]["IPAM"]["Config"][0]["Gateway"]
    run(dl, 0, "web-a", "blue", "--dns", blue_gw)
    ip_b = run(dl, 1, "web-b", "green")
    missing = lookup(dl, 0, "web-a", "web-b")
    assert missing.nxdomain, f"not on green yet: {missing}"
    dl.docker(0, "network", "connect", "green", "web-a")
    ip_a = dl.container_ip(0, "web-a", "green")
    assert ip_a.startswith("10.78.0.") and ip_a != ip_b
    assert "eth1" in dl.exec(0, "web-a", ["ip", "-o", "link"]).stdout
    wait_for(lambda: ip_a in dl.ol.neigh(1, vni), "host 1 to learn the connected container")
    wait_for(lambda: dl.ping(0, "web-a", ip_b, count=1), "the first ping across (ARP settles)")
    assert dl.ping(0, "web-a", ip_b)
    assert dl.ping(1, "web-b", ip_a)
    wait_for(lambda: resolves(dl, 0, "web-a", "web-b") == ip_b, "web-a to resolve web-b (green) through blue's gateway")
    dl.docker(0, "network", "disconnect", "green", "web-a")
    wait_for(lambda: ip_a not in dl.ol.neigh(1, vni), "host 1 to drop the disconnected container",
             within=WITHDRAW_WITHIN)
    assert "eth1" not in dl.exec(0, "web-a", ["ip", "-o", "link"]).stdout
    assert not any(e["ipv4"] == ip_a for e in dl.ol.endpoints(0))


def test_dockerd_and_agent_restarts_keep_containers_working(dl: DockerLab) -> None:
    """dockerd restarts (live-restore) without a CreateNetwork replay: the running
    containers keep their connectivity and a new container joins the same network. An
    agent restart keeps them working too, and a later ``docker stop`` still withdraws."""
    create_network(dl, 0, "blue")
    create_network(dl, 1, "blue")
    vni = int(cluster_network(dl, 0)["Options"][VNI_OPTION])
    ip_a = run(dl, 0, "web-a", "blue")
    ip_b = run(dl, 1, "web-b", "blue")
    wait_for(lambda: dl.ping(0, "web-a", ip_b, count=1), "web-a to reach web-b")

    dl.stop_dockerd(1)
    dl.start_dockerd(1)
    wait_for(lambda: dl.inspect(1, "web-b")["State"]["Running"], "dockerd to report web-b running (live-restore)")
    # "Working" is a 3-ping round with 0 % loss in each direction, waited for with a
    # deadline: a restart may cost a packet or two while ARP and the entries settle.
    working(dl, 1, "web-b", ip_a, "web-b to reach web-a after the dockerd restart")
    working(dl, 0, "web-a", ip_b, "web-a to reach web-b after the dockerd restart")
    ip_c = run(dl, 1, "web-c", "blue")
    assert ip_c not in (ip_a, ip_b)
    working(dl, 0, "web-a", ip_c, "web-a to reach the container made after the dockerd restart")

    assert dl.ol.stop(0) == 0
    dl.start_agent(0)
    working(dl, 0, "web-a", ip_b, "web-a to reach web-b after the agent restart")
    working(dl, 1, "web-c", ip_a, "web-c to reach web-a after the agent restart")
    assert names(dl, 0)[ip_a] == "web-a"  # the name was kept with the endpoint
    ip_d = run(dl, 0, "web-d", "blue")
    assert ip_d not in (ip_a, ip_b, ip_c)
    working(dl, 1, "web-b", ip_d, "web-b to reach the container made after the agent restart")
    dl.docker(0, "stop", "-t", "1", "web-a")
    wait_for(lambda: ip_a not in dl.ol.neigh(1, vni), "host 1 to drop web-a after the agent restart",
             within=WITHDRAW_WITHIN)


def test_docker_container_and_agentctl_endpoint_share_a_network(dl: DockerLab) -> None:
    """A ``docker run`` container on host 0 and an ``agentctl endpoint create`` endpoint on
    host 1 share one cluster network: they ping each other with 0 % loss, and removing the
    container withdraws its entries from host 1's kernel within 2 s."""
    create_network(dl, 0, "mixed", "--ipam-opt", "network=mixed")
    vni = int(cluster_network(dl, 0, "mixed")["Options"][VNI_OPTION])
    ip_a = run(dl, 0, "web-a", "mixed")
    wait_for(lambda: any(n["Name"] == "mixed" for n in dl.ol.request(1, "network", {"action": "ls"})),
             "host 1 to know the network")
    netns_b = dl.ol.container("b")
    ep_b = dl.ol.create_endpoint(1, "mixed", netns_b, "--name", "plain-b")
    ip_b = ep_b["ipv4"]
    assert ip_b != ip_a and ip_b.startswith(SUBNET.rsplit(".", 1)[0] + ".")
    wait_for(lambda: ip_a in dl.ol.neigh(1, vni) and ip_b in dl.ol.neigh(0, vni),
             "both hosts to learn the other side's endpoint")
    wait_for(lambda: dl.ping(0, "web-a", ip_b, count=1), "the first ping across (ARP settles)")
    assert dl.ping(0, "web-a", ip_b), dl.exec(0, "web-a", ["ping", "-c", "3", ip_b]).stdout
    assert dl.ol.ping(netns_b, ip_a)
    wait_for(lambda: names(dl, 1).get(ip_a) == "web-a", "host 1 to show the container's name")

    mac_a = dl.ol.neigh(1, vni)[ip_a]
    dl.docker(0, "rm", "-f", "web-a")
    wait_for(lambda: ip_a not in dl.ol.neigh(1, vni) and mac_a not in dl.ol.fdb(1, vni),
             "host 1 to drop the removed container's entries", within=WITHDRAW_WITHIN)
    assert ip_a not in names(dl, 1)
    assert dl.ol.ping(netns_b, ip_b)  # its own endpoint is untouched


def test_network_create_options_become_the_cluster_networks(dl: DockerLab) -> None:
    """``docker network create --subnet --ip-range --gateway --aux-address -o k=v`` with our
    driver and IPAM driver: the cluster network gets them (``network inspect`` with Docker's
    key names, on the other host too); containers on both hosts get addresses from the
    range, the gateway as their default route, and reach each other; the second host's
    ``docker network create --subnet`` joins with the network's own gateway; a --gateway
    that differs from an existing network's is refused in one line."""
    create_network(dl, 0, "opts", "--ip-range", "10.77.0.128/25", "--gateway", "10.77.0.254",
                   "--aux-address", "printer=10.77.0.5", "--aux-address", "cam=10.77.0.200",
                   "-o", "com.example.team=infra")
    create_network(dl, 1, "opts")
    for i in range(2):
        net = cluster_network(dl, i)
        assert net["IPAM"]["Config"] == [{"Subnet": SUBNET, "IPRange": "10.77.0.128/25", "Gateway": "10.77.0.254",
                                          "AuxiliaryAddresses": {"cam": "10.77.0.200", "printer": "10.77.0.5"}}], net
        assert net["Options"]["com.example.team"] == "infra", net["Options"]
    p = dl.plugins[1]
    r = dl.docker(1, "network", "create", "-d", p, "--ipam-driver", p, "--subnet", SUBNET,
                  "--gateway", "10.77.0.1", "opts2", check=False)
    assert r.returncode != 0 and "has gateway 10.77.0.254, not 10.77.0.1" in r.stderr, r.stderr
    ips = [run(dl, i, f"o{i}", "opts") for i in range(2)]
    for ip in ips:
        host = int(ip.rsplit(".", 1)[1])
        assert 128 <= host <= 255 and ip not in ("10.77.0.200", "10.77.0.254"), ips
    for i in range(2):  # the Join's gateway, on both hosts
        route = dl.exec(i, f"o{i}", ["ip", "route"]).stdout
        assert "default via 10.77.0.254" in route, route
    working(dl, 0, "o0", ips[1], "o0 to reach o1 on the other host")
    assert dl.ping(0, "o0", "10.77.0.254", count=1), "the gateway answers"
