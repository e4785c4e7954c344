"""Reconciler: the trio task that keeps the kernel equal to the compiled view.

Owns: when to reconcile (coalesced pokes, the monitor, the resync timer, retries),
running compile -> read -> plan -> apply, and the counters behind
``agentctl dataplane``. Owns the kernel it is given (closes it when ``run`` ends).
Does not know the tables: it calls the ``view`` function it was given.

Driver obligations (the agent):
  * construct ``Reconciler(kernel, view)``, where ``view()`` returns the current
    ``OverlayView`` (cheap, called in the trio thread, at most once per reconcile);
  * ``await nursery.start(reconciler.run)``; ``run`` returns only when cancelled;
  * call ``reconciler.poke()`` after every change that can alter the view (table
    rows, membership, local config). Pokes are cheap and coalesced: a burst is
    flushed after ``quiescent`` seconds without a poke, or ``max_quantum`` after its
    first poke, whichever comes first (serf's coalescer);
  * call ``reconciler.ready()`` once the tables have caught up with the cluster
    (first successful join/push-pull, or "alone" decided). Until then, or until
    ``startup_grace`` seconds have passed, passes only add and replace: a restarted
    agent adopts the kernel's entries and removes nothing on an incomplete view, so
    traffic across an agent restart loses no packet;
  * for ``agentctl dataplane``: ``await reconciler.inspect()`` (fresh kernel read) or
    ``reconciler.status()`` (counters only, no I/O).

Behaviour: level-triggered (every pass reads the whole of our kernel state and
applies the difference, so missed events and crashes heal); a full pass at start
(adopts what a previous run left), at least every ``resync_interval``, after every
relevant monitor event (an entry deleted by someone else is back in ~quiescent +
one pass, well under 1 s), and after failures with exponential backoff. One task,
one kernel thread: no locks. With a LinuxKernel, compile/read/plan/apply run in a
dedicated worker thread (pyroute2's transport is thread-local; the agent's trio
thread stays responsive during a 20,000-entry apply).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from dataplane.compile import compile as compile_view
from dataplane.events import Monitor, diverges
from dataplane.kernel import ApplyResult, Kernel
from dataplane.model import EMPTY, OverlayView, State
from dataplane.plan import Op, additive, plan
from dataplane.report import summarize

log = logging.getLogger("dataplane.reconciler")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ReconcilerConfig:
    quiescent: float = 0.05
    max_quantum: float = 0.5
    resync_interval: float = 60.0
    backoff_initial: float = 0.25
    backoff_max: float = 15.0
    startup_grace: float = 15.0
    """Seconds after start during which nothing is deleted, unless ``ready()`` comes first."""
    keep_errors: int = 20


@dataclass(slots=True)
class Counters:
    reconciles: int = 0
    failures: int = 0
    ops_applied: int = 0
    op_errors: int = 0
    pokes: int = 0
    resyncs: int = 0
    retries: int = 0
    monitor_events: int = 0
    monitor_repairs: int = 0
    monitor_overflows: int = 0


@dataclass(slots=True)
class LastPass:
    at: float = 0.0
    """Wall-clock time (epoch seconds) the pass started; 0 = never."""
    duration_s: float = 0.0
    trigger: str = ""
    ops: int = 0
    ok: bool = True
    errors: list[str] = field(default_factory=list)


class _Worker:
    """One dedicated thread; ``await run(fn)`` calls fn there and returns its result."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataplane")

    async def run(self, fn: Callable[[], T]) -> T:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: Future[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        fut = self._pool.submit(fn)
        fut.add_done_callback(wake)
        await done.wait()
        return fut.result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)


class Reconciler:
    def __init__(
        self,
        kernel: Kernel,
        view: Callable[[], OverlayView],
        config: ReconcilerConfig | None = None,
        *,
        threaded: bool | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        from dataplane.kernel import LinuxKernel

        self.kernel = kernel
        self.config = config or ReconcilerConfig()
        self._view = view
        self._wall = wall_clock
        self._threaded = isinstance(kernel, LinuxKernel) if threaded is None else threaded
        self._worker: _Worker | None = _Worker() if self._threaded else None
        self.counters = Counters()
        self.last = LastPass()
        self.desired: State = EMPTY
        self.actual: State = EMPTY
        """Kernel state read by the last pass (before its apply)."""
        self._dirty = True  # the first pass runs at once
        self._trigger = "start"
        self._first_poke = -math.inf
        self._last_poke = -math.inf
        self._wake = trio.Event()
        self._next_resync = math.inf
        self._retry_at: float | None = None
        self._backoff = self.config.backoff_initial
        self._passes_done = 0
        self._pass_done = trio.Event()
        self._in_pass = False
        self._prefix = "ov-"
        self._compiled: tuple[OverlayView, State] | None = None
        self._ready = False
        self._grace_until = math.inf

    # -- API ------------------------------------------------------------------------------------
    def poke(self, reason: str = "poke") -> None:
        """Something that may change the view happened: reconcile soon (coalesced)."""
        self.counters.pokes += 1
        self._mark(reason)

    def _mark(self, reason: str) -> None:
        try:
            now = trio.current_time()
        except RuntimeError:  # poked before run() started: the first pass covers it
            self._dirty = True
            return
        if not self._dirty:
            self._dirty = True
            self._first_poke = now
            self._trigger = reason
        self._last_poke = now
        self._wake.set()

    def ready(self) -> None:
        """The view is complete: from now on passes may delete (and one runs soon)."""
        if not self._ready:
            self._ready = True
            self._mark("ready")

    @property
    def additive_only(self) -> bool:
        """True while passes may not delete anything (see ``ready``)."""
        if self._ready:
            return False
        try:
            return trio.current_time() < self._grace_until
        except RuntimeError:
            return True

    async def next_pass(self) -> None:
        """Wait until the next pass finishes (without asking for one)."""
        await self._pass_done.wait()

    async def settled(self) -> None:
        """Poke, then wait until a pass that started after this call has finished."""
        self.poke("settle")
        target = self._passes_done + (2 if self._in_pass else 1)
        while self._passes_done < target:
            await self._pass_done.wait()

    def status(self) -> dict[str, Any]:
        """Counters and the last pass, JSON-ready (no I/O)."""
        return {
            "last_reconcile": {
                "at": self.last.at,
                "duration_ms": round(self.last.duration_s * 1000, 3),
                "trigger": self.last.trigger,
                "ops": self.last.ops,
                "ok": self.last.ok,
                "errors": list(self.last.errors),
            },
            "counters": {k: getattr(self.counters, k) for k in Counters.__slots__},  # type: ignore[attr-defined]
            "pending": self._dirty,
            "retry_in_s": self._retry_in(),
            "additive_only": self.additive_only,
            "problems": list(self.desired.problems),
        }

    def _retry_in(self) -> float | None:
        if self._retry_at is None:
            return None
        try:
            return max(0.0, round(self._retry_at - trio.current_time(), 3))
        except RuntimeError:  # called outside trio
            return None

    async def inspect(self) -> dict[str, Any]:
        """Per network: what the kernel holds now vs what it should hold, plus ``status()``."""
        desired = self.desired
        actual = await self._call(lambda: self.kernel.read(desired))
        return {"networks": summarize(desired, actual), **self.status()}

    # -- the task -------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        monitor: Monitor | None = None
        try:
            opener = getattr(self.kernel, "open_monitor", None)
            if opener is not None:
                try:
                    monitor = await self._call(opener)
                except Exception as e:  # the reconciler still works, only slower to repair
                    log.warning("dataplane: no kernel monitor (%s); relying on resyncs", e)
            async with trio.open_nursery() as nursery:
                if monitor is not None:
                    nursery.start_soon(self._watch, monitor)
                task_status.started()
                await self._loop()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                if monitor is not None:
                    monitor.close()
                await self._call(self.kernel.close)
            if self._worker is not None:
                self._worker.shutdown()

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._worker is None:
            return fn()
        return await self._worker.run(fn)

    async def _watch(self, monitor: Monitor) -> None:
        while True:
            try:
                events = await monitor.next_events()
            except OSError as e:
                log.warning("dataplane: monitor failed (%s); relying on resyncs", e)
                return
            if events is None:
                self.counters.monitor_overflows += 1
                self._mark("monitor-overflow")
                continue
            self.counters.monitor_events += len(events)
            desired, prefix = self.desired, self._prefix
            if any(diverges(desired, ev, prefix) for ev in events):
                self.counters.monitor_repairs += 1
                self._mark("kernel-changed")

    async def _loop(self) -> None:
        cfg = self.config
        start = trio.current_time()
        self._next_resync = start + cfg.resync_interval
        self._grace_until = start + cfg.startup_grace
        grace_pending = not self._ready
        while True:
            now = trio.current_time()
            due = self._next_resync
            trigger = "resync"
            if grace_pending and not self._ready and self._grace_until < due:
                due, trigger = self._grace_until, "grace-over"
            if self._dirty:
                flush = min(self._last_poke + cfg.quiescent, self._first_poke + cfg.max_quantum)
                if flush < due:
                    due, trigger = flush, self._trigger
            if self._retry_at is not None and self._retry_at < due:
                due, trigger = self._retry_at, "retry"
            if now < due:
                with trio.move_on_at(due):
                    await self._wake.wait()
                self._wake = trio.Event()
                continue
            if trigger == "grace-over":
                grace_pending = False
            if trigger == "resync":
                self.counters.resyncs += 1
            elif trigger == "retry":
                self.counters.retries += 1
            self._dirty = False
            await self._pass(trigger)

    async def _pass(self, trigger: str) -> None:
        cfg = self.config
        t0 = trio.current_time()
        self._in_pass = True
        self.last = LastPass(at=self._wall(), trigger=trigger)
        errors: list[str] = []
        ok = False
        try:
            view = self._view()
            self._prefix = view.prefix
            desired, actual, ops = await self._call(lambda: self._prepare(view))
            self.desired, self.actual = desired, actual
            if self.additive_only:
                held = len(ops)
                ops = additive(ops)
                if held != len(ops):
                    log.info("dataplane: %d deletion(s) held until ready", held - len(ops))
            result = await self._call(lambda: self._apply(ops)) if ops else ApplyResult()
            self.last.ops = len(ops)
            self.counters.ops_applied += result.applied
            self.counters.op_errors += len(result.errors)
            errors = [str(e) for e in result.errors[: cfg.keep_errors]]
            if len(result.errors) > cfg.keep_errors:
                errors.append(f"... and {len(result.errors) - cfg.keep_errors} more")
            if result.lost:
                errors.append("netlink replies lost (receive overflow): state re-read next pass")
            ok = result.ok
        except Exception as e:  # never let a kernel or input problem kill the agent
            errors = [f"{type(e).__name__}: {e}"]
            log.warning("dataplane: reconcile failed: %s", errors[0])
        end = trio.current_time()
        self.counters.reconciles += 1
        self.last.duration_s = end - t0
        self.last.ok = ok
        self.last.errors = errors
        self._next_resync = end + cfg.resync_interval
        if ok:
            self._retry_at = None
            self._backoff = cfg.backoff_initial
        else:
            self.counters.failures += 1
            self._retry_at = end + self._backoff
            self._backoff = min(self._backoff * 2, cfg.backoff_max)
            if errors:
                log.info(
                    "dataplane: %d error(s), retry in %.2fs: %s",
                    len(errors),
                    self._retry_at - end,
                    errors[0],
                )
        self._in_pass = False
        self._passes_done += 1
        self._pass_done.set()
        self._pass_done = trio.Event()

    def _prepare(self, view: OverlayView) -> tuple[State, State, list[Op]]:
        kernel_prefix = getattr(self.kernel, "prefix", view.prefix)
        if kernel_prefix != view.prefix:
            raise ValueError(
                f"device prefix {view.prefix!r} differs from the kernel's {kernel_prefix!r}"
            )
        # An unchanged view compiles to the same state: skip the ~30 ms for 10k rows.
        last = self._compiled
        if last is not None and (view is last[0] or view == last[0]):
            desired = last[1]
        else:
            desired = compile_view(view)
            self._compiled = (view, desired)
        actual = self.kernel.read(desired)
        return desired, actual, plan(desired, actual, view.prefix)

    def _apply(self, ops: list[Op]) -> ApplyResult:
        return self.kernel.apply(ops)
