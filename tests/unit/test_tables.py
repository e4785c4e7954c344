"""Merge rules of the replicated tables, driven through real Swim + Tables nodes.

Covers: LWW and tombstones (no resurrection), reaping, rows of dead owners hidden at
once and dropped after ``owner_reap``, a restarted owner reasserting (and retracting)
its rows, network conflicts, in-use networks surviving a concurrent delete,
duplicate addresses after a partition, and the change counter.
"""

from __future__ import annotations

from gossip.effects import Log, Send
from gossip.tables import framing
from gossip.tables.replica import Tables, TablesConfig
from gossip.tables.rows import EndpointRow, encode_row
from tests.stateful.tablesnet import Net, cluster


def _names(t: Tables, network: str | None = None) -> list[tuple[str, str]]:
    return [(e.owner, e.name) for e in t.endpoints(network)]


def _web(net: Net, subnet: str = "10.1.0.0/24") -> str:
    """Network "web", known everywhere (cluster-wide spread is probabilistic: wait)."""
    network = net.call("n0", lambda t: t.create_network(net.now, "web", [subnet]))
    net.wait(lambda: all(n.tables.networks() for n in net.nodes.values()), timeout=60)
    return network.id


def _peers_known(net: Net, *nodes: str) -> None:
    def known() -> bool:
        return all(
            sorted(p for p, _ in net.nodes[n].tables.network_peers("web")) == sorted(set(nodes) - {n})
            for n in nodes
        )

    net.wait(known, timeout=60)


def _logs(net: Net, level: str) -> list[str]:
    return [e.message for _, _, e in net.logs if isinstance(e, Log) and e.level == level]


def test_network_created_on_one_node_appears_everywhere_with_the_same_id_and_vni() -> None:
    net = cluster(4)
    created = net.call("n2", lambda t: t.create_network(net.now, "web", ["10.1.0.0/24"], mtu=1400))
    net.run_for(1)
    for node in net.nodes.values():
        assert node.tables.networks() == [created]
    assert 4096 <= created.vni < 1 << 24 and len(created.id) == 64 and created.mtu == 1400


def test_endpoint_rows_reach_network_peers_and_deletes_stick() -> None:
    net = cluster(3)
    _web(net)
    a = net.call("n1", lambda t: t.create_endpoint(net.now, "web", name="a"))
    net.call("n2", lambda t: t.create_endpoint(net.now, "web", name="b"))
    net.run_for(0.5)
    for n in ("n1", "n2"):
        assert _names(net.nodes[n].tables) == [("n1", "a"), ("n2", "b")]
    net.call("n1", lambda t: t.remove_endpoint(net.now, "a"))
    net.run_for(0.5)
    assert _names(net.nodes["n2"].tables) == [("n2", "b")]
    # A stale copy of the live row arriving late does not resurrect it.
    stale = EndpointRow(a.network, "n1", a.id, a.created, False, a)
    payload = framing.encode_net_gossip(a.network, [encode_row(stale, net.now)])
    net.perform("n2", net.nodes["n2"].tables.on_user_message(net.now, payload))
    assert _names(net.nodes["n2"].tables) == [("n2", "b")]


def test_nodes_outside_a_network_hold_none_of_its_endpoint_rows() -> None:
    net = cluster(4)
    _web(net)
    net.call("n1", lambda t: t.create_endpoint(net.now, "web"))
    net.call("n2", lambda t: t.create_endpoint(net.now, "web"))
    net.run_for(40)
    for outsider in ("n0", "n3"):
        t = net.nodes[outsider].tables
        assert t.endpoints() == [] and t.stored_endpoints(t.find_network("web").id) == []
        assert t.stats.gossip_sent == 0 and t.stats.bulk_sent == 0
        # ... but they know who takes part (cluster-wide member rows).
        assert [n for n, _ in t.network_peers("web")] == ["n1", "n2"]


def test_endpoint_gossip_is_sent_only_to_network_peers() -> None:
    net = cluster(5)
    _web(net)
    net.call("n1", lambda t: t.create_endpoint(net.now, "web"))
    net.call("n2", lambda t: t.create_endpoint(net.now, "web"))
    _peers_known(net, "n1", "n2")
    t = net.nodes["n1"].tables
    _, effects = t.create_endpoint(net.now, "web")
    peers = {net.nodes["n2"].addr}
    sends = [e for e in effects if isinstance(e, Send)]
    assert sends and all(e.to in peers for e in sends)


def test_a_burst_of_endpoints_travels_in_packets_that_fit_the_udp_budget() -> None:
    net = cluster(3)
    _web(net, "10.1.0.0/16")
    net.call("n2", lambda t: t.create_endpoint(net.now, "web"))
    net.call("n1", lambda t: t.create_endpoint(net.now, "web"))
    _peers_known(net, "n1", "n2")
    sizes: list[int] = []
    for i in range(60):
        _, effects = net.nodes["n1"].tables.create_endpoint(net.now, "web", name=f"a-long-endpoint-name-{i:03d}")
        sizes += [len(e.data) for e in effects if isinstance(e, Send)]
        net.perform("n1", effects)
    for _ in range(40):
        net.run_for(0.05)
    assert max(sizes) <= 1400
    assert len(net.nodes["n2"].tables.endpoints()) == 62


def test_a_node_joining_a_network_gets_the_full_state_by_bulk_sync() -> None:
    net = cluster(3, tables_config=TablesConfig(gossip_nodes=0))  # no UDP gossip at all
    _web(net, "10.1.0.0/16")
    for i in range(150):
        _, effects = net.nodes["n1"].tables.create_endpoint(net.now, "web", name=f"e{i}")
        net.perform("n1", effects)
    net.run_for(1)
    net.call("n2", lambda t: t.create_endpoint(net.now, "web"))
    net.run_for(1)
    assert len(net.nodes["n2"].tables.endpoints()) == 151
    assert net.nodes["n2"].tables.stats.bulk_sent >= 1


def test_rows_of_a_dead_owner_are_hidden_at_once_then_dropped_and_return_with_it() -> None:
    net = cluster(3, tables_config=TablesConfig(owner_reap=60.0))
    _web(net)
    net.call("n1", lambda t: t.create_endpoint(net.now, "web", name="a"))
    net.call("n2", lambda t: t.create_endpoint(net.now, "web", name="b"))
    net.run_for(1)
    t1 = net.nodes["n1"].tables
    net.crash("n2")
    version = t1.version
    net.wait(lambda: net.nodes["n1"].swim.member("n2").status.label == "dead", timeout=60)  # type: ignore[union-attr]
    assert t1.version > version
    assert _names(t1) == [("n1", "a")]  # hidden the moment n2 is declared dead
    assert len(t1.stored_endpoints(t1.find_network("web").id)) == 2
    assert t1.network_peers("web") == []
    net.run_for(70)
    assert len(t1.stored_endpoints(t1.find_network("web").id)) == 1  # dropped after owner_reap
    net.restart("n2", ["n0", "n1"])
    net.run_for(10)
    assert _names(t1) == [("n1", "a"), ("n2", "b")]


def test_a_restarted_owner_reasserts_its_rows_with_fresh_lamport_times() -> None:
    net = cluster(3)
    _web(net)
    net.call("n1", lambda t: t.create_endpoint(net.now, "web", name="a"))
    for _ in range(5):  # push n2's clock (and its rows' times) well ahead
        net.call("n2", lambda t: t.create_endpoint(net.now, "web", name="tmp"))
        net.call("n2", lambda t: t.remove_endpoint(net.now, "tmp"))
    b = net.call("n2", lambda t: t.create_endpoint(net.now, "web", name="b"))
    net.run_for(1)
    old_time = b.created
    net.crash("n2")
    net.run_for(2)
    # The restarted process has lost its clock (persisted rows only).
    node = net.restart("n2", ["n0", "n1"], use_clock=False)
    net.run_for(10)
    t1 = net.nodes["n1"].tables
    assert _names(t1) == [("n1", "a"), ("n2", "b")]
    row = t1.store.endpoints[b.network][("n2", b.id)]
    assert row.lamport > old_time and node.tables.clock >= row.lamport


def test_a_restarted_owner_retracts_rows_it_no_longer_has() -> None:
    """Endpoints removed while the agent was down (or whose delete was lost)."""
    net = cluster(3)
    _web(net)
    net.call("n1", lambda t: t.create_endpoint(net.now, "web", name="a"))
    net.call("n2", lambda t: t.create_endpoint(net.now, "web", name="b"))
    net.call("n2", lambda t: t.create_endpoint(net.now, "web", name="c"))
    net.run_for(1)
    net.crash("n2")
    # While down, "c" disappeared from n2's persisted state.
    eps, nets, clock = net.nodes["n2"].persisted
    net.nodes["n2"].persisted = ([e for e in eps if e.name != "c"], nets, clock)
    net.restart("n2", ["n0", "n1"])
    net.run_for(10)
    assert _names(net.nodes["n1"].tables) == [("n1", "a"), ("n2", "b")]
    # And with none left, n2 leaves the network even though it never re-joined it.
    net.crash("n2")
    net.nodes["n2"].persisted = ([], [], 0)
    net.restart("n2", ["n0", "n1"])
    net.run_for(10)
    assert _names(net.nodes["n1"].tables) == [("n1", "a")]
    assert net.nodes["n1"].tables.network_peers("web") == []
    assert net.nodes["n2"].tables.stats.reasserts > 0


def test_tombstones_are_reaped_after_their_ttl() -> None:
    net = cluster(2, tables_config=TablesConfig(tombstone_ttl=20.0))
    net_id = _web(net)
    net.call("n0", lambda t: t.create_endpoint(net.now, "web", name="keep"))
    net.call("n0", lambda t: t.create_endpoint(net.now, "web", name="gone"))
    net.call("n0", lambda t: t.remove_endpoint(net.now, "gone"))
    t = net.nodes["n0"].tables
    assert len(t.store.endpoints[net_id]) == 2
    net.run_for(30)
    assert [r.value.name for r in t.store.endpoints[net_id].values() if r.value] == ["keep"]
    assert len(t.store.endpoints[net_id]) == 1


def test_concurrent_conflicting_creates_resolve_the_same_way_everywhere() -> None:
    net = cluster(4)
    net.partition([["n0", "n1"], ["n2", "n3"]])
    net.call("n0", lambda t: t.create_network(net.now, "web", ["10.1.0.0/24"]))
    net.call("n3", lambda t: t.create_network(net.now, "web", ["10.2.0.0/24"]))
    net.call("n3", lambda t: t.create_network(net.now, "db", ["10.1.0.0/16"], vni=77))
    net.run_for(5)
    net.heal()
    net.wait(lambda: all(len(n.tables.conflicts()) == 2 for n in net.nodes.values()), timeout=120)
    views = [(n.tables.networks(), n.tables.conflicts()) for n in net.nodes.values()]
    assert all(v == views[0] for v in views)
    kinds = sorted(c.kind for c in views[0][1])
    assert kinds == ["network-name", "network-subnet"]
    assert [n.name for n in views[0][0]] == ["db", "web"] or [n.name for n in views[0][0]] == ["web"]
    assert any("claimed twice" in m for m in _logs(net, "warning"))


def test_remove_network_refuses_while_endpoints_exist_anywhere() -> None:
    net = cluster(3)
    _web(net)
    net.call("n2", lambda t: t.create_endpoint(net.now, "web"))
    net.run_for(1)
    t = net.nodes["n0"].tables
    before = t.version
    try:
        t.remove_network(net.now, "web")
    except ValueError as exc:
        assert str(exc) == "network 'web' is in use by endpoints on n2; remove them first"
    else:
        raise AssertionError("remove_network did not refuse")
    assert t.version == before and [n.name for n in t.networks()] == ["web"]


def test_a_network_deleted_while_in_use_elsewhere_is_republished() -> None:
    net = cluster(3)
    _web(net)
    net.partition([["n0"], ["n1", "n2"]])
    net.call("n1", lambda t: t.create_endpoint(net.now, "web"))
    net.call("n0", lambda t: t.remove_network(net.now, "web"))  # n0 cannot see it
    assert net.nodes["n0"].tables.networks() == []
    net.heal()
    net.wait(lambda: all(n.tables.networks() for n in net.nodes.values()), timeout=120)
    assert any("re-published it" in m for m in _logs(net, "warning"))


def test_duplicate_addresses_after_a_partition_are_flagged_the_same_everywhere() -> None:
    net = cluster(4)
    _web(net, "10.1.0.0/24")
    net.partition([["n0", "n1"], ["n2", "n3"]])
    net.call("n1", lambda t: t.create_endpoint(net.now, "web", ipv4="10.1.0.50", name="x"))
    net.call("n2", lambda t: t.create_endpoint(net.now, "web", ipv4="10.1.0.50", name="y"))
    net.call("n3", lambda t: t.create_endpoint(net.now, "web", name="z"))
    net.run_for(2)
    net.heal()

    def flagged() -> list[list[tuple[str, bool]]]:
        return [[(e.name, e.conflict) for e in net.nodes[n].tables.endpoints()] for n in ("n1", "n2", "n3")]

    net.wait(lambda: all(len(v) == 3 and any(c for _, c in v) for v in flagged()), timeout=120)
    views = flagged()
    assert views[0] == views[1] == views[2]
    conflicts = net.nodes["n3"].tables.conflicts()
    assert [(c.kind, c.value) for c in conflicts] == [("ipv4", "10.1.0.50")]
    loser = next(e for e in net.nodes["n1"].tables.endpoints() if e.conflict)
    assert loser.id == conflicts[0].loser
    assert any("duplicate ipv4 10.1.0.50" in m for m in _logs(net, "warning"))
    # The operator removes the loser: resolved, and logged as such.
    net.call(loser.owner, lambda t: t.remove_endpoint(net.now, loser.id))
    net.run_for(2)
    assert all(not n.tables.conflicts() for n in net.nodes.values())
    assert any("resolved: duplicate ipv4" in m for m in _logs(net, "info"))


def test_version_counts_visible_changes_only() -> None:
    net = cluster(2)
    t = net.nodes["n1"].tables
    v0 = t.version
    net.run_for(30)
    assert t.version == v0  # a quiet cluster changes nothing
    _web(net)
    v1 = t.version
    assert v1 > v0
    net.call("n0", lambda t: t.create_endpoint(net.now, "web"))
    net.run_for(1)
    assert t.version == v1 + 1  # n0's member row; n1 is not in the network


def test_without_scoping_every_node_holds_every_network_s_endpoints() -> None:
    """The simulator's baseline: whole-cluster endpoint gossip."""
    net = cluster(4, tables_config=TablesConfig(scoped=False))
    _web(net)
    net.call("n1", lambda t: t.create_endpoint(net.now, "web", name="a"))
    net.wait(lambda: all(_names(n.tables) == [("n1", "a")] for n in net.nodes.values()), timeout=60)
    assert [p for p, _ in net.nodes["n0"].tables.network_peers("web")] == ["n1", "n2", "n3"]
    net.call("n1", lambda t: t.remove_endpoint(net.now, "a"))
    net.wait(lambda: all(n.tables.endpoints() == [] for n in net.nodes.values()), timeout=60)
    for n in net.nodes.values():
        n.tables.check_invariants()


def test_a_restarted_node_deletes_a_restored_network_only_once_the_cluster_confirmed_it() -> None:
    """Its re-published definition may be older than the cluster's: a delete written
    right away could lose to the cluster's version and the network would come back."""
    net = cluster(3)
    _web(net)
    net.call("n1", lambda t: t.create_endpoint(net.now, "web", name="a"))
    net.run_for(2)
    net.crash("n1")
    net.restart("n1", ["n0", "n2"], use_clock=False)
    t = net.nodes["n1"].tables
    net.call("n1", lambda t: t.remove_endpoint(net.now, "a"))
    try:
        t.remove_network(net.now, "web")
    except ValueError as exc:
        assert "not confirmed by the cluster yet" in str(exc)
    else:
        raise AssertionError("remove_network did not wait for confirmation")
    net.run_for(5)
    net.call("n1", lambda t: t.remove_network(net.now, "web"))
    net.wait(lambda: all(n.tables.networks() == [] for n in net.nodes.values()), timeout=60)
    net.run_for(30)
    assert all(n.tables.networks() == [] for n in net.nodes.values())
