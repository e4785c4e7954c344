"""A deterministic network of Swim + Tables nodes for table tests (no sockets).

UDP datagrams and TCP streams are events on one heap, delivered after a latency
(plus seeded jitter, which reorders), dropped with probability ``loss`` and
duplicated with probability ``dup``. ``cut`` pairs model partitions, ``down``
nodes model crashes (their objects stay around for inspection until restart).
A restart builds fresh Swim + Tables objects and restores the endpoints the
node had "persisted" after its last API call, as the agent will.

Ideas from tests/unit/swimharness.py (the lead's), extended with delegates,
faults and streams that travel through the event heap.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gossip.config import Config
from gossip.effects import Address, Effect, Send, StreamRequest
from gossip.errors import DecodeError
from gossip.swim import Swim
from gossip.tables.replica import Tables, TablesConfig
from gossip.tables.rows import Endpoint, Network

T = TypeVar("T")

_UDP = 0
_STREAM = 1
_REPLY = 2


@dataclass
class Node:
    name: str
    addr: Address
    swim: Swim
    tables: Tables
    persisted: tuple[list[Endpoint], list[Network], int] = ([], [], 0)
    lives: int = 0


@dataclass
class Net:
    seed: int = 1
    config: Config = field(default_factory=Config.local)
    tables_config: TablesConfig = field(default_factory=TablesConfig)
    latency: float = 0.002
    jitter: float = 0.0
    loss: float = 0.0
    dup: float = 0.0
    now: float = 0.0
    nodes: dict[str, Node] = field(default_factory=dict)
    down: dict[str, None] = field(default_factory=dict)
    cut: set[tuple[str, str]] = field(default_factory=set)
    logs: list[tuple[float, str, Effect]] = field(default_factory=list)
    max_events: int = 2_000_000
    _by_addr: dict[Address, str] = field(default_factory=dict)
    _heap: list[tuple[float, int, int, str, str, Any]] = field(default_factory=list)
    _seq: int = 0
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"net:{self.seed}")

    # ---------------------------------------------------------------- nodes

    def add(self, name: str) -> Node:
        index = len(self._by_addr) + 1
        addr = (f"10.0.{index // 250}.{index % 250 + 1}", 7946)
        self._by_addr[addr] = name
        node = self._build(name, addr, 0)
        self.nodes[name] = node
        return node

    def _build(self, name: str, addr: Address, lives: int) -> Node:
        rng = random.Random(f"{self.seed}:{name}:{lives}")
        tables = Tables(node=name, vtep=addr[0], rng=rng, config=self.tables_config)
        swim = Swim(self.config, name, addr, rng=rng, now=self.now, delegate=tables)
        tables.attach(swim)
        return Node(name, addr, swim, tables, lives=lives)

    def crash(self, name: str) -> None:
        self.down[name] = None

    def restart(self, name: str, seeds: list[str] | None = None, *, use_clock: bool = True) -> Node:
        old = self.nodes[name]
        node = self._build(name, old.addr, old.lives + 1)
        eps, nets, clock = old.persisted
        node.persisted = old.persisted
        self.nodes[name] = node
        self.down.pop(name, None)
        self.perform(name, node.tables.restore_local_endpoints(
            self.now, eps, nets, clock if use_clock else 0))
        if seeds:
            self.perform(name, node.swim.join(self.now, [self.nodes[s].addr for s in seeds]))
        return node

    def call(self, name: str, fn: Callable[[Tables], tuple[T, list[Effect]]]) -> T:
        """An API call on a node; performs its effects and persists its local state."""
        node = self.nodes[name]
        value, effects = fn(node.tables)
        self.perform(name, effects)
        self.persist(name)
        return value

    def persist(self, name: str) -> None:
        t = self.nodes[name].tables
        self.nodes[name].persisted = (t.local_endpoints(), t.local_networks(), t.clock)

    def up(self) -> list[str]:
        return [n for n in self.nodes if n not in self.down]

    # ------------------------------------------------------------- network

    def blocked(self, a: str, b: str) -> bool:
        return a in self.down or b in self.down or (a, b) in self.cut

    def partition(self, groups: list[list[str]]) -> None:
        self.cut.clear()
        for i, left in enumerate(groups):
            for right in groups[i + 1 :]:
                for a in left:
                    for b in right:
                        self.cut.add((a, b))
                        self.cut.add((b, a))

    def heal(self) -> None:
        self.cut.clear()
        self.loss = self.dup = self.jitter = 0.0

    def _push(self, kind: int, src: str, dst: str, payload: Any, delay: float | None = None) -> None:
        self._seq += 1
        at = self.now + (self.latency if delay is None else delay)
        if self.jitter:
            at += self._rng.uniform(0, self.jitter)
        heapq.heappush(self._heap, (at, self._seq, kind, src, dst, payload))

    def perform(self, name: str, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                dst = self._by_addr.get(effect.to)
                if dst is None or self.blocked(name, dst):
                    continue
                if self.loss and self._rng.random() < self.loss:
                    continue
                self._push(_UDP, name, dst, effect.data)
                if self.dup and self._rng.random() < self.dup:
                    self._push(_UDP, name, dst, effect.data)
            elif isinstance(effect, StreamRequest):
                dst = self._by_addr.get(effect.to, "")
                self._push(_STREAM, name, dst, (effect, self.nodes[name].lives))
            else:
                self.logs.append((self.now, name, effect))

    def _deliver(self, kind: int, src: str, dst: str, payload: Any) -> None:
        if kind == _UDP:
            if self.blocked(src, dst):
                return
            node = self.nodes[dst]
            try:
                effects = node.swim.handle_packet(self.now, self.nodes[src].addr, payload)
            except DecodeError:
                return
            self.perform(dst, effects)
        elif kind == _STREAM:
            req, lives = payload
            reply: bytes | None = None
            if dst and not self.blocked(src, dst):
                target = self.nodes[dst]
                try:
                    reply, effects = target.swim.handle_stream(self.now, self.nodes[src].addr, req.data)
                except DecodeError:
                    reply, effects = None, []
                self.perform(dst, effects)
                if not req.expect_reply:
                    reply = b""
            self._push(_REPLY, dst, src, (req.token, reply, lives))
        else:
            token, reply, lives = payload
            node = self.nodes[dst]
            if dst in self.down or node.lives != lives:
                return  # the requester crashed or restarted meanwhile
            if src and self.blocked(src, dst):
                reply = None
            self.perform(dst, node.swim.handle_stream_reply(self.now, token, reply))

    def run_until(self, until: float) -> None:
        budget = self.max_events
        while True:
            budget -= 1
            if budget < 0:
                raise AssertionError("event budget exhausted: a core keeps asking for ticks")
            next_msg = self._heap[0][0] if self._heap else float("inf")
            timers = [(self.nodes[n].swim.next_deadline(), n) for n in self.up()]
            next_timer, who = min(timers) if timers else (float("inf"), "")
            at = min(next_msg, next_timer)
            if at > until:
                self.now = until
                return
            self.now = max(self.now, at)
            if next_msg <= next_timer:
                _, _, kind, src, dst, payload = heapq.heappop(self._heap)
                self._deliver(kind, src, dst, payload)
            else:
                self.perform(who, self.nodes[who].swim.tick(self.now))

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def join_all(self, seed: str) -> None:
        for name, node in self.nodes.items():
            if name != seed:
                self.perform(name, node.swim.join(self.now, [self.nodes[seed].addr]))

    def wait(self, predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> float:
        start = self.now
        while not predicate():
            if self.now - start > timeout:
                raise AssertionError(f"condition not reached within {timeout} virtual seconds")
            self.run_for(step)
        return self.now - start

    def members_converged(self) -> bool:
        live = self.up()
        for name in live:
            swim = self.nodes[name].swim
            for other in self.nodes:
                m = swim.member(other)
                if other in self.down:
                    if m is not None and m.status.label in ("alive", "suspect"):
                        return False
                elif m is None or m.status.label != "alive":
                    return False
        return True


def cluster(n: int, seed: int = 1, **kw: Any) -> Net:
    """``n`` joined nodes n0..n{n-1}, membership converged."""
    net = Net(seed=seed, **kw)
    for i in range(n):
        net.add(f"n{i}")
    net.join_all("n0")
    net.wait(net.members_converged, timeout=30)
    return net
