"""Host access with real agents (issue 13 item 2): with ``--host-access`` each host holds
an overlay address of its own (an endpoint row it owns), so host A reaches a container on
host B through the overlay and B's host a container on A; the host's frames carry that
row's MAC on the underlay, never the gateway's; all of it goes with ``network rm``.

Two agent hosts on the lab underlay (192.0.2.1, .2). Checked with iproute2, ping and
tcpdump, independently of the agent's code; every wait has a deadline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.lab.netlab import Lab
from dataplane.nft.compile import gateway_mac
from tests.netns.overlaylab import OverlayLab, wait_for
from tests.netns.test_gateway import bridge_addresses, bridge_mac, our_tables
from tests.netns.test_overlay_agents import vni_of, vxlan_frames

pytestmark = pytest.mark.netns
LabFactory = Callable[..., Lab]
SUBNET = "10.90.0.0/24"


def _host_rows(ol: OverlayLab, i: int) -> list[dict[str, Any]]:
    return [e for e in ol.endpoints(i) if str(e["name"]).startswith("host-")]


def _host_ping(ol: OverlayLab, i: int, ip: str) -> bool:
    r = ol.lab.run(ol.nodes[i].host, ["ping", "-c", "1", "-W", "1", ip], check=False)
    return r.returncode == 0


def test_hosts_reach_containers_on_other_hosts(lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lab_factory(2)
    ol = OverlayLab(lab, hosts=lab.hosts[:2])
    ol.start_all()
    net = ol.create_network(0, "ha", "--subnet", SUBNET, "--host-access")
    assert net["HostAccess"] is True
    vni, gw_mac = vni_of(net), gateway_mac(net["Id"])
    cns = [ol.container(f"h{i}") for i in range(2)]
    eps = [ol.create_endpoint(i, "ha", cns[i]) for i in range(2)]
    # each host sees the other's host row (never its own); its address is on its bridge
    rows = [wait_for(lambda i=i: (r := _host_rows(ol, 1 - i)) and r, f"host{i}'s row on host{1 - i}")  # type: ignore[misc]
            for i in range(2)]
    hosts = [r[0] for r in rows]
    assert [h["node"] for h in hosts] == [ol.nodes[0].name, ol.nodes[1].name]
    for i in range(2):
        want = {f"{hosts[i]['ipv4']}/24", "10.90.0.1/32"}
        wait_for(lambda i=i, want=want: bridge_addresses(ol, i, vni) == want,  # type: ignore[misc]
                 f"host{i}'s own address and the gateway on its bridge")
        assert bridge_mac(ol, i, vni) == gw_mac
    cap = tmp_path / "underlay.pcap"
    proc = ol.capture(0, cap)
    try:
        wait_for(lambda: _host_ping(ol, 0, eps[1]["ipv4"]), "host0 -> container on host1")
        wait_for(lambda: _host_ping(ol, 1, eps[0]["ipv4"]), "host1 -> container on host0")
        assert _host_ping(ol, 0, eps[0]["ipv4"]), "host0 -> its own container"
        assert ol.ping(cns[1], "10.90.0.1"), "the gateway still answers on host1"
    finally:
        ol.stop_capture(proc)
    frames = [f for _, v, f in vxlan_frames(cap) if v == vni]
    raw_gw = bytes.fromhex(gw_mac.replace(":", ""))
    host_macs = {bytes.fromhex(h["mac"].replace(":", "")) for h in hosts}
    assert any(f[6:12] in host_macs or f[0:6] in host_macs for f in frames), "no host-access frame captured"
    assert not [f for f in frames if raw_gw in (f[0:6], f[6:12])], "the gateway MAC crossed the underlay"
    # removed with the network: rows, addresses, tables
    for i in range(2):
        ol.ctl(i, "endpoint", "rm", eps[i]["id"])
    wait_for(lambda: not _host_rows(ol, 0) and not _host_rows(ol, 1), "the host rows withdrawn")
    # host0 left the network's scope with its last endpoint; host1's leave reaches it
    # by cluster-wide gossip a moment later, and until then host0 rightly refuses
    # ("in use by endpoints on host1"): retry as an operator would.
    def removed() -> bool:
        r = ol.ctl(0, "network", "rm", "ha", check=False)
        assert r.returncode == 0 or "in use" in r.stderr, r.stderr
        return r.returncode == 0

    wait_for(removed, "network rm on host0 once host1's leave arrived")
    for i in range(2):
        wait_for(lambda i=i: bridge_mac(ol, i, vni) is None and not our_tables(ol, i),  # type: ignore[misc]
                 f"host{i}'s bridge and tables gone")
    r = ol.ctl(1, "network", "inspect", "ha", check=False)
    assert r.returncode == 1 and not json.loads(r.stdout or "[]")
