"""The discrete-event world: one virtual clock, an event heap, N nodes running the core.

Owns: the heap of ``(at, seq, kind, a, b, c)`` tuples (``seq`` is a global
counter, so ties break by scheduling order and nothing else), each node's life
(not started, up, paused, down) and the interpretation of effects, following
the driver contract (docs/design.md, "The core's contract"):
after every call into a core, perform its effects in order, re-read
``next_deadline()`` and keep one pending wake per node (stale wakes are skipped
by comparing with the stored ``wake_at``).

Does not own: link behaviour (``network.py``), what is measured
(``metrics.py``), what happens when (``scenarios.py``).

Modelling choices (see docs/simulation.md):
- A paused node (CPU stall) keeps its kernel: datagrams and TCP requests queue
  in a bounded socket buffer. On resume its overdue timers fire first, then the
  queue is handled in arrival order, all at the resume time.
- A crashed process refuses TCP at once (RST); a crashed host lets the
  connection time out. UDP to either vanishes.
- TCP exchanges are never lost, only delayed by retransmissions (network.py),
  and fail after ``Config.tcp_timeout``.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

from gossip.effects import (
    Address,
    Effect,
    JoinFinished,
    Log,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspected,
    MemberUpdated,
    Send,
    StreamRequest,
)
from gossip.errors import DecodeError
from sim import metrics as m
from sim.cores import Core, CoreFactory, node_addr, node_name
from sim.metrics import Metrics
from sim.network import Network
from sim.progress import Progress
from sim.trace import KIND_TCP, KIND_UDP, Trace

# Event kinds (small ints: cheap to compare on the hot path).
DELIVER, WAKE, STREAM, REPLY, ACTION, RESUME, UNREACHABLE = range(7)
# Node states.
OFF, UP, PAUSED = 0, 1, 2
SOCKET_BUFFER = 2 * 1024 * 1024
"""Bytes a paused node's kernel queues (memberlist asks for a 2 MiB SO_RCVBUF)."""

EVENT_CODES: dict[type, int] = {
    MemberJoined: m.JOINED, MemberUpdated: m.UPDATED, MemberSuspected: m.SUSPECTED,
    MemberFailed: m.FAILED, MemberLeft: m.LEFT, MemberReaped: m.REAPED,
}

Event = tuple[float, int, int, int, int, Any]
"""(at, seq, kind, a, b, payload): seq is unique, so comparison never reaches the payload."""
Action = Callable[[], None]


class Node:
    __slots__ = ("addr", "backlog", "backlog_bytes", "core", "gen", "idx", "lives", "name",
                 "refuses", "resume_at", "state", "wake_at")

    def __init__(self, idx: int, name: str, addr: Address) -> None:
        self.idx = idx
        self.name = name
        self.addr = addr
        self.core: Core | None = None
        self.state = OFF
        self.gen = 0
        """Bumped on every stop/start: wakes and replies for an older life are stale."""
        self.lives = 0
        """How many times the node was started (its RNG seed differs per life)."""
        self.wake_at = math.inf
        self.backlog: list[tuple[int, int, Any]] = []
        self.backlog_bytes = 0
        self.resume_at = 0.0
        self.refuses = False
        """When off: a dead process on a live host (TCP refused) rather than a dead host."""


class World:
    def __init__(self, n: int, factory: CoreFactory, network: Network, metrics: Metrics,
                 *, tcp_timeout: float, trace: Trace | None = None) -> None:
        self.n = n
        self.factory = factory
        self.net = network
        self.metrics = metrics
        self.trace = trace or Trace()
        self.tcp_timeout = tcp_timeout
        self.nodes = [Node(i, node_name(i, n), node_addr(i)) for i in range(n)]
        self.by_addr = {node.addr: node.idx for node in self.nodes}
        self.by_name = {node.name: node.idx for node in self.nodes}
        self.heap: list[Event] = []
        self.seq = itertools.count()
        self.now = 0.0
        self.events = 0
        self.dropped_off = 0
        self.dropped_buffer = 0
        self.stuck_ticks = 0
        self.joins_failed = 0
        self.logs: dict[str, int] = {}
        self.first_logs: list[tuple[float, int, str, str]] = []
        self.effect_hooks: dict[type, Callable[[int, Any], None]] = {}
        """Scenario callbacks for effects the world itself ignores (e.g. ``QueryResponse``):
        called with the node's index and the effect, while the effects are performed."""
        self.reports: dict[str, Callable[[], Any]] = {}
        """Extra ``result.json`` sections a scenario contributes, built after the run."""

    # -- scheduling -------------------------------------------------------------

    def push(self, at: float, kind: int, a: int, b: int, c: Any) -> None:
        heapq.heappush(self.heap, (at, next(self.seq), kind, a, b, c))

    def at(self, when: float, label: str, fn: Action) -> None:
        """Run a scenario action at simulated time ``when``."""
        self.push(when, ACTION, 0, 0, (label, fn))

    def run(self, until: float, progress: Progress | None = None) -> None:
        # What exists now (a converged start: N tables of N members) lives for the
        # whole run: exempt it from the cyclic GC, whose full collections would
        # otherwise walk every table entry each time (seconds at N = 10,000).
        gc.freeze()
        # Nor run full collections during the run: what the run allocates and keeps
        # (a crash storm's suspicions, timers and members: ~10^6 objects at N =
        # 10,000) would be walked by each of them, ~10 % of the CPU at 3,000 nodes,
        # to find nothing (the core builds no reference cycles on its hot paths:
        # 0 objects freed by every full collection of a 3,000-node crash-1pct run).
        # Young collections still run, so short-lived cycles are still freed; an old
        # cycle (a leave's wait closure) waits for the next full collection after the run.
        # They run every 100,000 net allocations rather than 700: what a handler
        # allocates is mostly freed by reference counting before a collection would
        # look at it (GC time at 3,000 nodes 1.2 → 0.5 CPU-s, same RSS).
        thresholds = gc.get_threshold()
        gc.set_threshold(max(thresholds[0], 100_000), thresholds[1], 1 << 30)
        try:
            self._run(until, progress)
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()

    def _run(self, until: float, progress: Progress | None) -> None:
        heap = self.heap
        pop = heapq.heappop
        handlers = (self._deliver, self._wake, self._stream, self._reply, self._action, self._resume,
                    self._unreachable)
        check = 0
        while heap and heap[0][0] <= until:
            at, _, kind, a, b, c = pop(heap)
            self.now = at
            handlers[kind](at, a, b, c)
            check += 1
            if check == 4096:
                self.events += check
                check = 0
                if progress is not None:
                    progress.update(at, self.events)
        self.events += check
        self.now = until

    # -- node life (scenario actions call these) ------------------------------

    def start(self, idx: int, seeds: Sequence[Address] = ()) -> None:
        """Start a node with an empty table and join through ``seeds`` (none: first node)."""
        node = self.nodes[idx]
        if node.state != OFF:
            return
        restart = node.lives > 0
        node.gen += 1
        node.core = self.factory(idx, node.name, node.addr, self.now, node.lives)
        node.lives += 1
        node.state = UP
        node.wake_at = math.inf
        self.metrics.on_start(self.now, idx, restart=restart)
        seeds = [s for s in seeds if s != node.addr]
        if seeds:
            self._perform(node, node.core.join(self.now, seeds))
        self._rearm(node)

    def start_converged(self) -> None:
        """Start every node at once, each already knowing every other (no traffic)."""
        now = self.now
        for node in self.nodes:
            node.gen += 1
            node.core = self.factory(node.idx, node.name, node.addr, now, node.lives)
            node.lives += 1
            node.state = UP
        cores = [node.core for node in self.nodes if node.core is not None]
        # Building N tables of N members allocates no garbage cycles, but each full
        # collection on the way would walk every table built so far (N² entries).
        enabled = gc.isenabled()
        gc.disable()
        try:
            self.factory.preconverge(now, cores)
        finally:
            if enabled:
                gc.enable()
        self.metrics.on_start_all(now)
        for node in self.nodes:
            self._rearm(node)

    def crash(self, idx: int, host: bool = False) -> None:
        node = self.nodes[idx]
        if node.state == OFF:
            return
        self.metrics.begin_outage(self.now, idx, "crash")
        self._stop(node, refuses=not host)

    def _stop(self, node: Node, refuses: bool) -> None:
        # Streams queued in a paused node's socket fail for their initiators.
        for kind, src, c in node.backlog:
            if kind == STREAM:
                self._fail_stream(c, self.now if refuses else None, src)
        node.backlog = []
        node.backlog_bytes = 0
        node.state = OFF
        node.refuses = refuses
        node.core = None
        node.gen += 1
        node.wake_at = math.inf
        self.metrics.on_stop(self.now, node.idx)

    def leave(self, idx: int, flush_timeout: float = 5.0) -> None:
        """Graceful leave; the process exits once the leave is gossiped (or after the timeout)."""
        node = self.nodes[idx]
        if node.state != UP or node.core is None:
            return
        self.metrics.begin_outage(self.now, idx, "leave")
        self._perform(node, node.core.leave(self.now))
        self._rearm(node)
        deadline = self.now + flush_timeout
        gen = node.gen

        def check() -> None:
            if node.gen != gen or node.core is None:
                return
            if node.core.leave_done() or self.now >= deadline:
                self._stop(node, refuses=True)
            else:
                self.at(self.now + 0.1, f"leave-wait {node.name}", check)

        self.at(self.now + 0.1, f"leave-wait {node.name}", check)

    def pause(self, idx: int, duration: float) -> None:
        """CPU stall: the node's process does nothing for ``duration`` seconds."""
        node = self.nodes[idx]
        if node.state != UP:
            return
        node.state = PAUSED
        node.resume_at = self.now + duration
        self.push(node.resume_at, RESUME, idx, node.gen, None)

    def set_meta(self, idx: int, meta: bytes) -> None:
        node = self.nodes[idx]
        if node.state != UP or node.core is None:
            return
        self._perform(node, node.core.set_meta(self.now, meta))
        self._rearm(node)

    def live(self) -> list[int]:
        return [node.idx for node in self.nodes if node.state != OFF]

    def perform(self, idx: int, effects: list[Effect]) -> None:
        """Perform effects a scenario got from calling a node's core directly (an operator's
        command, like the agent's ``Driver.call``), then re-arm its wake."""
        node = self.nodes[idx]
        if node.core is None:
            return
        self._perform(node, effects)
        self._rearm(node)

    # -- event handlers ---------------------------------------------------------

    def _deliver(self, at: float, dst: int, src: int, data: Any) -> None:
        node = self.nodes[dst]
        state = node.state
        if state == UP:
            assert node.core is not None
            assert isinstance(data, bytes)
            self.metrics.core_calls += 1
            try:
                effects = node.core.handle_packet(at, self.nodes[src].addr, data)
            except DecodeError:
                self.metrics.decode_errors += 1
                return
            if effects:
                self._perform(node, effects)
            self._rearm(node)
        elif state == PAUSED:
            self._queue(node, DELIVER, src, data)
        else:
            self.dropped_off += 1
            if node.refuses:
                # A live host without the process answers ICMP port unreachable.
                d = self.net.icmp_transit(dst, src)
                if d >= 0.0:
                    self.push(at + d, UNREACHABLE, src, self.nodes[src].gen, node.addr)

    def _unreachable(self, at: float, idx: int, gen: int, addr: Any) -> None:
        node = self.nodes[idx]
        if node.gen != gen or node.state != UP or node.core is None:
            return  # a stalled process's error queue is not modelled: dropped
        self.metrics.core_calls += 1
        effects = node.core.handle_unreachable(at, addr)
        if effects:
            self._perform(node, effects)
        self._rearm(node)

    def _wake(self, at: float, idx: int, gen: int, _c: Any) -> None:
        node = self.nodes[idx]
        if node.gen != gen or node.wake_at != at or node.state != UP:
            return
        node.wake_at = math.inf
        self._tick(node, at)

    def _tick(self, node: Node, at: float) -> None:
        assert node.core is not None
        self.metrics.core_calls += 1
        effects = node.core.tick(at)
        if effects:
            self._perform(node, effects)
        self._rearm(node, after_tick=True)

    def _stream(self, at: float, dst: int, src: int, c: Any) -> None:
        token, data, expect_reply, src_gen, deadline = c
        node = self.nodes[dst]
        if node.state == PAUSED:
            if node.resume_at <= deadline:
                # Handled (and its bytes counted) on resume.
                self._queue(node, STREAM, src, c)
            else:
                self._fail_stream(c, None, src)
            return
        if node.state == OFF or node.core is None:
            self._fail_stream(c, at if node.refuses else None, src)
            return
        # Bytes count once a connection exists: a refused or timed-out connect sends none.
        self.metrics.tcp_bytes += len(data)
        self.metrics.core_calls += 1
        try:
            reply, effects = node.core.handle_stream(at, self.nodes[src].addr, data)
        except DecodeError:
            self.metrics.decode_errors += 1
            reply, effects = None, []
        if effects:
            self._perform(node, effects)
        self._rearm(node)
        if not expect_reply:
            self.push(at + self.net.latency.sample(self.net.rng), REPLY, src, src_gen, (token, b""))
            return
        if reply is None:
            # The responder closed the connection: the initiator sees EOF one hop later.
            self.push(at + self.net.latency.sample(self.net.rng), REPLY, src, src_gen, (token, None))
            return
        self.metrics.tcp_bytes += len(reply)
        self.trace.send(KIND_TCP, at, dst, src, reply)
        back = at + self.net.stream_reply(dst, src, deadline - at)
        if back > deadline:
            self.push(deadline, REPLY, src, src_gen, (token, None))
        else:
            self.push(back, REPLY, src, src_gen, (token, reply))

    def _fail_stream(self, c: Any, when: float | None, src: int) -> None:
        """Report a failed exchange to ``src``: at ``when`` (refused) or at its deadline."""
        token, _data, _expect, src_gen, deadline = c
        self.metrics.tcp_failures += 1
        self.push(deadline if when is None else when, REPLY, src, src_gen, (token, None))

    def _reply(self, at: float, idx: int, gen: int, c: Any) -> None:
        node = self.nodes[idx]
        if node.gen != gen:
            return
        if node.state == PAUSED:
            self._queue(node, REPLY, gen, c)
            return
        if node.state != UP or node.core is None:
            return
        token, reply = c
        self.metrics.core_calls += 1
        effects = node.core.handle_stream_reply(at, token, reply)
        if effects:
            self._perform(node, effects)
        self._rearm(node)

    def _action(self, at: float, _a: int, _b: int, c: Any) -> None:
        label, fn = c
        self.trace.action(at, label)
        fn()

    def _resume(self, at: float, idx: int, gen: int, _c: Any) -> None:
        node = self.nodes[idx]
        if node.gen != gen or node.state != PAUSED:
            return
        node.state = UP
        node.wake_at = math.inf
        self._tick(node, at)
        backlog, node.backlog, node.backlog_bytes = node.backlog, [], 0
        for kind, a, c in backlog:
            if node.state != UP:
                break
            if kind == DELIVER:
                self._deliver(at, idx, a, c)
            elif kind == STREAM:
                self._stream(at, idx, a, c)
            else:
                self._reply(at, idx, a, c)

    def _queue(self, node: Node, kind: int, a: int, c: Any) -> None:
        size = len(c) if isinstance(c, bytes) else 64
        if node.backlog_bytes + size > SOCKET_BUFFER:
            self.dropped_buffer += 1
            if kind == STREAM:
                self._fail_stream(c, None, a)
            return
        node.backlog.append((kind, a, c))
        node.backlog_bytes += size

    # -- effects ------------------------------------------------------------------

    def _rearm(self, node: Node, after_tick: bool = False) -> None:
        assert node.core is not None
        d = node.core.next_deadline()
        now = self.now
        if d <= now:
            if after_tick:
                # The core asked to be woken for something tick() did not clear:
                # step past it rather than spin.
                self.stuck_ticks += 1
                d = now + 1e-6
            else:
                d = now
        if d < node.wake_at:
            node.wake_at = d
            heapq.heappush(self.heap, (d, next(self.seq), WAKE, node.idx, node.gen, None))

    def _perform(self, node: Node, effects: list[Effect]) -> None:
        now = self.now
        src = node.idx
        met = self.metrics
        net = self.net
        by_addr = self.by_addr
        push = heapq.heappush
        heap = self.heap
        seq = self.seq
        send = self.trace.send
        for e in effects:
            t = type(e)
            if t is Send:
                data = e.data  # type: ignore[union-attr]
                size = len(data)
                met.sent_msgs[src] += 1
                met.sent_bytes[src] += size
                b = int(now)
                if b < met.bins:
                    met.bin_msgs[b] += 1
                    met.bin_bytes[b] += size
                kind = data[0] if size else 0
                if kind == 12 and size > 5:  # CRC frame: count what it carries
                    kind = data[5]
                met.by_type[kind] += 1
                dst = by_addr.get(e.to)  # type: ignore[union-attr]
                if dst is None:
                    continue
                send(KIND_UDP, now, src, dst, data)
                d = net.transit(src, dst)
                if d >= 0.0:
                    push(heap, (now + d, next(seq), DELIVER, dst, src, data))
                if net.duplicate and net.duplicates():
                    d = net.transit(src, dst)
                    if d >= 0.0:
                        push(heap, (now + d, next(seq), DELIVER, dst, src, data))
            elif t is StreamRequest:
                self._open_stream(node, e)  # type: ignore[arg-type]
            else:
                self._event(node, e)

    def _open_stream(self, node: Node, e: StreamRequest) -> None:
        now = self.now
        met = self.metrics
        met.tcp_msgs += 1
        deadline = now + self.tcp_timeout
        c = (e.token, e.data, e.expect_reply, node.gen, deadline)
        dst = self.by_addr.get(e.to)
        if dst is None:
            self._fail_stream(c, None, node.idx)
            return
        self.trace.send(KIND_TCP, now, node.idx, dst, e.data)
        d = self.net.stream_request(node.idx, dst, self.tcp_timeout)
        if now + d > deadline:
            self._fail_stream(c, None, node.idx)
        else:
            self.push(now + d, STREAM, dst, node.idx, c)

    def _event(self, node: Node, e: Effect) -> None:
        code = EVENT_CODES.get(type(e))
        if code is not None:
            member = e.member  # type: ignore[union-attr]
            x = self.by_name.get(member.name)
            self.trace.event(self.now, node.idx, code, member.name)
            if x is not None and x != node.idx:
                self.metrics.on_event(self.now, node.idx, code, x, member)
        elif isinstance(e, JoinFinished):
            if e.contacted == 0:
                self.joins_failed += 1
        elif isinstance(e, Log):
            self.logs[e.level] = self.logs.get(e.level, 0) + 1
            if len(self.first_logs) < 50:
                self.first_logs.append((self.now, node.idx, e.level, e.message))
        elif self.effect_hooks:
            hook = self.effect_hooks.get(type(e))
            if hook is not None:
                hook(node.idx, e)
