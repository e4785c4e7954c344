"""A freshly written local endpoint row goes at once to the network's peers
(``TablesConfig.fresh_peers``): the decision (``sync.fresh_targets``), the sends it makes
(``NetSync.push_fresh``), what it changes end to end on virtual time, and the stage
marks the propagation benchmark reads (``Tables.trace``).
"""

from __future__ import annotations

import random

import pytest

from gossip.config import Config
from gossip.effects import Effect
from gossip.tables.config import TablesStats
from gossip.tables.replica import TablesConfig
from gossip.tables.sync import NetSync, fresh_targets
from tests.stateful.tablesnet import Net, cluster

NET = "cd" * 32

# ------------------------------------------------------------------ decision


def test_a_small_network_gets_the_row_on_every_peer() -> None:
    peers = [f"p{i}" for i in range(9)]
    assert fresh_targets(peers, 32, random.Random(1)) == peers
    assert fresh_targets(peers, 9, random.Random(1)) == peers  # exactly the bound: all


def test_a_large_network_gets_a_bounded_random_fan_out() -> None:
    peers = [f"p{i}" for i in range(100)]
    picks = [fresh_targets(peers, 32, random.Random(seed)) for seed in range(5)]
    for chosen in picks:
        assert len(chosen) == len(set(chosen)) == 32
        assert set(chosen) <= set(peers)
    assert len({tuple(sorted(c)) for c in picks}) > 1  # random, not always the same 32
    assert fresh_targets(peers, 32, random.Random(3)) == fresh_targets(peers, 32, random.Random(3))


def test_no_peers_or_a_zero_bound_sends_nothing() -> None:
    assert fresh_targets([], 32, random.Random(1)) == []
    assert fresh_targets(["a", "b"], 0, random.Random(1)) == []


def test_the_bound_is_validated() -> None:
    with pytest.raises(ValueError, match="fresh_peers"):
        TablesConfig(fresh_peers=-1)


# --------------------------------------------------------------------- sends


class _FakeSwim:
    def __init__(self) -> None:
        self.config = Config()
        self.sent: list[tuple[str, bytes]] = []

    def send_user(self, peer: str, payload: bytes) -> list[Effect]:
        self.sent.append((peer, payload))
        return []

    def stream_user(self, peer: str, payload: bytes) -> list[Effect]:
        return []


def _netsync(n_peers: int, fresh: int = 32) -> tuple[NetSync, _FakeSwim]:
    peers = [f"p{i:02d}" for i in range(n_peers)]
    cfg = TablesConfig(gossip_interval=0.2, bulk_sync_interval=1000.0, fresh_peers=fresh)
    ns = NetSync("me", random.Random(3), cfg, TablesStats(), lambda net: peers, lambda net, now: [])
    swim = _FakeSwim()
    ns.swim = swim  # type: ignore[assignment]
    ns.join(0.0, NET, [])
    ns.joined[NET].synced = True
    ns.tick(0.0, [])  # staggers the bulk-sync timer
    swim.sent.clear()
    return ns, swim


def test_push_sends_one_message_per_chosen_peer_and_leaves_the_rounds_their_work() -> None:
    ns, swim = _netsync(9)
    ns.queue(1.0, NET, "e\0a", b"x" * 100)  # what Tables._write does first
    chosen = ns.push_fresh(NET, b"x" * 100, [])
    assert chosen == [f"p{i:02d}" for i in range(9)]
    assert [p for p, _ in swim.sent] == chosen
    assert all(payload == swim.sent[0][1] for _, payload in swim.sent)
    assert ns.stats.fresh_sent == 9 and ns.stats.gossip_sent == 0
    # The queued copy still goes out with the regular rounds (losses are repaired there).
    assert ns.joined[NET].queue
    swim.sent.clear()
    for step in range(1000, 1100):  # the next 100 ms, in 1 ms steps
        if ns.next_deadline() <= step / 1000:
            ns.tick(step / 1000, [])
    assert swim.sent and ns.stats.gossip_sent > 0


def test_push_to_a_large_network_is_bounded() -> None:
    ns, swim = _netsync(80, fresh=16)
    chosen = ns.push_fresh(NET, b"y" * 50, [])
    assert len(chosen) == len(set(chosen)) == 16
    assert len(swim.sent) == 16


def test_push_skips_networks_not_joined_and_oversized_rows() -> None:
    ns, swim = _netsync(5)
    assert ns.push_fresh("ef" * 32, b"x", []) == []
    assert ns.push_fresh(NET, b"x" * 5000, []) == []
    assert swim.sent == []


# ----------------------------------------------------------- end to end


def _network_of(n: int, fresh: int) -> tuple[Net, str]:
    """``n`` nodes, each with one endpoint on one network (so each takes part), settled."""
    net = cluster(n, seed=5, tables_config=TablesConfig(fresh_peers=fresh))
    web = net.call("n0", lambda t: t.create_network(net.now, "web", ["10.3.0.0/16"])).id
    net.wait(lambda: all(node.tables.networks() for node in net.nodes.values()), timeout=60)
    for name in net.nodes:
        net.call(name, lambda t: t.create_endpoint(net.now, web))
    net.wait(lambda: all(len(node.tables.endpoints(web)) == n for node in net.nodes.values()), timeout=60)
    net.run_for(5.0)  # queues drained: the next write starts from idle
    return net, web


def _holders(net: Net, web: str, ep_id: str) -> list[str]:
    return sorted(name for name, node in net.nodes.items()
                  if any(e.id == ep_id for e in node.tables.endpoints(web)))


@pytest.mark.parametrize("fresh", [32, 0])
def test_every_peer_holds_a_new_row_one_transit_after_the_write(fresh: int) -> None:
    net, web = _network_of(8, fresh)
    ep = net.call("n3", lambda t: t.create_endpoint(net.now, web))
    net.run_for(net.latency * 1.5)  # one datagram's transit, no gossip round yet
    held = _holders(net, web, ep.id)
    if fresh:
        assert held == sorted(net.nodes)
    else:  # the old way: 3 random peers at once, the rest after relays
        assert len(held) == 4 and "n3" in held
    net.run_for(2.0)
    assert _holders(net, web, ep.id) == sorted(net.nodes)


def test_a_removal_is_pushed_too() -> None:
    net, web = _network_of(6, 32)
    ep = net.call("n2", lambda t: t.create_endpoint(net.now, web))
    net.run_for(1.0)
    net.call("n2", lambda t: t.remove_endpoint(net.now, ep.id))
    net.run_for(net.latency * 1.5)
    assert _holders(net, web, ep.id) == []


def test_trace_marks_the_stages_on_the_writer_and_on_a_receiver() -> None:
    net, web = _network_of(4, 32)
    marks: dict[str, list[tuple[str, str, str]]] = {name: [] for name in net.nodes}
    for name, node in net.nodes.items():
        node.tables.trace = lambda stage, ident, detail, name=name: marks[name].append((stage, ident, detail))
    ep = net.call("n1", lambda t: t.create_endpoint(net.now, web))
    net.run_for(net.latency * 1.5)
    assert [m[0] for m in marks["n1"]] == ["call", "write", "push"]
    assert marks["n1"][0] == ("call", "", web)
    assert marks["n1"][1] == ("write", ep.id, web)
    assert marks["n1"][2] == ("push", ep.id, "n0,n2,n3")
    for other in ("n0", "n2", "n3"):
        assert marks[other] == [("merge", ep.id, "n1")]
