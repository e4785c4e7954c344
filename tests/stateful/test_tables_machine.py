"""Stateful test of the replicated tables: random operations on random nodes under
message loss, duplication, reordering, partitions and restarts; after healing and
settling every node agrees (issue 4, "What it must show" 1).

Driven deterministically without sockets by ``tablesnet.Net``. Checked after settle:
- all live nodes hold the same networks and network conflicts;
- every live node taking part in a network sees exactly the endpoints the live
  nodes have locally (so no rows of dead owners), with the same conflict flags;
- no removed endpoint is visible anywhere (no resurrection); a removed network is
  back only if some node still has endpoints on it (in use wins);
- no duplicate addresses among programmed (non-conflicting) endpoints;
- each participant's network peers are exactly the other live participants.
Checked at every step: internal invariants, visible rows only of owners alive in
that node's view, failed API calls leave state untouched, and an address
allocated with full knowledge of the network never duplicates one in use.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gossip.config import Config
from gossip.tables.replica import Tables, TablesConfig
from gossip.tables.rows import TableError
from tests.stateful.tablesnet import Net, cluster

NODES = ["n0", "n1", "n2", "n3"]
NAMES = ["a", "b", "c"]
SUBNETS = [
    ["10.1.0.0/24"],
    ["10.2.0.0/28"],
    ["10.1.0.0/16"],
    ["10.3.0.0/24", "fd00:3::/64"],
    ["fd00:4::/120"],
]
SETTLE_LIMIT = 300.0

SWIM = Config.local().with_(push_pull_interval=5.0, rejoin_interval=10.0, reap_interval=1e6)
TABLES = TablesConfig(bulk_sync_interval=5.0, tombstone_ttl=1e6, owner_reap=30.0)


def _view(t: Tables, net: str) -> list[tuple[Any, ...]]:
    return sorted(
        (e.id, e.owner, e.vtep, e.ipv4, e.ipv6, e.mac, e.conflict)
        for e in t.endpoints()
        if e.network == net
    )


class TablesMachine(RuleBasedStateMachine):
    net: Net

    def __init__(self) -> None:
        super().__init__()
        self.removed_eps: dict[str, None] = {}
        self.removed_nets: dict[str, None] = {}
        """ids of networks removed while unused, not (yet) lost"""

    @initialize(seed=st.integers(0, 2**16), subnets=st.sampled_from(SUBNETS),
                holders=st.lists(st.sampled_from(NODES), max_size=4))
    def start(self, seed: int, subnets: list[str], holders: list[str]) -> None:
        """A cluster with network "a" and endpoints on some nodes (duplicates allowed)."""
        net = self.net = cluster(len(NODES), seed=seed, config=SWIM, tables_config=TABLES)
        net.call("n0", lambda t: t.create_network(net.now, "a", subnets))
        net.run_for(1.0)
        for node in holders:
            net.call(node, lambda t: t.create_endpoint(net.now, "a"))
        net.run_for(1.0)

    # ---------------------------------------------------------------- helpers

    def _t(self, node: str) -> Tables:
        return self.net.nodes[node].tables

    def _attempt(self, node: str, what: str, fn: Any) -> Any:
        """An API call; a TableError must leave the node's state as it was."""
        t = self._t(node)
        before = (t.version, t.clock, t.local_endpoints(), t.networks())
        try:
            value = self.net.call(node, fn)
            event(f"ok: {what}")
            return value
        except TableError as exc:
            event(f"refused: {what}")
            assert str(exc) and "\n" not in str(exc)
            assert (t.version, t.clock, t.local_endpoints(), t.networks()) == before
            return None

    # ------------------------------------------------------------------ rules

    @rule(node=st.sampled_from(NODES), name=st.sampled_from(NAMES),
          subnets=st.sampled_from(SUBNETS), vni=st.sampled_from([None, None, 5000, 5001]))
    def create_network(self, node: str, name: str, subnets: list[str], vni: int | None) -> None:
        if node in self.net.down:
            return
        now = self.net.now
        self._attempt(node, "create_network", lambda t: t.create_network(now, name, subnets, vni=vni))

    @rule(node=st.sampled_from(NODES), name=st.sampled_from(NAMES))
    def remove_network(self, node: str, name: str) -> None:
        if node in self.net.down:
            return
        now = self.net.now
        removed = self._attempt(node, "remove_network", lambda t: t.remove_network(now, name))
        if removed is not None and not self._in_use(removed.id):
            self.removed_nets[removed.id] = None

    def _in_use(self, net_id: str) -> bool:
        """Some node (up or down) has endpoints on it: a removal made now is concurrent
        with that use, and "in use beats delete" may bring the network back for good."""
        return any(e.network == net_id for n in self.net.nodes.values() for e in n.persisted[0])

    @rule(node=st.sampled_from(NODES), pick=st.integers(0, 3),
          offset=st.sampled_from([None, None, None, None, 1, 2, 5, 9, 200]))
    def create_endpoint(self, node: str, pick: int, offset: int | None) -> None:
        if node in self.net.down:
            return
        t = self._t(node)
        known = t.networks()
        if not known:
            return
        network = known[pick % len(known)]
        ipv4 = ipv6 = None
        if offset is not None:
            if network.subnet_v4:
                ipv4 = str(ipaddress.ip_network(network.subnet_v4).network_address + offset)
            else:
                assert network.subnet_v6
                ipv6 = str(ipaddress.ip_network(network.subnet_v6).network_address + offset)
        full = self._knows_everything(node, network.id)
        now = self.net.now
        ep = self._attempt(node, "create_endpoint", lambda t: t.create_endpoint(now, network.id, ipv4=ipv4, ipv6=ipv6))
        if ep is not None:
            self.removed_nets.pop(network.id, None)  # used concurrently with its removal
        if ep is None or offset is not None or not full:
            return
        # IPAM's promise: with every claim (and, if in the network, every row) known,
        # an allocated address is not in use anywhere.
        for other, n in self.net.nodes.items():
            if other == node:
                continue
            for e in n.tables.local_endpoints():
                if e.network == network.id:
                    assert ep.ipv4 is None or ep.ipv4 != e.ipv4, (ep, e)
                    assert ep.ipv6 is None or ep.ipv6 != e.ipv6, (ep, e)

    # Hypothesis picks rules uniformly: a second name doubles the weight.
    create_endpoint_again = create_endpoint

    def _knows_everything(self, node: str, net_id: str) -> bool:
        t = self._t(node)
        known = {(b.cidr, b.node) for b in t.claims(net_id)}
        member = any(e.network == net_id for e in t.local_endpoints())
        stored = {e.id for e in t.stored_endpoints(net_id)}
        for other, n in self.net.nodes.items():
            if other == node:
                continue
            try:
                theirs = {(b.cidr, b.node) for b in n.tables.claims(net_id) if b.node == other}
            except TableError:
                theirs = set()
            if not theirs <= known:
                return False
            ids = {e.id for e in n.tables.local_endpoints() if e.network == net_id}
            if member and not ids <= stored:
                return False
        return True

    @rule(node=st.sampled_from(NODES), index=st.integers(0, 5))
    def remove_endpoint(self, node: str, index: int) -> None:
        if node in self.net.down:
            return
        local = self._t(node).local_endpoints()
        if not local:
            return
        ep = local[index % len(local)]
        now = self.net.now
        removed = self.net.call(node, lambda t: t.remove_endpoint(now, ep.id))
        assert removed.id == ep.id
        self.removed_eps[ep.id] = None

    remove_endpoint_again = remove_endpoint

    @rule(seconds=st.floats(0.01, 3.0))
    def advance(self, seconds: float) -> None:
        self.net.run_for(seconds)

    @rule(loss=st.sampled_from([0.0, 0.1, 0.3]), dup=st.sampled_from([0.0, 0.1]),
          jitter=st.sampled_from([0.0, 0.05]))
    def faults(self, loss: float, dup: float, jitter: float) -> None:
        self.net.loss, self.net.dup, self.net.jitter = loss, dup, jitter

    @rule(split=st.lists(st.sampled_from([0, 1]), min_size=len(NODES), max_size=len(NODES)))
    def partition(self, split: list[int]) -> None:
        groups = [[n for n, side in zip(NODES, split, strict=True) if side == s] for s in (0, 1)]
        self.net.partition([g for g in groups if g])

    @rule()
    def heal(self) -> None:
        self.net.heal()

    def _lost_writes(self, node: str) -> None:
        # ``node`` goes down (crash or restart) and forgets its tables: a network
        # removal whose tombstone no other live node holds is lost, like any write
        # that never reached another live node. The remover may have spread it to a
        # node that restarts later, so every removal is checked, not only this node's
        # (only endpoints are persisted: a node that is down holds no tables).
        for net_id in list(self.removed_nets):
            rows = [n.tables.store.networks.get(net_id) for o, n in self.net.nodes.items()
                    if o != node and o not in self.net.down]
            if not any(r is not None and r.deleted for r in rows):
                del self.removed_nets[net_id]

    @rule(node=st.sampled_from(NODES))
    def crash(self, node: str) -> None:
        if node not in self.net.down and len(self.net.up()) > 2:
            self._lost_writes(node)
            self.net.crash(node)

    @rule(node=st.sampled_from(NODES), use_clock=st.booleans(), drop=st.sampled_from([0, 0, 1, 2]))
    def restart(self, node: str, use_clock: bool, drop: int) -> None:
        """Restart (after a crash, or now); ``drop`` endpoints vanished meanwhile
        (their containers went away while the agent was down)."""
        if node not in self.net.down:
            self._lost_writes(node)
        eps, nets, clock = self.net.nodes[node].persisted
        for gone in eps[:drop]:
            self.removed_eps[gone.id] = None
        self.net.nodes[node].persisted = (eps[drop:], nets, clock)
        # Like an agent configured with every other host as a seed.
        self.net.restart(node, [n for n in NODES if n != node], use_clock=use_clock)

    @rule()
    def settle(self) -> None:
        self._settle()

    def teardown(self) -> None:
        if hasattr(self, "net"):
            self._settle()

    # ------------------------------------------------------------- invariants

    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "net"):
            return
        for name in self.net.up():
            node = self.net.nodes[name]
            node.swim.check_invariants()
            node.tables.check_invariants()
            for e in node.tables.endpoints():
                if e.owner != name:
                    m = node.swim.member(e.owner)
                    assert m is not None and m.status.label in ("alive", "suspect"), (name, e)

    def _settle(self) -> None:
        net = self.net
        net.heal()
        deadline = net.now + SETTLE_LIMIT
        while True:
            problems = self._problems()
            if not problems:
                eps = sum(len(n.tables.local_endpoints()) for n in net.nodes.values())
                event(f"settled with endpoints: {min(eps, 10)}")
                conflicts = {c.kind for n in net.up() for c in net.nodes[n].tables.conflicts()}
                for kind in sorted(conflicts):
                    event(f"settled with conflict {kind}")
                return
            if net.now > deadline:
                raise AssertionError("not settled:\n" + "\n".join(problems[:10]))
            net.run_for(1.0)

    def _problems(self) -> list[str]:
        net = self.net
        live = net.up()
        if not net.members_converged():
            return ["membership not converged"]
        out: list[str] = []
        first = self._t(live[0])
        ref_nets = [(n.id, n.name, n.vni, n.subnets) for n in first.networks()]
        ref_conflicts = sorted(c.text for c in first.conflicts() if c.kind.startswith("network-"))
        users: dict[str, None] = {}
        for node in net.nodes.values():
            for e in node.persisted[0]:
                users[e.network] = None
        for name in live:
            t = self._t(name)
            if [(n.id, n.name, n.vni, n.subnets) for n in t.networks()] != ref_nets:
                out.append(f"{name}: networks differ from {live[0]}'s")
            mine = sorted(c.text for c in t.conflicts() if c.kind.startswith("network-"))
            if mine != ref_conflicts:
                out.append(f"{name}: network conflicts differ")
            for e in t.endpoints():
                if e.id in self.removed_eps:
                    out.append(f"{name}: removed endpoint {e.id[:12]} is visible")
            for network in t.networks():
                if network.id in self.removed_nets and network.id not in users:
                    out.append(f"{name}: removed network {network.name} is back and unused")
            for other in live:
                for e in self._t(other).local_endpoints():
                    try:
                        t.find_network(e.network)
                    except TableError:
                        out.append(f"{name}: network {e.network[:12]} of {other}'s endpoint is gone")
        nets = sorted({e.network for name in live for e in self._t(name).local_endpoints()})
        for net_id in nets:
            holders = [h for h in live if any(e.network == net_id for e in self._t(h).local_endpoints())]
            expected = sorted(
                (e.id, e.owner, e.vtep, e.ipv4, e.ipv6, e.mac)
                for h in holders
                for e in self._t(h).local_endpoints()
                if e.network == net_id
            )
            views = {h: _view(self._t(h), net_id) for h in holders}
            for n, view in views.items():
                if [v[:6] for v in view] != expected:
                    out.append(f"{n}: view of {net_id[:12]} has {len(view)} rows, expected {len(expected)}")
                if view != views[holders[0]]:
                    out.append(f"{n}: conflict flags in {net_id[:12]} differ from {holders[0]}'s")
                seen: dict[tuple[str, str], None] = {}
                for row in view:
                    if row[6]:
                        continue
                    for kind, value in (("v4", row[3]), ("v6", row[4]), ("mac", row[5])):
                        if value and (kind, value) in seen:
                            out.append(f"{n}: duplicate {kind} {value} among programmed rows")
                        seen[(kind, value)] = None
                peers = [p for p, _ in self._t(n).network_peers(net_id)]
                if peers != sorted(h for h in holders if h != n):
                    out.append(f"{n}: peers of {net_id[:12]} are {peers}")
        return out


TablesMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_tables_machine = TablesMachine.TestCase


class SlowTablesMachine(TablesMachine):
    pass


SlowTablesMachine.TestCase.settings = settings(
    max_examples=1000,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_tables_machine_long = pytest.mark.slow(SlowTablesMachine.TestCase)
