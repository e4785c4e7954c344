"""A tiny deterministic harness that hand-carries packets between Swim cores.

For unit tests only (the simulator in sim/ is the full-featured one): packets are
delivered after a fixed latency, streams are answered synchronously, and a set of
blocked (src, dst) pairs models partitions and crashes.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from gossip.config import Config
from gossip.effects import Address, Effect, Send, StreamRequest
from gossip.errors import DecodeError
from gossip.swim import Swim


@dataclass
class Harness:
    config: Config
    seed: int = 1
    latency: float = 0.001
    now: float = 0.0
    nodes: dict[str, Swim] = field(default_factory=dict)
    by_addr: dict[Address, str] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    cut: set[tuple[str, str]] = field(default_factory=set)
    events: list[tuple[float, str, Effect]] = field(default_factory=list)
    streams: list[tuple[float, str, StreamRequest]] = field(default_factory=list)
    _queue: list[tuple[float, int, str, Address, bytes]] = field(default_factory=list)
    _seq: int = 0

    def add(self, name: str, *, incarnation: int = 0, config: Config | None = None) -> Swim:
        index = len(self.by_addr) + 1
        addr = (f"10.0.{index // 250}.{index % 250 + 1}", 7946)
        node = Swim(
            config or self.config,
            name,
            addr,
            rng=random.Random(f"{self.seed}:{name}"),
            now=self.now,
            incarnation=incarnation,
        )
        self.nodes[name] = node
        self.by_addr[addr] = name
        self.down.discard(name)
        return node

    def restart(self, name: str, *, incarnation: int = 0) -> Swim:
        addr = self.nodes[name].local.address
        del self.by_addr[addr]
        node = self.add(name, incarnation=incarnation)
        return node

    def addr(self, name: str) -> Address:
        return self.nodes[name].local.address

    def blocked(self, a: str, b: str) -> bool:
        return a in self.down or b in self.down or (a, b) in self.cut

    def partition(self, left: list[str], right: list[str]) -> None:
        for a in left:
            for b in right:
                self.cut.add((a, b))
                self.cut.add((b, a))

    def heal(self) -> None:
        self.cut.clear()

    def perform(self, name: str, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                dst = self.by_addr.get(effect.to)
                if dst is None or self.blocked(name, dst):
                    continue
                self._seq += 1
                heapq.heappush(
                    self._queue, (self.now + self.latency, self._seq, name, effect.to, effect.data)
                )
            elif isinstance(effect, StreamRequest):
                self.streams.append((self.now, name, effect))
                self._stream(name, effect)
            else:
                self.events.append((self.now, name, effect))

    def _stream(self, name: str, req: StreamRequest) -> None:
        src = self.nodes[name]
        dst_name = self.by_addr.get(req.to)
        reply: bytes | None = None
        if dst_name is not None and not self.blocked(name, dst_name):
            dst = self.nodes[dst_name]
            try:
                reply, effects = dst.handle_stream(self.now, src.local.address, req.data)
            except DecodeError:
                reply, effects = None, []
            self.perform(dst_name, effects)
            if not req.expect_reply:
                reply = b""
        self.perform(name, src.handle_stream_reply(self.now, req.token, reply))

    def run_until(self, until: float) -> None:
        while True:
            next_packet = self._queue[0][0] if self._queue else float("inf")
            live = [(n.next_deadline(), name) for name, n in self.nodes.items() if name not in self.down]
            next_timer, who = min(live) if live else (float("inf"), "")
            at = min(next_packet, next_timer)
            if at > until:
                self.now = until
                return
            self.now = max(self.now, at)
            if next_packet <= next_timer:
                _, _, src, to, data = heapq.heappop(self._queue)
                dst = self.by_addr.get(to)
                if dst is None or self.blocked(src, dst):
                    continue
                node = self.nodes[dst]
                self.perform(dst, node.handle_packet(self.now, self.addr(src), data))
            else:
                self.perform(who, self.nodes[who].tick(self.now))

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def status(self, observer: str, member: str) -> str | None:
        m = self.nodes[observer].member(member)
        return None if m is None else m.status.label

    def join_all(self, seed: str = "n0") -> None:
        for name, node in self.nodes.items():
            if name != seed:
                self.perform(name, node.join(self.now, [self.addr(seed)]))

    def converged(self, alive: list[str]) -> bool:
        for name in alive:
            view = {m.name: m.status.label for m in self.nodes[name].members()}
            if any(view.get(other) != "alive" for other in alive):
                return False
        return True

    def wait(self, predicate: object, timeout: float, step: float = 0.05) -> float:
        """Advance virtual time until predicate() holds; returns the time it took."""
        assert callable(predicate)
        start = self.now
        while not predicate():
            if self.now - start > timeout:
                raise AssertionError(f"condition not reached within {timeout} virtual seconds")
            self.run_for(step)
        return self.now - start
