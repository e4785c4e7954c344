"""Scenario components: what one part of a scenario does to the cluster, and when.

Owns: the contract of a component (``Component``: ``configure`` then ``install``,
given a ``Setup``; ``ScenarioError`` for a spec that does not fit the run) and the
built-in components: the start (``converged``, ``bootstrap``), failures (``crash``,
``leave``, ``partition``, ``churn``, ``stall``, ``slow``), link behaviour (``loss``,
``dup``, ``latency``) and a meta update (``meta``). Components draw every random
choice from the ``Setup``'s RNG, at install time or when their action runs.
Does not own: the scenario language and the registry of every component
(``scenarios.py``), the components that measure a subsystem (``keyrotation.py``,
``tablesim.py``), the mechanics of crashes, pauses, etc. (``world.py``) or links
(``network.py``).
"""

from __future__ import annotations

import functools
import random
import typing
from dataclasses import dataclass

from sim import metrics as m
from sim.network import Cut, Latency
from sim.world import World


class ScenarioError(ValueError):
    """A scenario spec that cannot be parsed or does not fit the run."""


@dataclass
class Setup:
    """What a component may use while installing itself."""

    world: World
    rng: random.Random
    duration: float

    @property
    def n(self) -> int:
        return self.world.n

    def pick(self, pct: float, count: int, exclude: tuple[int, ...] = (0,)) -> list[int]:
        """``count`` nodes, or ``pct`` % of N (at least one), never those in ``exclude``."""
        pool = [i for i in range(self.n) if i not in exclude]
        k = count if count > 0 else max(1, round(pct / 100.0 * self.n))
        if k > len(pool):
            raise ScenarioError(f"cannot pick {k} of {len(pool)} eligible nodes")
        return sorted(self.rng.sample(pool, k))

    def seeds(self, k: int = 3) -> list[tuple[str, int]]:
        """Join addresses for a restarting node: node 0 plus a few running nodes."""
        live = self.world.live()
        extra = self.rng.sample(live, min(k - 1, len(live))) if live else []
        return [self.world.nodes[i].addr for i in [0, *extra]]


def _restart(s: Setup, i: int) -> None:
    s.world.start(i, s.seeds())


@dataclass
class Component:
    name: typing.ClassVar[str] = ""
    doc: typing.ClassVar[str] = ""
    begins: typing.ClassVar[bool] = False

    def configure(self, s: Setup) -> None:
        """Runs for every component before any installs: how nodes are built (keys, ...)."""

    def install(self, s: Setup) -> None:
        raise NotImplementedError


@dataclass
class Converged(Component):
    name = "converged"
    doc = "all nodes start at t=0 already knowing each other (no join traffic)"
    begins = True

    def install(self, s: Setup) -> None:
        s.world.start_converged()


@dataclass
class Bootstrap(Component):
    name = "bootstrap"
    doc = "seed nodes start at t=at; every other node starts within `spread` s and joins through the seeds"
    begins = True
    seeds: int = 1
    spread: float = 1.0
    at: float = 0.0

    def install(self, s: Setup) -> None:
        w = s.world
        k = max(1, min(self.seeds, s.n))
        addrs = [w.nodes[i].addr for i in range(k)]
        w.at(self.at, "start n0", lambda: w.start(0))
        for i in range(1, s.n):
            when = self.at + (0.0 if i < k else 0.01 + s.rng.uniform(0.0, self.spread))
            w.at(when, f"start {i}", functools.partial(w.start, i, addrs))


@dataclass
class Crash(Component):
    name = "crash"
    doc = "crash pct % (or count) random nodes at `at` (spread over `over` s); host=1: host down, not just the process; restart>0: back after that many s"
    pct: float = 1.0
    count: int = 0
    at: float = 5.0
    over: float = 0.0
    host: bool = False
    restart: float = 0.0

    def install(self, s: Setup) -> None:
        w = s.world
        for i in s.pick(self.pct, self.count):
            when = self.at + (s.rng.uniform(0.0, self.over) if self.over else 0.0)
            w.at(when, f"crash {i}", functools.partial(w.crash, i, host=self.host))
            if self.restart > 0:
                w.at(when + self.restart, f"restart {i}", functools.partial(_restart, s, i))


@dataclass
class Leave(Component):
    name = "leave"
    doc = "count random nodes leave gracefully at `at`"
    count: int = 1
    at: float = 5.0

    def install(self, s: Setup) -> None:
        for i in s.pick(0.0, self.count):
            s.world.at(self.at, f"leave {i}", functools.partial(s.world.leave, i))


@dataclass
class Partition(Component):
    name = "partition"
    doc = ("split into sides A (frac) and B from `at` until `heal` (0: never); oneway=1 cuts only A→B "
           "(asymmetric); bridge=pct puts that % of nodes in neither side, reaching both (partial); loss<1: lossy cut")
    at: float = 5.0
    heal: float = 35.0
    frac: float = 0.5
    oneway: bool = False
    bridge: float = 0.0
    loss: float = 1.0

    def install(self, s: Setup) -> None:
        order = list(range(s.n))
        s.rng.shuffle(order)
        nb = round(self.bridge / 100.0 * s.n)
        rest = order[nb:]
        na = max(1, min(len(rest) - 1, round(self.frac * len(rest))))
        a, b = sorted(rest[:na]), sorted(rest[na:])
        if not a or not b:
            raise ScenarioError("partition needs at least two nodes outside the bridge")
        net = s.world.net
        label = f"partition@{self.at:g}"
        cuts = [Cut(label, s.n, a, b, self.loss)]
        if not self.oneway:
            cuts.append(Cut(label, s.n, b, a, self.loss))

        def cut() -> None:
            for c in cuts:
                net.add_cut(c)

        s.world.at(self.at, f"{label} cut {len(a)}|{nb}|{len(b)}", cut)
        if self.heal > 0:
            s.world.at(self.heal, f"{label} heal", lambda: net.remove_cut(label))


@dataclass
class Churn(Component):
    name = "churn"
    doc = "every `every` s from `start`, crash pct % of running nodes; each restarts `down` s later"
    every: float = 5.0
    pct: float = 1.0
    down: float = 10.0
    start: float = 5.0
    stop: float = 0.0

    def install(self, s: Setup) -> None:
        w = s.world
        stop = self.stop or s.duration

        def round_() -> None:
            live = [i for i in w.live() if i != 0]
            k = min(len(live), max(1, round(self.pct / 100.0 * s.n)))
            for i in sorted(s.rng.sample(live, k)):
                w.crash(i)
                w.at(w.now + self.down, f"restart {i}", functools.partial(_restart, s, i))
            if w.now + self.every < stop:
                w.at(w.now + self.every, "churn", round_)

        w.at(self.start, "churn", round_)


@dataclass
class Meta(Component):
    name = "meta"
    doc = "at `at`, node `node` (-1: random) changes its meta; its spread is measured"
    at: float = 5.0
    node: int = -1
    size: int = 24

    def install(self, s: Setup) -> None:
        w = s.world
        idx = self.node if self.node >= 0 else s.rng.randrange(1, s.n) if s.n > 1 else 0
        if idx >= s.n:
            raise ScenarioError(f"meta: node {idx} out of range")
        meta = f"update@{self.at:g}".encode().ljust(self.size, b".")[: max(1, self.size)]

        def act() -> None:
            w.metrics.watch(f"meta {w.nodes[idx].name}@{self.at:g}", idx, (m.UPDATED, m.JOINED), w.now, meta)
            w.set_meta(idx, meta)

        w.at(self.at, f"meta {idx}", act)


@dataclass
class Loss(Component):
    name = "loss"
    doc = "random datagram loss p from `at` until `until` (0: end)"
    p: float = 0.1
    at: float = 0.0
    until: float = 0.0

    def install(self, s: Setup) -> None:
        net = s.world.net
        s.world.at(self.at, f"loss {self.p:g}", lambda: net.set_loss(self.p))
        if self.until > 0:
            s.world.at(self.until, "loss 0", lambda: net.set_loss(0.0))


@dataclass
class Dup(Component):
    name = "dup"
    doc = "each datagram arrives twice with probability p"
    p: float = 0.01

    def install(self, s: Setup) -> None:
        s.world.net.set_duplicate(self.p)


@dataclass
class Lat(Component):
    name = "latency"
    doc = "one-way latency = floor + lognormal(median, sigma), seconds"
    median: float = 0.0004
    sigma: float = 0.5
    floor: float = 0.0001

    def install(self, s: Setup) -> None:
        s.world.net.latency = Latency(self.floor, self.median, self.sigma)


@dataclass
class Stall(Component):
    name = "stall"
    doc = "pct % of nodes (fixed set) repeatedly stall for `dur` s, with uniform gaps in [0, 2·gap] s between stalls"
    pct: float = 5.0
    count: int = 0
    dur: float = 2.0
    gap: float = 10.0
    start: float = 1.0

    def install(self, s: Setup) -> None:
        w = s.world
        for i in s.pick(self.pct, self.count, exclude=()):
            w.metrics.on_stall(i)
            self._next(s, i, self.start + s.rng.uniform(0.0, 2 * self.gap))

    def _next(self, s: Setup, i: int, when: float) -> None:
        if when >= s.duration:
            return

        def act() -> None:
            s.world.pause(i, self.dur)
            self._next(s, i, s.world.now + self.dur + s.rng.uniform(0.0, 2 * self.gap))

        s.world.at(when, f"stall {i}", act)


@dataclass
class Slow(Component):
    name = "slow"
    doc = "pct % of nodes handle everything `delay` s late (an overloaded host)"
    pct: float = 5.0
    delay: float = 0.2

    def install(self, s: Setup) -> None:
        for i in s.pick(self.pct, 0, exclude=()):
            s.world.net.inbound_delay[i] = self.delay
