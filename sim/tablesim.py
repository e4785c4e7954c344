"""The replicated tables in the simulator: endpoint records spreading per network.

Owns: ``TablesFactory`` (one real ``gossip.swim.Swim`` per node with a real
``gossip.tables.replica.Tables`` as its delegate, wired as the agent wires them), the
seeded start of the tables (``seed_tables``), the endpoint-creation schedule of
the ``endpoints`` scenario component (``EndpointsPlan``) and its metrics
(``RowTracker``): for every endpoint row created during the measurement window,
when each node taking part in its network can see it, and the bytes the nodes
send, split into membership and tables traffic.

The ``endpoints`` component (``Endpoints``) is defined here and registered in the
scenario language by ``scenarios.py``, which imports this module (never the reverse).
Does not own: the scenario language (``scenarios.py``), files and plots
(``tablesplots.py``), the world's mechanics (``world.py``).

How visibility is observed without polling: the tracker subscribes to every
node's tables (``Tables.subscribe``, the tables' change signal, docs/tables.md §2);
after each entry point that changed them, it checks only the rows still pending
in the networks that node takes part in, with the tables' own rule
(``gossip.tables.visibility.Visibility.shows``, what ``Tables.endpoints()``
applies). Tests check the tracker against ``Tables.endpoints()``. The tables'
bytes that ride on membership messages come from the tables' own counters
(``TablesStats.piggyback_bytes``, ``state_bytes``).

The seeded start (docs/simulation.md, "Endpoint records per network"): at t = 0
every replica is made consistent without traffic, like ``converged`` does for
membership. Every row is written by its owner through the public API (node 0
creates the networks; each member creates its first endpoint, after learning
the claims of the members before it, so no two pick the same address block);
endpoint rows reach the other participants as one bulk sync per network
(``on_user_message``); the cluster-wide rows (networks, member rows, claims) are
gathered on node 0 through ``local_state``/``merge_remote_state`` and then
installed into every other replica as shared row objects with
``Tables.bootstrap_rows`` (the tables' converged-start entry point, like
``Swim.bootstrap_members``) instead of decoding them per node, which would cost
~24 µs and ~340 bytes per row and replica, i.e. minutes and 7 GB for the
21,000 cluster-wide rows of the whole-cluster baseline at 1,000 nodes.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gossip.effects import Address
from gossip.swim import Swim
from gossip.tables import framing
from gossip.tables.replica import Tables, TablesConfig
from gossip.tables.rows import EndpointRow, encode_row
from sim.components import Component, ScenarioError, Setup
from sim.cores import Core, SwimFactory
from sim.metrics import distribution, time_to_fraction

if TYPE_CHECKING:
    from pathlib import Path

    from sim.world import World

INF = math.inf
MAX_NETWORKS = 190
"""Networks get 10.(60+k).0.0/16 each (4,096 IPAM blocks of 16: never exhausted here)."""


class SetupError(ValueError):
    """The endpoints scenario does not fit the run (reported as a scenario error)."""


# ------------------------------------------------------------------------ factory


class TablesFactory:
    """Builds Swim + Tables per node (the agent's wiring); keeps each node's ``Tables``.

    Swim gets the same seeded RNG as ``SwimFactory`` gives it; the tables get their
    own (``…:tables``), so membership draws do not depend on table traffic order.
    """

    def __init__(self, base: SwimFactory, tables_config: TablesConfig, tracker: RowTracker, n: int) -> None:
        self.base = base
        self.config = base.config
        self.seed = base.seed
        self.tables_config = tables_config
        self.tracker = tracker
        self.tables: list[Tables | None] = [None] * n

    def __call__(self, idx: int, name: str, addr: Address, now: float, generation: int) -> Core:
        suffix = f":{generation}" if generation else ""
        tables = Tables(node=name, vtep=addr[0], rng=random.Random(f"{self.seed}:{name}{suffix}:tables"),
                        config=self.tables_config)
        swim = Swim(self.config, name, addr, rng=random.Random(f"{self.seed}:{name}{suffix}"), now=now,
                    delegate=tables)
        tables.attach(swim)
        tables.subscribe(functools.partial(self.tracker.check, idx))
        old = self.tables[idx]
        if old is not None:
            self.tracker.retire(old)
        self.tables[idx] = tables
        return swim

    def preconverge(self, now: float, cores: Sequence[Core]) -> None:
        self.base.preconverge(now, cores)

    def at(self, idx: int) -> Tables:
        t = self.tables[idx]
        assert t is not None, f"node {idx} never started"
        return t


# ------------------------------------------------------------------------ tracker


class _Row:
    """One endpoint row created in the window, and who has seen it so far."""

    __slots__ = ("at", "index", "key", "left", "member_times", "net", "net_index", "other_times",
                 "owner", "participants", "seen")

    def __init__(self, index: int, net_index: int, net: str, owner: int, key: tuple[str, str], at: float,
                 n: int) -> None:
        self.index = index
        self.net_index = net_index
        self.net = net
        self.owner = owner
        self.key = key
        self.at = at
        self.seen = bytearray(n)
        """1: a participant at creation that has not seen it yet; 2: seen."""
        self.left = 0
        self.participants = 0
        self.member_times: list[float] = []
        self.other_times: list[float] = []


@dataclass
class _Totals:
    """Cumulative bytes sent by all nodes (a snapshot)."""

    udp: int = 0
    tcp: int = 0
    gossip: int = 0
    bulk: int = 0
    piggyback: int = 0
    user_state: int = 0

    def minus(self, other: _Totals) -> _Totals:
        return _Totals(self.udp - other.udp, self.tcp - other.tcp, self.gossip - other.gossip,
                       self.bulk - other.bulk, self.piggyback - other.piggyback,
                       self.user_state - other.user_state)


@dataclass
class RowTracker:
    """Visibility of every endpoint row created in the window, and byte counters."""

    n: int
    world: World | None = None
    factory: TablesFactory | None = None
    plan: EndpointsPlan | None = None
    rows: list[_Row] = field(default_factory=list)
    pending: dict[str, list[_Row]] = field(default_factory=dict)
    """Network id -> rows not yet seen by every participant (kept small: done rows leave)."""
    retired: _Totals = field(default_factory=lambda: _Totals())
    """Piggybacked and push/pull state bytes of replicas replaced by a restart (their
    net-gossip and bulk bytes are not carried over: the figures always left them out)."""
    checks: int = 0
    window: tuple[_Totals, _Totals] | None = None
    """Totals when the window opened and when it closed (creations stopped)."""
    window_end: float | None = None
    seconds: list[tuple[float, _Totals, int]] = field(default_factory=list)
    start_check: dict[str, Any] = field(default_factory=dict)

    # -- rows -------------------------------------------------------------------

    def created(self, net_index: int, net: str, owner: int, ep_id: str, now: float) -> None:
        assert self.world is not None and self.factory is not None and self.plan is not None
        owner_name = self.world.nodes[owner].name
        row = _Row(len(self.rows), net_index, net, owner, (owner_name, ep_id), now, self.n)
        for i, node in enumerate(self.world.nodes):
            t = self.factory.tables[i]
            if i != owner and node.core is not None and t is not None and net in t.sync.joined:
                row.seen[i] = 1
                row.participants += 1
        row.left = row.participants
        self.rows.append(row)
        if row.left:
            self.pending.setdefault(net, []).append(row)

    def retire(self, tables: Tables) -> None:
        """A restarted node's replica is replaced: keep the bytes it counted."""
        self.retired.piggyback += tables.stats.piggyback_bytes
        self.retired.user_state += tables.stats.state_bytes

    def check(self, idx: int, now: float) -> None:
        """Node ``idx``'s tables changed: which pending rows can it see now?"""
        pending = self.pending
        if not pending or self.factory is None:
            return
        t = self.factory.tables[idx]
        if t is None:
            return
        joined = t.sync.joined
        nets = [k for k in pending if k in joined] if len(pending) <= len(joined) else \
            [k for k in joined if k in pending]
        if not nets:
            return
        self.checks += 1
        shows = t.visibility.shows
        assert self.plan is not None
        is_member = self.plan.is_member
        for net in nets:
            rows = pending[net]
            done = False
            for r in rows:
                if r.seen[idx] != 1 or not shows(net, *r.key):
                    continue
                r.seen[idx] = 2
                r.left -= 1
                (r.member_times if is_member[r.net_index][idx] else r.other_times).append(now - r.at)
                done = done or r.left == 0
            if done:
                rest = [r for r in rows if r.left]
                if rest:
                    pending[net] = rest
                else:
                    del pending[net]

    # -- bytes ------------------------------------------------------------------

    def totals(self) -> _Totals:
        assert self.world is not None and self.factory is not None
        met = self.world.metrics
        tot = _Totals(udp=sum(met.sent_bytes), tcp=met.tcp_bytes, piggyback=self.retired.piggyback,
                      user_state=self.retired.user_state)
        for t in self.factory.tables:
            if t is not None:
                tot.gossip += t.stats.gossip_bytes
                tot.bulk += t.stats.bulk_bytes
                tot.piggyback += t.stats.piggyback_bytes
                tot.user_state += t.stats.state_bytes
        return tot

    def sample(self, now: float) -> None:
        assert self.world is not None
        if self.seconds and self.seconds[-1][0] == now:
            self.seconds.pop()  # the window closes on a whole second: one sample per time
        self.seconds.append((now, self.totals(), len(self.world.live())))

    # -- results ----------------------------------------------------------------

    def summary(self, end: float) -> dict[str, object]:
        assert self.plan is not None and self.world is not None
        plan = self.plan
        pop = plan.size - 1
        t50: list[float] = []
        t90: list[float] = []
        t99: list[float] = []
        t100: list[float] = []
        all100: list[float] = []
        complete = 0
        for r in self.rows:
            mt = sorted(r.member_times)
            for q, dest in ((0.5, t50), (0.9, t90), (0.99, t99), (1.0, t100)):
                v = time_to_fraction(mt, pop, q)
                if v is not None:
                    dest.append(v)
            if len(mt) == pop:
                complete += 1
            if r.left == 0 and r.participants:
                all100.append(max([*r.member_times, *r.other_times]))
        window_end = self.window_end if self.window_end is not None else end
        window = max(0.0, window_end - plan.start)
        first, last = self.window if self.window else (_Totals(), _Totals())
        d = last.minus(first)
        running = len(self.world.live())
        per = (running * window) or 1.0
        tables = d.gossip + d.bulk + d.piggyback + d.user_state
        total = d.udp + d.tcp
        return {
            "networks": plan.networks, "size": plan.size, "rate_per_network_per_s": plan.rate,
            "scoped": plan.scoped, "window": [plan.start, window_end], "end": end,
            "start": "seeded (see docs/simulation.md)", "consistent_at_start": self.start_check,
            "rows": len(self.rows),
            "rows_reaching_all_members": complete,
            "member_population": pop,
            "t50": distribution(t50), "t90": distribution(t90),
            "t99": distribution(t99), "t100": distribution(t100),
            "participants_mean": (sum(r.participants for r in self.rows) / len(self.rows)) if self.rows else None,
            "t100_all_participants": distribution(all100),
            "non_member_sightings": sum(len(r.other_times) for r in self.rows),
            "outsiders_holding_rows": self.outsiders_holding(),
            "bytes_per_node_per_s": {
                "total": total / per, "udp": d.udp / per, "tcp": d.tcp / per,
                "tables": tables / per, "membership": (total - tables) / per,
                "tables_net_gossip": d.gossip / per, "tables_bulk_sync": d.bulk / per,
                "tables_piggyback": d.piggyback / per, "tables_push_pull_state": d.user_state / per,
            },
            "tables_state_bytes_node0": len(self.factory.at(0).local_state(False)) if self.factory else None,
            "checks": self.checks,
        }

    def outsiders_holding(self) -> int:
        """Nodes holding endpoint rows of a network they are not a member of."""
        assert self.plan is not None and self.factory is not None
        count = 0
        for i, t in enumerate(self.factory.tables):
            if t is None:
                continue
            for k, net in enumerate(self.plan.net_ids):
                if not self.plan.is_member[k][i] and t.store.endpoints.get(net):
                    count += 1
                    break
        return count

    def per_row(self) -> list[list[object]]:
        assert self.plan is not None
        pop = self.plan.size - 1
        out: list[list[object]] = []
        for r in self.rows:
            mt = sorted(r.member_times)
            others = sorted(r.other_times)
            out.append([r.index, r.net_index, r.owner, r.at, pop, len(mt),
                        time_to_fraction(mt, pop, 0.5), time_to_fraction(mt, pop, 0.9),
                        time_to_fraction(mt, pop, 0.99), time_to_fraction(mt, pop, 1.0),
                        r.participants, len(mt) + len(others),
                        max(mt[-1] if mt else 0.0, others[-1] if others else 0.0) if r.left == 0 else None])
        return out

    def write_csv(self, out: Path, end: float) -> list[Path]:
        from sim import tablesplots

        return tablesplots.write_csv(out, self)

    def plots(self, out: Path, result: dict[str, Any]) -> list[Path]:
        from sim import tablesplots

        return tablesplots.run_plot(out, result, self)


# -------------------------------------------------------------------------- plan


@dataclass
class EndpointsPlan:
    """Who is a member of which network and when endpoints are created."""

    networks: int
    size: int
    rate: float
    scoped: bool
    start: float
    stop: float
    members: list[list[int]] = field(default_factory=list)
    is_member: list[bytearray] = field(default_factory=list)
    net_ids: list[str] = field(default_factory=list)


def prepare(world: World, tables_config: TablesConfig) -> RowTracker:
    """Swap the world's core factory for one that adds the tables (before any node starts)."""
    base = world.factory
    if not isinstance(base, SwimFactory):
        raise SetupError("endpoints: needs the real gossip core (SwimFactory)")
    if getattr(base, "keys", ()) or getattr(base, "swim_class", None) is not None:
        raise SetupError("endpoints: cannot be combined with keys or another core class yet")
    tracker = RowTracker(world.n)
    factory = TablesFactory(base, tables_config, tracker, world.n)
    tracker.world = world
    tracker.factory = factory
    world.factory = factory
    world.metrics.extensions["endpoints"] = tracker
    world.reports["endpoints"] = lambda: tracker.summary(world.now)
    return tracker


def install(world: World, tracker: RowTracker, plan: EndpointsPlan, rng: random.Random) -> None:
    """Choose the member sets, seed the tables and schedule the creations."""
    n = world.n
    if plan.networks < 1 or plan.size < 2:
        raise SetupError("endpoints: need networks >= 1 and size >= 2")
    if plan.networks > MAX_NETWORKS:
        raise SetupError(f"endpoints: at most {MAX_NETWORKS} networks")
    if plan.networks * plan.size > n:
        raise SetupError(f"endpoints: {plan.networks} networks of {plan.size} need "
                         f"{plan.networks * plan.size} nodes, the run has {n}")
    if plan.rate <= 0:
        raise SetupError("endpoints: rate must be positive")
    if any(node.core is None for node in world.nodes):
        raise SetupError("endpoints: needs the converged start (every node running at t=0)")
    factory = tracker.factory
    assert factory is not None
    order = list(range(n))
    rng.shuffle(order)
    plan.members = [sorted(order[k * plan.size:(k + 1) * plan.size]) for k in range(plan.networks)]
    for ms in plan.members:
        flags = bytearray(n)
        for i in ms:
            flags[i] = 1
        plan.is_member.append(flags)
    tracker.plan = plan
    seed_tables(world, factory, plan)
    tracker.start_check = start_check(factory, plan)

    def begin() -> None:
        tracker.window = (tracker.totals(), tracker.totals())
        tracker.sample(world.now)

    def close() -> None:
        tracker.sample(world.now)
        if tracker.window is not None:
            tracker.window = (tracker.window[0], tracker.seconds[-1][1])
        tracker.window_end = world.now

    # Bytes are measured while endpoints are being created; after ``stop`` the run
    # only waits for the last rows to arrive everywhere.
    world.at(plan.start, "endpoints: window opens", begin)
    world.at(plan.stop, "endpoints: window closes", close)
    period = 1.0 / plan.rate
    for k in range(plan.networks):
        t = plan.start + rng.uniform(0.0, period)
        while t < plan.stop:
            world.at(t, f"endpoint net{k:02d}", functools.partial(_create, world, tracker, plan, rng, k))
            t += period
    for s in range(math.ceil(plan.start) + 1, int(world.metrics.duration) + 1):
        world.at(float(s), "endpoints: sample", functools.partial(_sample, world, tracker))


def _sample(world: World, tracker: RowTracker) -> None:
    tracker.sample(world.now)


def _create(world: World, tracker: RowTracker, plan: EndpointsPlan, rng: random.Random, k: int) -> None:
    factory = tracker.factory
    assert factory is not None
    net = plan.net_ids[k]
    candidates = [i for i in plan.members[k] if world.nodes[i].core is not None
                  and factory.at(i).local_endpoints()]
    if not candidates:
        return
    owner = candidates[rng.randrange(len(candidates))]
    ep, effects = factory.at(owner).create_endpoint(world.now, net)
    tracker.created(k, net, owner, ep.id, world.now)
    world.perform(owner, effects)


# ---------------------------------------------------------------------- seeding


def seed_tables(world: World, factory: TablesFactory, plan: EndpointsPlan) -> None:
    """Make every replica consistent at t = 0 without traffic (see the module docstring).

    Effects of the API calls made here are dropped: the state they would spread is
    installed directly, as ``Swim.bootstrap_members`` does for membership.
    """
    now = world.now
    n = world.n
    tables = [factory.at(i) for i in range(n)]
    t0 = tables[0]
    # 1. Node 0 creates the networks; every node learns them (the push/pull path).
    for k in range(plan.networks):
        network, _ = t0.create_network(now, f"net{k:02d}", [f"10.{60 + k}.0.0/16"])
        plan.net_ids.append(network.id)
    state = t0.local_state(False)
    for t in tables[1:]:
        t.merge_remote_state(now, state, False)  # without scoping: each joins every network
    # 2. Each member creates its first endpoint, knowing the claims made before it.
    for k, members in enumerate(plan.members):
        net = plan.net_ids[k]
        claims: list[bytes] = []
        for i in members:
            t = tables[i]
            if claims:
                t.merge_remote_state(now, framing.encode_state(claims), False)
            t.create_endpoint(now, net)
            claims += [encode_row(c, now) for c in t.store.claims.get(net, {}).values() if c.node == t.node]
    # 3. Endpoint rows: one bulk sync per network to every node taking part.
    for k, members in enumerate(plan.members):
        net = plan.net_ids[k]
        rows = [encode_row(r, now) for i in members for r in tables[i].store.endpoints[net].values()
                if r.owner == tables[i].node]
        payload = framing.encode_bulk_sync(net, tables[members[0]].node, False, rows)
        for t in tables:
            if net in t.sync.joined:
                t.on_user_message(now, payload)
    # 4. Cluster-wide rows: gathered on node 0, then shared with everyone.
    for t in tables[1:]:
        t0.merge_remote_state(now, t.local_state(False), False)
    rows_all = list(t0.store.cluster_rows())
    for t in tables[1:]:
        t.bootstrap_rows(rows_all)
    for t in tables:
        t.stats.state_bytes = 0  # the ``local_state`` calls above are not traffic


def start_check(factory: TablesFactory, plan: EndpointsPlan) -> dict[str, Any]:
    """After seeding: does every member see all endpoints of its network, everyone all networks?"""
    bad_members = 0
    bad_networks = 0
    for k, members in enumerate(plan.members):
        net = plan.net_ids[k]
        for i in members:
            if len(factory.at(i).endpoints(net)) != plan.size:
                bad_members += 1
    for t in factory.tables:
        if t is not None and len(t.networks()) != plan.networks:
            bad_networks += 1
    return {"members_missing_endpoints": bad_members, "nodes_missing_networks": bad_networks}


def endpoint_rows(t: Tables, net: str) -> list[EndpointRow]:
    """Rows a replica holds for a network (tests)."""
    return list(t.store.endpoints.get(net, {}).values())


# ---------------------------------------------------------------------- component


@dataclass
class Endpoints(Component):
    name = "endpoints"
    doc = ("replicated tables on every node (seeded consistent at t=0); `networks` networks of `size` "
           "disjoint members each; from `start` until `tail` s before the end, one endpoint per network "
           "every 1/`rate` s on a random member; measures when each row reaches the network's members and "
           "the bytes sent. scoped=0: whole-cluster endpoint gossip; bulksync>0: per-network anti-entropy "
           "interval (0: Swim's push/pull interval)")
    networks: int = 20
    size: int = 50
    rate: float = 1.0
    scoped: bool = True
    start: float = 10.0
    tail: float = 5.0
    bulksync: float = 0.0

    def configure(self, s: Setup) -> None:
        config = TablesConfig(scoped=self.scoped,
                              bulk_sync_interval=self.bulksync if self.bulksync > 0 else None)
        try:
            prepare(s.world, config)
        except SetupError as e:
            raise ScenarioError(str(e)) from None

    def install(self, s: Setup) -> None:
        tracker = s.world.metrics.extensions.get("endpoints")
        assert isinstance(tracker, RowTracker)
        stop = s.duration - self.tail
        if not self.start < stop:
            raise ScenarioError(f"endpoints: no time to create endpoints (start {self.start:g} s, "
                                f"stop {stop:g} s = duration - tail)")
        plan = EndpointsPlan(self.networks, self.size, self.rate, self.scoped, self.start, stop)
        try:
            install(s.world, tracker, plan, s.rng)
        except SetupError as e:
            raise ScenarioError(str(e)) from None
