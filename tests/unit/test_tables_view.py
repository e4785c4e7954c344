"""What the dataplane is told (``gossip.tables.view``) and the tables' change signal.

Driven through real Swim + Tables nodes (``tests.stateful.tablesnet``): the view holds
the networks in force and the visible endpoints minus conflict losers, local endpoints
carry the caller's interface names, ``ViewSource`` hands back the same object while
nothing moved; subscribers hear of every change once, with the entry point's ``now``,
and of nothing else.
"""

from __future__ import annotations

import itertools

from gossip.members import Status
from gossip.tables.replica import Tables
from gossip.tables.view import ViewSource, build_view
from tests.stateful.tablesnet import Net, cluster


def _ifname(ep_id: str) -> str:
    return "ov-" + ep_id[:12]


def _web(net: Net) -> str:
    network = net.call("n0", lambda t: t.create_network(net.now, "web", ["10.1.0.0/24"], mtu=1400))
    net.wait(lambda: all(n.tables.networks() for n in net.nodes.values()), timeout=60)
    return network.id


def _up(net: Net, observer: str, name: str) -> bool:
    m = net.nodes[observer].swim.member(name)
    return m is not None and m.status in (Status.ALIVE, Status.SUSPECT)


def _source(net: Net, name: str) -> ViewSource:
    node = net.nodes[name]
    return ViewSource(node.tables, node.swim.members, local_vtep=node.addr[0], underlay_mtu=1500,
                      vxlan_port=4789, prefix="ov-", ifname=_ifname)


def test_the_view_holds_networks_and_visible_endpoints_without_conflict_losers() -> None:
    net = cluster(4)
    web = _web(net)
    net.partition([["n0", "n1"], ["n2", "n3"]])
    x = net.call("n1", lambda t: t.create_endpoint(net.now, "web", ipv4="10.1.0.50", name="x"))
    y = net.call("n2", lambda t: t.create_endpoint(net.now, "web", ipv4="10.1.0.50", name="y"))
    z = net.call("n3", lambda t: t.create_endpoint(net.now, "web", name="z"))
    net.run_for(2)
    net.heal()
    t1 = net.nodes["n1"].tables
    net.wait(lambda: len(t1.endpoints()) == 3 and len(t1.conflicts()) == 1, timeout=120)
    loser = t1.conflicts()[0].loser
    view = _source(net, "n1")()
    assert [(n.id, n.vni, n.mtu, n.subnets) for n in view.networks] == [(web, t1.networks()[0].vni, 1400,
                                                                           ("10.1.0.0/24",))]
    specs = {e.id: e for e in view.endpoints}
    assert set(specs) == {x.id, y.id, z.id} - {loser}  # the loser is never programmed
    assert all(e.network_id == web for e in specs.values())
    for ep in (x, y, z):
        if ep.id in specs:
            spec = specs[ep.id]
            assert (spec.owner, spec.vtep, spec.ipv4, spec.mac) == (ep.owner, ep.vtep, ep.ipv4, ep.mac)
            assert spec.local == (ep.owner == "n1")
            assert spec.ifname_host == (_ifname(ep.id) if ep.owner == "n1" else None)
    assert view.owner_alive == {"n0": True, "n1": True, "n2": True, "n3": True}
    assert (view.local_vtep, view.underlay_mtu, view.vxlan_port, view.prefix) == ("10.0.0.3", 1500, 4789, "ov-")


def test_the_view_source_rebuilds_only_when_tables_or_members_moved() -> None:
    net = cluster(3)
    _web(net)
    net.call("n1", lambda t: t.create_endpoint(net.now, "web", name="a"))
    net.call("n2", lambda t: t.create_endpoint(net.now, "web", name="b"))
    net.wait(lambda: len(net.nodes["n1"].tables.endpoints()) == 2, timeout=60)
    source = _source(net, "n1")
    first = source()
    net.run_for(5)
    assert source() is first  # quiet: the same object, the reconciler skips compiling
    net.crash("n2")
    net.wait(lambda: not _up(net, "n1", "n2"), timeout=60)
    after = source()
    assert after is not first
    assert [e.owner for e in after.endpoints] == ["n1"] and after.owner_alive["n2"] is False
    tables = net.nodes["n1"].tables
    members = {m.name: _up(net, "n1", m.name) for m in net.nodes["n1"].swim.members()}
    assert build_view(tables, members, "10.0.0.3", 1500, 4789, "ov-", _ifname) == after


def _listen(t: Tables, heard: list[tuple[float, int, int]]) -> None:
    t.subscribe(lambda now: heard.append((now, t.version, t.ipsec.version)))


def test_subscribers_hear_each_change_once_with_the_entry_point_s_now() -> None:
    net = cluster(2)
    heard: dict[str, list[tuple[float, int, int]]] = {name: [] for name in net.nodes}
    for name, node in net.nodes.items():
        _listen(node.tables, heard[name])
    net.run_for(30)
    assert heard == {"n0": [], "n1": []}  # a quiet cluster: nothing to tell
    t0, t1 = net.nodes["n0"].tables, net.nodes["n1"].tables
    net.call("n0", lambda t: t.create_network(net.now, "web", ["10.1.0.0/24"]))
    assert heard["n0"] == [(net.now, t0.version, 0)]  # an API call, told at once
    net.wait(lambda: bool(t1.networks()), timeout=60)
    assert heard["n1"][-1][1:] == (t1.version, 0)  # gossip brought it
    net.call("n1", lambda t: (None, t.publish_ipsec_keys(net.now, [(1, bytes(32))])))
    assert heard["n1"][-1] == (net.now, t1.version, t1.ipsec.version)  # the key rows count too
    net.wait(lambda: t0.ipsec.get("n1") is not None, timeout=60)
    net.run_for(30)
    for name, node in net.nodes.items():
        told = [v for _, *v in heard[name]]
        assert all(a != b for a, b in itertools.pairwise(told))  # only when something moved
        assert told[-1] == [node.tables.version, node.tables.ipsec.version]  # nothing moved untold
        times = [now for now, *_ in heard[name]]
        assert times == sorted(times)
