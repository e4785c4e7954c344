"""Network options with real agents (issue 13 items 2 and 4): what ``network create``
takes beyond a subnet, seen by the other host; ``--internal`` (no egress); overlapping
subnets only with ``--allow-overlap`` on both networks, isolated; a subnet on the
underlay refused.

Two agent hosts on the lab underlay (192.0.2.1, .2) and a third namespace without an
agent standing in for "the internet" (192.0.2.3). Checked with iproute2 and ping,
independently of the agent's code; every wait has a deadline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from agent.lab.netlab import Lab
from tests.netns.overlaylab import OverlayLab, wait_for
from tests.netns.test_dns import nslookup
from tests.netns.test_gateway import INTERNET, bridge_addresses, default_routes, our_tables
from tests.netns.test_overlay_agents import vni_of

pytestmark = pytest.mark.netns
LabFactory = Callable[..., Lab]


def _lab(lab_factory: LabFactory) -> OverlayLab:
    lab = lab_factory(3)
    ol = OverlayLab(lab, hosts=lab.hosts[:2])
    ol.start_all()
    return ol


def _inspect(ol: OverlayLab, i: int, ref: str) -> dict[str, Any] | None:
    r = ol.ctl(i, "network", "inspect", ref, check=False)
    if r.returncode != 0:
        return None
    out: dict[str, Any] = json.loads(r.stdout)[0]
    return out


def test_options_reach_the_other_host_and_shape_ipam(lab_factory: LabFactory) -> None:
    """Several subnets, a range, a gateway, an aux address, labels and options: host1's
    inspect shows them under Docker's keys; host1 allocates inside the range, never the
    aux address; the bridge holds the given gateway; the container's default route uses it."""
    ol = _lab(lab_factory)
    ol.create_network(0, "opts", "--subnet", "10.60.0.0/24", "--subnet", "10.61.0.0/24",
                      "--ip-range", "10.60.0.8/29", "--gateway", "10.60.0.254", "--aux-address", "dev=10.60.0.9",
                      "--label", "team=infra", "--opt", "com.example.x=1")
    want_config = [
        {"Subnet": "10.60.0.0/24", "IPRange": "10.60.0.8/29", "Gateway": "10.60.0.254",
         "AuxiliaryAddresses": {"dev": "10.60.0.9"}},
        {"Subnet": "10.61.0.0/24", "Gateway": "10.61.0.1"},
    ]
    seen = wait_for(lambda: (n := _inspect(ol, 1, "opts")) and n["IPAM"]["Config"] == want_config and n,
                    "host1's inspect with the options")
    assert seen["Labels"] == {"team": "infra"} and seen["Options"]["com.example.x"] == "1"
    assert seen["Internal"] is False and seen["Attachable"] is True  # every network takes any runtime's endpoints
    cns = [ol.container(f"o{i}") for i in range(2)]
    eps = [ol.create_endpoint(1, "opts", cn) for cn in cns]
    addrs = [e["ipv4"] for e in eps]
    assert all(a in {f"10.60.0.{x}" for x in (8, 10, 11, 12, 13, 14, 15)} for a in addrs), addrs
    wait_for(lambda: "10.60.0.254/24" in bridge_addresses(ol, 1, vni_of(seen)), "host1's --gateway on the bridge")
    assert default_routes(ol, cns[0]) == ["10.60.0.254"]
    assert ol.ping(cns[0], "10.60.0.254") and ol.ping(cns[0], addrs[1])
    # the DNS responder listens on every subnet's gateway, the --gateway one included
    named = ol.create_endpoint(1, "opts", ol.container("o8"), "--name", "named")
    for server in ("10.60.0.254", "10.61.0.1"):
        wait_for(lambda server=server: nslookup(ol, cns[0], "named.opts", server=server) == ("ok", [named["ipv4"]]),  # type: ignore[misc]
                 f"the name answered on {server}")
    r = ol.ctl(1, "endpoint", "create", "opts", "--netns", ol.container("o9"), "--ip", "10.60.0.9", check=False)
    assert r.returncode == 1 and "aux address 'dev'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_internal_network_has_no_egress(lab_factory: LabFactory) -> None:
    """Item 2: a container on a normal network pings the internet; one on an --internal
    network cannot (nor the host's underlay address), yet still reaches its gateway and
    a container of its network on the other host."""
    ol = _lab(lab_factory)
    ol.create_network(0, "open", "--subnet", "10.70.0.0/24")
    vault = ol.create_network(0, "vault", "--subnet", "10.71.0.0/24", "--internal")
    assert vault["Internal"] is True
    wait_for(lambda: (n := _inspect(ol, 1, "vault")) and n["Internal"], "host1 knows vault is internal")
    out, inside, peer = ol.container("i0"), ol.container("i1"), ol.container("i2")
    ol.create_endpoint(0, "open", out)
    ol.create_endpoint(0, "vault", inside)
    far = ol.create_endpoint(1, "vault", peer)
    wait_for(lambda: bridge_addresses(ol, 0, vni_of(vault)) == {"10.71.0.1/24"}, "host0's vault gateway")
    wait_for(lambda: our_tables(ol, 0) == {"inet overlay_agent", "bridge overlay_agent"}, "host0's tables")
    assert ol.ping(out, INTERNET), "a normal network has egress"
    assert not ol.ping(inside, INTERNET, count=2), "an internal network reached the internet"
    assert not ol.ping(inside, "192.0.2.1", count=2), "an internal network reached its host's underlay address"
    assert ol.ping(inside, "10.71.0.1"), "the gateway still answers"
    wait_for(lambda: ol.ping(inside, far["ipv4"], count=1), "the container on host1 (intra-overlay)")


def test_overlap_only_when_both_allow_it_and_stays_isolated(lab_factory: LabFactory) -> None:
    """Item 4: an overlapping subnet is refused unless both networks allow it; two such
    networks carry their own traffic only (the address of a container of the other
    network, same subnet, does not answer); a host with endpoints on one of them refuses
    endpoints on the other (one gateway per subnet on a host); a subnet on the underlay
    is refused."""
    lab = lab_factory(3)
    ol = OverlayLab(lab)
    ol.start_all()
    r = ol.ctl(0, "network", "create", "under", "--subnet", "192.0.2.128/25", check=False)
    assert r.returncode == 1 and "overlaps this host's underlay (192.0.2.0/24)" in r.stderr, r.stderr
    ol.create_network(0, "red", "--subnet", "10.80.0.0/24", "--allow-overlap")
    wait_for(lambda: _inspect(ol, 1, "red"), "host1 knows red")
    r = ol.ctl(1, "network", "create", "blue", "--subnet", "10.80.0.0/24", check=False)
    assert r.returncode == 1 and "both networks need --allow-overlap" in r.stderr, r.stderr
    ol.create_network(1, "blue", "--subnet", "10.80.0.0/24", "--allow-overlap")
    wait_for(lambda: all(_inspect(ol, i, "blue") and _inspect(ol, i, n)["InForce"]  # type: ignore[index]
                         for i in range(2) for n in ("red", "blue")), "both networks in force on both hosts")
    red0, red1, blue1, blue2 = ol.container("r0"), ol.container("r1"), ol.container("b1"), ol.container("b2")
    ol.create_endpoint(0, "red", red0, "--ip", "10.80.0.10")
    ol.create_endpoint(1, "red", red1, "--ip", "10.80.0.11")
    r = ol.ctl(1, "endpoint", "create", "blue", "--netns", blue1, "--ip", "10.80.0.12", check=False)
    assert r.returncode == 1 and "overlaps network 'red'" in r.stderr and "another host" in r.stderr, r.stderr
    wait_for(lambda: _inspect(ol, 2, "blue"), "host2 knows blue")
    ol.create_endpoint(2, "blue", blue2, "--ip", "10.80.0.12")
    wait_for(lambda: ol.ping(red0, "10.80.0.11", count=1), "red crosses hosts")
    assert not ol.ping(red0, "10.80.0.12", count=2), "red reached blue's container"
    assert not ol.ping(blue2, "10.80.0.10", count=2), "blue reached red's container"
    assert not ol.ping(blue2, "10.80.0.11", count=2), "blue reached red's container"


def test_a_subnet_on_a_joining_hosts_underlay_is_refused_there(lab_factory: LabFactory) -> None:
    """Item 4: host0 may create a network whose subnet is on host1's underlay only (its own
    does not overlap it); host1 refuses endpoints on it with the reason, host0 takes them."""
    ol = _lab(lab_factory)
    ol.lab.run(ol.nodes[1].host, ["ip", "addr", "add", "198.51.100.1/24", "dev", "lo"])
    ol.create_network(0, "far", "--subnet", "198.51.100.0/24")
    wait_for(lambda: _inspect(ol, 1, "far"), "host1 knows far")
    c0, c1 = ol.container("f0"), ol.container("f1")
    r = ol.ctl(1, "endpoint", "create", "far", "--netns", c1, check=False)
    assert r.returncode == 1 and "overlaps this host's underlay (198.51.100.0/24)" in r.stderr, r.stderr
    assert ol.create_endpoint(0, "far", c0)["ipv4"].startswith("198.51.100.")
