"""``overlay-cni`` driven through the CNI contract (env + stdin, like cnitool) against real agents.

Two lab hosts run the installed ``overlay-agent``; the plugin runs inside host 0's
namespace (``tests.runtimes.cnicall``). Covered (issue 12 items 2-4): ADD (1.1.0 and
0.4.0 result shapes), CHECK, STATUS, GC, VERSION, DEL twice, DEL of an unknown
container, DEL with an empty CNI_NETNS (containerd), malformed stdin, unknown
network, an address already taken (one clear line, nothing left behind), a CNI
container on host 0 and an ``agentctl endpoint`` on host 1 pinging each other, and a
DEL while the agent is down (succeeds; the restarted agent does not bring the
endpoint back and the peer drops it). ADD's wall time is printed (``-s``).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from typing import Any

import pytest

from agent.lab.netlab import Lab
from tests.netns.overlaylab import OverlayLab, wait_for
from tests.runtimes.cnicall import CniCall, call, conf, container_id

pytestmark = [pytest.mark.netns, pytest.mark.slow]

VNI_OPTION = "com.docker.network.driver.overlay.vxlanid_list"
SUBNET = "10.61.0.0/24"
WITHDRAW_WITHIN = 2.0
LabFactory = Callable[..., Lab]


def links(ol: OverlayLab, netns: str) -> list[str]:
    r = ol.in_container(netns, ["ip", "-j", "link", "show"], check=True)
    return sorted(lk["ifname"] for lk in json.loads(r.stdout))


def addr_of(ol: OverlayLab, netns: str, ifname: str = "eth0") -> list[str]:
    r = ol.in_container(netns, ["ip", "-j", "-4", "addr", "show", "dev", ifname], check=False)
    if r.returncode != 0:
        return []
    return [f"{a['local']}/{a['prefixlen']}" for lk in json.loads(r.stdout) for a in lk["addr_info"]]


def local_endpoints(ol: OverlayLab, i: int) -> list[dict[str, Any]]:
    return [e for e in ol.endpoints(i) if e["local"]]


def assert_ok(r: CniCall) -> Any:
    assert r.rc == 0, (r.stdout, r.stderr)
    return r.out


@pytest.fixture
def ol(lab_factory: LabFactory) -> OverlayLab:
    lab = lab_factory(2)
    overlay = OverlayLab(lab)
    overlay.start_all()
    return overlay


def test_cni_contract(ol: OverlayLab) -> None:
    h0 = ol.lab.hosts[0]
    net = ol.create_network(0, "blue", "--subnet", SUBNET)
    vni = int(net["Options"][VNI_OPTION])
    cfg = conf("blue", ol.nodes[0].socket)
    ca, cb, cc, cd = (ol.container(t) for t in ("a", "b", "c", "d"))
    pa, pc, pd = (f"/run/netns/{n}" for n in (ca, cc, cd))

    # VERSION
    v = assert_ok(call(h0, "VERSION", {"cniVersion": "1.1.0"}))
    assert v == {"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}

    # ADD (1.1.0): the result lists the host veth and eth0 in the sandbox, the address with
    # the network's prefix length; the container really has it.
    id_a = container_id()
    add = call(h0, "ADD", cfg, container=id_a, netns=pa, args="IgnoreUnknown=1;K8S_POD_NAME=web-a")
    res = assert_ok(add)
    # The default route through the network's anycast gateway (issue 13 item 1).
    assert res["cniVersion"] == "1.1.0"
    # The DNS responder listens on the gateway (issue 13 item 3); the network is the search domain.
    assert res["dns"] == {"nameservers": ["10.61.0.1"], "search": ["blue"]}
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.61.0.1"}] and res["ips"][0]["gateway"] == "10.61.0.1"
    host_if, inner = res["interfaces"]
    assert host_if["name"].startswith("ov-") and "sandbox" not in host_if
    assert inner["name"] == "eth0" and inner["sandbox"] == pa and inner["mtu"] == 1450
    assert [ip["interface"] for ip in res["ips"]] == [1] and "version" not in res["ips"][0]
    cidr_a = res["ips"][0]["address"]
    assert cidr_a.startswith("10.61.0.") and cidr_a.endswith("/24")
    assert addr_of(ol, ca) == [cidr_a]
    assert "default via 10.61.0.1 dev eth0" in ol.in_container(ca, ["ip", "route"]).stdout
    ep_a = next(e for e in local_endpoints(ol, 0) if e["ipv4_cidr"] == cidr_a)
    assert ep_a["name"] == "web-a" and ep_a["mac"] == inner["mac"]
    ip_a = cidr_a.split("/")[0]

    # A CNI container on host 0 and an agentctl endpoint on host 1 share the network.
    e_b = ol.create_endpoint(1, "blue", cb)
    wait_for(lambda: ol.entries_for(0, vni, [e_b]) and ip_a in ol.neigh(1, vni), "both hosts' entries")
    wait_for(lambda: ol.ping(ca, e_b["ipv4"], count=1), "the first ping across")
    assert ol.ping(ca, e_b["ipv4"]) and ol.ping(cb, ip_a)

    # CHECK: quiet when all agrees, one line when the prevResult disagrees.
    assert assert_ok(call(h0, "CHECK", {**cfg, "prevResult": res}, container=id_a, netns=pa)) is None
    wrong = json.loads(json.dumps(res))
    wrong["ips"][0]["address"] = "10.61.0.250/24"
    bad = call(h0, "CHECK", {**cfg, "prevResult": wrong}, container=id_a, netns=pa)
    assert bad.rc == 1 and "10.61.0.250/24" in bad.msg
    bad = call(h0, "CHECK", {**cfg, "prevResult": res}, container=container_id(), netns=pa)
    assert bad.rc == 1 and "has no interface eth0" in bad.msg

    # STATUS
    assert assert_ok(call(h0, "STATUS", cfg)) is None
    st = call(h0, "STATUS", conf("nosuch", ol.nodes[0].socket))
    assert st.rc == 1 and st.code == 50 and "nosuch" in st.msg

    # ADD with a 0.4.0 configuration: IPs carry their version; DEL with an empty CNI_NETNS.
    id_c = container_id()
    res_c = assert_ok(call(h0, "ADD", conf("blue", ol.nodes[0].socket, "0.4.0"), container=id_c, netns=pc))
    assert res_c["cniVersion"] == "0.4.0" and res_c["ips"][0]["version"] == "4"
    assert "mtu" not in res_c["interfaces"][1]
    assert assert_ok(call(h0, "DEL", cfg, container=id_c)) is None
    assert "eth0" not in links(ol, cc)
    assert not any(e["ipv4_cidr"] == res_c["ips"][0]["address"] for e in ol.endpoints(0))

    # GC: this network's CNI endpoints that are not listed go; agentctl's and listed ones stay.
    id_d = container_id()
    assert_ok(call(h0, "ADD", cfg, container=id_d, netns=pd))
    e_local = ol.create_endpoint(0, "blue", ol.container("e"))
    gc = {**cfg, "cni.dev/valid-attachments": [{"containerID": id_a, "ifname": "eth0"}]}
    assert assert_ok(call(h0, "GC", gc)) is None
    remaining = {e["id"] for e in local_endpoints(ol, 0)}
    assert remaining == {ep_a["id"], e_local["id"]}
    assert "eth0" not in links(ol, cd)

    # Bad input: one line, exit status 1, nothing created.
    before = (sorted(e["id"] for e in ol.endpoints(0)), links(ol, cc))
    cases: list[tuple[CniCall, int, str]] = [
        (call(h0, "ADD", b"{not json", container=container_id(), netns=pc), 6, "not valid JSON"),
        (call(h0, "ADD", b"[1, 2]", container=container_id(), netns=pc), 6, "JSON object"),
        (call(h0, "ADD", conf("nosuch", ol.nodes[0].socket), container=container_id(), netns=pc), 100,
         "nosuch"),
        (call(h0, "ADD", cfg, container=container_id(), netns=pc, args=f"IgnoreUnknown=1;IP={ip_a}"), 100,
         "already in use"),
        (call(h0, "ADD", cfg, netns=pc), 4, "CNI_CONTAINERID"),
        (call(h0, "ADD", cfg, container="-bad", netns=pc), 4, "CNI_CONTAINERID"),
        (call(h0, "ADD", conf("blue", ol.nodes[0].socket, "9.9.9"), container=container_id(), netns=pc), 1,
         "9.9.9"),
        (call(h0, "ADD", cfg, container=container_id(), netns="/run/netns/nosuch-ns"), 100, "nosuch-ns"),
        (call(h0, "ADD", cfg, container=container_id(), netns=pa), 100, "already exists"),
        (call(h0, "ADD", conf("blue", "/nonexistent/agent.sock"), container=container_id(), netns=pc), 11,
         "not reachable"),
        (call(h0, "FROB", cfg), 4, "CNI_COMMAND"),
    ]
    for r, code, text in cases:
        assert r.rc == 1, (r.stdout, r.stderr)
        assert r.code == code and text in r.msg, (code, text, r.stdout)
    assert (sorted(e["id"] for e in ol.endpoints(0)), links(ol, cc)) == before

    # DEL: withdrawn everywhere within 2 s; twice is fine; an unknown container is fine.
    assert assert_ok(call(h0, "DEL", {**cfg, "prevResult": res}, container=id_a, netns=pa)) is None
    assert "eth0" not in links(ol, ca)
    wait_for(lambda: ip_a not in ol.neigh(1, vni) and ep_a["mac"] not in ol.fdb(1, vni),
             "host 1 to drop the deleted container", within=WITHDRAW_WITHIN)
    assert assert_ok(call(h0, "DEL", cfg, container=id_a, netns=pa)) is None
    assert assert_ok(call(h0, "DEL", cfg, container=container_id(), netns=pa)) is None
    assert assert_ok(call(h0, "DEL", conf("nosuch", ol.nodes[0].socket), container=container_id())) is None

    # The freed address can be taken again, and ADD's wall time (printed) over a few rounds.
    walls = []
    for _ in range(5):
        cid = container_id()
        r = call(h0, "ADD", cfg, container=cid, netns=pa, args=f"IP={ip_a}")
        assert_ok(r)
        walls.append(r.wall_s)
        assert_ok(call(h0, "DEL", cfg, container=cid, netns=pa))
    print(f"\noverlay-cni ADD wall time: median {statistics.median(walls) * 1000:.0f} ms, "
          f"max {max(walls) * 1000:.0f} ms over {len(walls)}")


def test_del_while_agent_down(ol: OverlayLab) -> None:
    """DEL must not fail: with the agent stopped it deletes the container's interface
    itself; the restarted agent does not bring the endpoint back, the peer drops it."""
    h0 = ol.lab.hosts[0]
    net = ol.create_network(0, "blue", "--subnet", SUBNET)
    vni = int(net["Options"][VNI_OPTION])
    cfg = conf("blue", ol.nodes[0].socket)
    ca, ck = ol.container("a"), ol.container("k")
    ol.create_endpoint(1, "blue", ol.container("b"))
    id_a, id_k = container_id(), container_id()
    res = assert_ok(call(h0, "ADD", cfg, container=id_a, netns=f"/run/netns/{ca}"))
    kept = assert_ok(call(h0, "ADD", cfg, container=id_k, netns=f"/run/netns/{ck}"))
    ip_a, ip_k = (r["ips"][0]["address"].split("/")[0] for r in (res, kept))
    wait_for(lambda: {ip_a, ip_k} <= set(ol.neigh(1, vni)), "host 1 to learn both containers")

    ol.stop(0)
    r = call(h0, "DEL", cfg, container=id_a, netns=f"/run/netns/{ca}")
    assert r.rc == 0 and r.stdout == "", (r.stdout, r.stderr)
    assert "DEL without the agent" in r.stderr
    assert "eth0" not in links(ol, ca)
    assert call(h0, "DEL", cfg, container=id_a).rc == 0  # no namespace either: still fine

    ol.start(0)
    wait_for(lambda: ip_a not in ol.neigh(1, vni), "host 1 to drop the container deleted meanwhile")
    assert ip_k in ol.neigh(1, vni)
    assert [e["ipv4"] for e in local_endpoints(ol, 0)] == [ip_k]
    assert ol.ping(ck, next(e["ipv4"] for e in ol.endpoints(1) if e["local"]), count=2)
    # the address is free again
    assert_ok(call(h0, "ADD", cfg, container=container_id(), netns=f"/run/netns/{ca}", args=f"IP={ip_a}"))
