"""Network-scoped gossip mechanics: how often a row is sent, when a round goes out,
the cached peer lists, cheap duplicate detection, and the converged-start seeding.

The figures these mechanics produce at scale are in docs/simulation.md ("Endpoint
records per network"); here each rule is checked on its own.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from gossip.config import Config
from gossip.effects import Effect
from gossip.members import Status
from gossip.tables import rows
from gossip.tables.config import TablesStats
from gossip.tables.replica import Tables, TablesConfig
from gossip.tables.rows import ClaimRow, EndpointRow, MemberRow, NetworkRow, newer
from gossip.tables.sync import NetSync, transmit_limit
from tests.stateful.tablesnet import Net, cluster

NET = "ab" * 32

# ------------------------------------------------------------ transmit count


def test_transmit_limit_follows_the_miss_target() -> None:
    # 50 members, 3 peers a round: memberlist's rule (4 × ⌈log10 51⌉ = 8) leaves a row
    # missing someone ≈ 49·e^-8 ≈ 1.6 % of the time; the floor for 0.1 % is 11 sends.
    assert transmit_limit(8, 50, 3, 1e-3) == 11
    assert transmit_limit(8, 50, 3, 1e-4) == 13
    assert transmit_limit(1, 1000, 3, 1e-3) == 14  # 16 with memberlist's base for 1,000
    assert transmit_limit(20, 50, 3, 1e-3) == 20  # never below the base
    # Every round reaches every peer: nothing random to guard against.
    for n in (1, 2, 3, 4):
        assert transmit_limit(4, n, 3, 1e-3) == 4
    assert transmit_limit(4, 50, 0, 1e-3) == 4


def _missed(rng: random.Random, n: int, fanout: int, sends: int) -> bool:
    """One row's epidemic: every holder sends it ``sends`` times, ``fanout`` distinct
    random peers a round; does some node never get it?"""
    held = [False] * n
    held[0] = True
    todo = [0]
    while todo:
        node = todo.pop()
        peers = [p for p in range(n) if p != node]
        left = sends
        while left > 0:
            for p in rng.sample(peers, min(fanout, left)):
                if not held[p]:
                    held[p] = True
                    todo.append(p)
            left -= fanout
    return not all(held)


@pytest.mark.parametrize("miss", [0.3, 0.05])
def test_the_derived_count_meets_its_miss_target_in_an_epidemic(miss: float) -> None:
    rng = random.Random(7)
    n, fanout, trials = 50, 3, 1500
    sends = transmit_limit(1, n, fanout, miss)
    rate = sum(_missed(rng, n, fanout, sends) for _ in range(trials)) / trials
    # The union bound overestimates a little; the rate is within the target and not
    # far below it (a count one lower would miss more often than the target).
    assert 0.25 * miss < rate <= miss * 1.2, (sends, rate)
    fewer = sum(_missed(rng, n, fanout, sends - 2) for _ in range(trials)) / trials
    assert fewer > rate


# ---------------------------------------------------------------- rounds


class _FakeSwim:
    def __init__(self) -> None:
        self.config = Config()
        self.sent: list[tuple[str, bytes]] = []

    def send_user(self, peer: str, payload: bytes) -> list[Effect]:
        self.sent.append((peer, payload))
        return []

    def stream_user(self, peer: str, payload: bytes) -> list[Effect]:
        return []


def _netsync(coalesce: float = 0.02) -> tuple[NetSync, _FakeSwim, list[float]]:
    peers = [f"p{i}" for i in range(40)]
    cfg = TablesConfig(gossip_interval=0.2, gossip_coalesce=coalesce, bulk_sync_interval=1000.0)
    ns = NetSync("me", random.Random(3), cfg, TablesStats(), lambda net: peers, lambda net, now: [])
    swim = _FakeSwim()
    ns.swim = swim  # type: ignore[assignment]
    ns.join(0.0, NET, [])
    ns.joined[NET].synced = True
    ns.tick(0.0, [])  # staggers the bulk-sync timer
    return ns, swim, []


def _run(ns: NetSync, swim: _FakeSwim, rounds: list[float], start: float, stop: float) -> None:
    """Drive the timers in 1 ms steps, noting when messages went out."""
    for step in range(round(start * 1000), round(stop * 1000)):
        now = step / 1000
        if ns.next_deadline() <= now:
            before = len(swim.sent)
            ns.tick(now, [])
            if len(swim.sent) > before:
                rounds.append(now)


def test_a_row_on_an_idle_queue_goes_out_after_the_coalescing_delay() -> None:
    ns, swim, rounds = _netsync()
    ns.queue(5.0, NET, "e\0a", b"x" * 100)
    _run(ns, swim, rounds, 5.0, 8.0)
    # 40 peers, 3 a round: 4 × ⌈log10 41⌉ = 8 → floor ln(40/0.001)-ish = 11 sends, 4 rounds.
    assert rounds == pytest.approx([5.02, 5.22, 5.42, 5.62])
    assert len(swim.sent) == 11


def test_rounds_stay_an_interval_apart_under_load() -> None:
    ns, swim, rounds = _netsync()
    ns.queue(5.0, NET, "e\0a", b"x" * 100)
    _run(ns, swim, rounds, 5.0, 5.7)  # last round at 5.62, queue idle again
    ns.queue(5.7, NET, "e\0b", b"y" * 100)  # soon after: waits for the interval
    for i in range(20):  # and a steady stream keeps the fixed pace
        ns.queue(5.75 + 0.1 * i, NET, f"e\0c{i}", b"z" * 100)
        _run(ns, swim, rounds, 5.7 + 0.1 * i, 5.8 + 0.1 * i)
    _run(ns, swim, rounds, 7.7, 10.0)
    assert rounds[4] == pytest.approx(5.82)
    gaps = [b - a for a, b in itertools.pairwise(rounds)]
    assert min(gaps) >= 0.2 - 1e-9
    ns.queue(20.0, NET, "e\0d", b"w" * 100)  # idle for long: soon again
    _run(ns, swim, rounds, 20.0, 20.1)
    assert rounds[-1] == pytest.approx(20.02)


def test_without_coalescing_delay_the_first_round_is_immediate() -> None:
    ns, swim, rounds = _netsync(coalesce=0.0)
    ns.queue(5.0, NET, "e\0a", b"x" * 100)
    _run(ns, swim, rounds, 5.0, 5.1)
    assert rounds == [5.0]


# ------------------------------------------------------------- peer cache


def _fresh_peers(t: Tables, net: str) -> list[tuple[str, str]]:
    """What the peer list is by definition, computed from scratch."""
    out = []
    for node, m in t.store.members.get(net, {}).items():
        member = t.swim.member(node) if t.swim is not None else None
        up = member is not None and member.status in (Status.ALIVE, Status.SUSPECT)
        if not m.deleted and node != t.node and up:
            out.append((node, m.vtep))
    return sorted(out)


def _cache_agrees(net: Net, network: str) -> bool:
    for node in net.up():
        t = net.nodes[node].tables
        if network in t.sync.joined:
            assert t.network_peers(network) == _fresh_peers(t, network), node
    return True


def test_the_peer_cache_follows_member_rows_and_liveness() -> None:
    net = cluster(4, tables_config=TablesConfig(owner_reap=60.0))
    web = net.call("n0", lambda t: t.create_network(net.now, "web", ["10.1.0.0/24"])).id
    net.wait(lambda: all(n.tables.networks() for n in net.nodes.values()), timeout=60)
    t1 = net.nodes["n1"].tables

    def peers() -> list[str]:
        return [p for p, _ in t1.network_peers(web)]

    net.call("n1", lambda t: t.create_endpoint(net.now, web, name="a"))
    assert peers() == []  # cached empty ...
    for node in ("n2", "n3"):
        net.call(node, lambda t: t.create_endpoint(net.now, web))
    # ... and refreshed by the member rows (joins) that arrive.
    net.wait(lambda: _cache_agrees(net, web) and peers() == ["n2", "n3"], timeout=60)
    assert t1.visibility.peers(web) is t1.visibility.peers(web)  # served from the cache
    net.call("n3", lambda t: t.remove_endpoint(net.now, t.local_endpoints()[0].id))  # a leave
    net.wait(lambda: _cache_agrees(net, web) and peers() == ["n2"], timeout=60)
    net.crash("n2")  # down: out at once when declared dead
    net.wait(lambda: _cache_agrees(net, web) and peers() == [], timeout=60)
    net.restart("n2", ["n0", "n1"])  # back up, same member row
    net.wait(lambda: _cache_agrees(net, web) and peers() == ["n2"], timeout=60)
    net.run_for(70)  # reaping (n3's leave tombstone stays: it has a TTL of its own)
    assert _cache_agrees(net, web) and peers() == ["n2"]


# ------------------------------------------------------------ newer, cheaply


def _endpoint(ipv4: str = "10.1.0.5") -> rows.Endpoint:
    return rows.Endpoint("cd" * 32, "a", NET, ipv4, None, "02:42:0a:01:00:05", "n1", "192.0.2.1", 4)


def _network(name: str = "web") -> rows.Network:
    return rows.Network(NET, name, ("10.1.0.0/24",), 5000, False, None, 1.0, "n1", 3)


def test_a_duplicate_is_recognised_without_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    pairs: list[tuple[Any, Any]] = [
        (EndpointRow(NET, "n1", "cd" * 32, 5, False, _endpoint()),
         EndpointRow(NET, "n1", "cd" * 32, 5, False, _endpoint(), since=9.0)),
        (NetworkRow(NET, 5, "n1", False, _network()), NetworkRow(NET, 5, "n1", False, _network())),
        (MemberRow(NET, "n1", 5, False, "192.0.2.1"), MemberRow(NET, "n1", 5, False, "192.0.2.1")),
        (ClaimRow(NET, 4, 2, "n1", 5, False), ClaimRow(NET, 4, 2, "n1", 5, False)),
        (EndpointRow(NET, "n1", "cd" * 32, 5, True, None, 10.0), EndpointRow(NET, "n1", "cd" * 32, 5, True, None)),
    ]
    with monkeypatch.context() as m:
        def refuse(row: object) -> bytes:
            raise AssertionError("encoded a duplicate")

        m.setattr(rows, "_content", refuse)
        for a, b in pairs:
            assert not newer(a, b) and not newer(b, a)
    # True ties of different content are still broken by the encoded content, both ways.
    x = EndpointRow(NET, "n1", "cd" * 32, 5, False, _endpoint("10.1.0.5"))
    y = EndpointRow(NET, "n1", "cd" * 32, 5, False, _endpoint("10.1.0.6"))
    assert newer(x, y) != newer(y, x)
    assert newer(y, x) == (rows._content(y) > rows._content(x))
    u = MemberRow(NET, "n1", 5, False, "192.0.2.1")
    v = MemberRow(NET, "n1", 5, False, "192.0.2.2")
    assert newer(v, u) and not newer(u, v)


# ------------------------------------------------------------- bootstrap


def test_bootstrap_rows_installs_a_converged_start_without_traffic() -> None:
    t0 = Tables(node="n0", vtep="192.0.2.1", rng=random.Random(1))
    t1 = Tables(node="n1", vtep="192.0.2.2", rng=random.Random(2))
    network, _ = t0.create_network(0.0, "web", ["10.1.0.0/24"])
    t0.create_endpoint(0.0, "web")
    cluster = list(t0.store.cluster_rows())
    mine = MemberRow(network.id, "n1", 999, True, "", 50.0)  # "n1" is t1: its own truth
    other = EndpointRow(network.id, "n0", "ef" * 32, 7, False, None)  # a network t1 is not in
    version = t1.version
    t1.bootstrap_rows([*cluster, mine, other])
    assert t1.networks() == [network] and t1.version > version
    assert t1.store.networks[network.id] is cluster[0]  # held as given, shared
    assert t1.store.member(network.id, "n0") is not None and t1.store.member(network.id, "n1") is None
    assert t1.store.endpoints == {} and t1.clock == 999
    assert len(t1._bcast) == 0 and not any(j.queue for j in t1.sync.joined.values())
    # Idempotent, and bootstrapping what a replica holds changes nothing.
    t1.bootstrap_rows(cluster)
    assert t1.networks() == [network] and len(list(t1.store.cluster_rows())) == len(cluster)
