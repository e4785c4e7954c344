"""Reconciler: the trio task that keeps one kind of kernel objects equal to a desired state.

Owns: when to reconcile (coalesced pokes, the target's kernel monitor if it has one,
the resync timer, retries with backoff, the startup grace), running
source -> compile -> read -> plan -> apply, and the counters behind
``agentctl dataplane``. Generic: a ``Target`` supplies compile/read/plan/apply for
one kind of kernel object. Two kinds run it: VXLAN devices, bridges, FDB rows and
neighbours (``dataplane.target.VxlanTarget``) and IPsec SAs and policies
(``dataplane.xfrm.target.XfrmTarget``). Owns the target it is given (closes it when
``run`` ends). Does not know the tables: it calls the ``source`` function it was
given; does not know what it programs: the target does.

Driver obligations (the agent):
  * construct ``Reconciler(target, source)``, where ``source()`` returns the current
    input of ``target.compile`` (for VXLAN an ``OverlayView``; cheap, called in the
    trio thread, at most once per reconcile);
  * ``await nursery.start(reconciler.run)``; ``run`` returns only when cancelled;
  * call ``reconciler.poke()`` after every change that can alter the source (table
    rows, membership, local config, keys). Pokes are cheap and coalesced while there is
    activity: a poke that finds the reconciler idle (no pass running, and the last one
    ended at least ``idle_factor`` times its own duration ago) starts a pass at once
    (the pokes of the same trio tick go with it: the source is read when the pass
    starts); pokes during a pass or soon after one are a burst, flushed after
    ``quiescent`` seconds without a poke, or ``max_quantum`` after its first poke,
    whichever comes first (serf's coalescer). A lone change thus costs no waiting
    (issue 17 item 6: the 50 ms window was the largest stage of a create's
    propagation), passes started at once take at most 1/(1 + ``idle_factor``) of the
    time whatever a pass costs (half with the default; a pass slowed by load waits
    longer), and a burst still costs few passes;
  * call ``reconciler.ready()`` once the tables have caught up with the cluster
    (first successful join/push-pull, or "alone" decided). Until then, or until
    ``startup_grace`` seconds have passed, passes only add and replace: a restarted
    agent adopts the kernel's objects and removes nothing on an incomplete view, so
    traffic across an agent restart loses no packet;
  * for ``agentctl dataplane``: ``await reconciler.inspect()`` (fresh kernel read) or
    ``reconciler.status()`` (counters only, no I/O).

Behaviour: level-triggered (every pass reads the whole of our kernel state and
applies the difference, so missed events and crashes heal; a target may answer the
read from a notification-fed mirror of the kernel, except on the triggers in
``_FULL_READ``, when ``target.forget()`` makes it read everything); a full pass at start
(adopts what a previous run left), at least every ``resync_interval``, after every
relevant monitor event (an entry deleted by someone else is back in one pass when
the reconciler was idle, ~quiescent + one pass otherwise, well under 1 s), and after failures with exponential backoff. One task,
one kernel thread: no locks. With a blocking target (a real kernel),
compile/read/plan/apply run in a dedicated worker thread (pyroute2's transport is
thread-local; the agent's trio thread stays responsive during a 20,000-entry apply).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import trio

log = logging.getLogger("dataplane.reconciler")
T = TypeVar("T")
V_contra = TypeVar("V_contra", contravariant=True)
V = TypeVar("V")
D = TypeVar("D")
A = TypeVar("A")
O = TypeVar("O")  # noqa: E741 - one operation of a target


class Outcome(Protocol):
    """What ``Target.apply`` reports (``dataplane.kernel.ApplyResult`` for VXLAN)."""

    @property
    def applied(self) -> int:
        """Operations sent (successful or not)."""
        ...

    @property
    def errors(self) -> Sequence[object]:
        """One entry per refused operation; ``str()`` of each is shown to operators."""
        ...

    @property
    def lost(self) -> bool:
        """Some outcomes are unknown (e.g. netlink receive overflow): re-read first."""
        ...

    @property
    def ok(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class NothingApplied:
    """The outcome of a pass with no operation to apply."""

    applied: int = 0
    errors: tuple[()] = ()
    lost: bool = False
    ok: bool = True


class EventSource(Protocol):
    """A kernel monitor, used from the trio thread (``dataplane.events.Monitor``)."""

    async def next_events(self) -> Sequence[Any] | None:
        """The next batch of events; None when some were lost (caller must resync)."""
        ...

    def close(self) -> None: ...


class Target(Protocol[V_contra, D, A, O]):
    """One kind of kernel object: how to compile, read, plan and apply it.

    ``compile``/``read``/``plan``/``apply``/``open_monitor``/``close`` run in the
    reconciler's worker thread when ``blocking`` (else in the trio thread);
    ``diverges``, ``problems`` and ``additive`` run in the trio thread and must be cheap.
    """

    @property
    def blocking(self) -> bool:
        """Its calls do kernel I/O: run them in a dedicated worker thread."""
        ...

    def empty(self) -> D:
        """The desired state before the first pass."""
        ...

    def compile(self, source: V_contra) -> D: ...

    def read(self, desired: D) -> A:
        """Our objects in the kernel now (``desired`` hints where to look)."""
        ...

    def plan(self, desired: D, actual: A) -> list[O]:
        """The ordered operations that turn ``actual`` into ``desired``; [] when equal."""
        ...

    def additive(self, ops: list[O]) -> list[O]:
        """``ops`` without deletions (replacements stay), for the startup grace."""
        ...

    def apply(self, ops: list[O]) -> Outcome:
        """Perform ``ops`` in order; never raises for a refused operation."""
        ...

    def open_monitor(self) -> EventSource | None:
        """A kernel change monitor, or None where there is none (blocking to open)."""
        ...

    def diverges(self, desired: D, event: Any) -> bool:
        """Does this monitor event move the kernel away from ``desired``?"""
        ...

    def problems(self, desired: D) -> list[str]:
        """Input rows that were ignored while compiling ``desired`` (for ``status()``)."""
        ...

    def report(self, desired: D, actual: A) -> dict[str, Any]:
        """What ``inspect()`` shows besides ``status()`` (JSON-ready)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ReconcilerConfig:
    quiescent: float = 0.05
    max_quantum: float = 0.5
    idle_factor: float = 1.0
    """A poke starts a pass at once when the last pass ended at least this many times
    its duration ago (and none runs); else it waits as a burst (``quiescent``)."""
    resync_interval: float = 60.0
    backoff_initial: float = 0.25
    backoff_max: float = 15.0
    startup_grace: float = 15.0
    """Seconds after start during which nothing is deleted, unless ``ready()`` comes first."""
    keep_errors: int = 20
    read_back: bool = False
    """Re-read the kernel after a pass that applied something, for the ``after_pass``
    hook (``PassReport.after``)."""


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


@dataclass(frozen=True, slots=True)
class PassReport(Generic[D, A]):
    """What one pass saw and did, for the ``after_pass`` hook (called in the trio thread)."""

    desired: D
    actual: A
    """The kernel as read before the apply."""
    after: A
    """The kernel after the apply: re-read with ``read_back`` when something was
    applied, else ``actual``."""
    ops: int
    """Operations applied (after the ``additive`` filter)."""
    errors: tuple[str, ...]
    """What went wrong, as ``status()`` shows it (empty: a clean pass)."""
    additive_only: bool


class _Worker:
    """One dedicated thread; ``await run(fn)`` calls fn there and returns its result."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

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


_FULL_READ = frozenset(("start", "resync", "retry", "monitor-overflow", "manual"))
"""Triggers whose pass reads the whole kernel even where a target could read less
(``forget``, optional: ``VxlanTarget`` keeps a notification-fed mirror of the kernel):
the periodic resync is the drift repair that depends on nothing but the kernel."""


class Reconciler(Generic[V, D, A, O]):
    """See the module docstring. ``name`` labels log lines and the worker thread;
    ``after_pass``, if given, is awaited in the trio thread after every pass that got
    through its apply (an exception there fails the pass, like a refused operation)."""

    def __init__(
        self,
        target: Target[V, D, A, O],
        source: Callable[[], V],
        config: ReconcilerConfig | None = None,
        *,
        threaded: bool | None = None,
        wall_clock: Callable[[], float] = time.time,
        name: str = "dataplane",
        after_pass: Callable[[PassReport[D, A]], Awaitable[None]] | None = None,
    ) -> None:
        self.target = target
        self.config = config or ReconcilerConfig()
        self.name = name
        self._source = source
        self._wall = wall_clock
        self._after_pass = after_pass
        self._threaded = target.blocking if threaded is None else threaded
        self._worker: _Worker | None = _Worker(name) if self._threaded else None
        self.counters = Counters()
        self.last = LastPass()
        self.desired: D = target.empty()
        self.actual: A | None = None
        """Kernel state read by the last pass (before its apply)."""
        self.trace: Callable[[str, float, float, float, int], None] | None = None
        """Set while measuring (``bench/propagation.py``): after each pass, its trigger,
        ``time.monotonic()`` at its start, before its apply and after it, and its ops."""
        self._dirty = True  # the first pass runs at once
        self._trigger = "start"
        self._first_poke = -math.inf
        self._last_poke = -math.inf
        self._immediate = False
        """The pending change found the reconciler idle: its pass starts at once."""
        self._quiet_from = -math.inf
        """When the reconciler is idle again after its last pass (``idle_factor``)."""
        self._wake = trio.Event()
        self._next_resync = math.inf
        self._retry_at: float | None = None
        self._backoff = self.config.backoff_initial
        self._passes_done = 0
        self._pass_done = trio.Event()
        self._in_pass = False
        self._ready = False
        self._complete = trio.Event()
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
            self._immediate = not self._in_pass and now >= self._quiet_from
        self._last_poke = now
        self._wake.set()

    def ready(self) -> None:
        """The view is complete: from now on passes may delete (and one runs soon)."""
        if not self._ready:
            self._ready = True
            self._complete.set()
            self._mark("ready")

    async def wait_complete(self) -> None:
        """Return once passes may delete: ``ready()`` was called or the startup grace ended."""
        await self._complete.wait()

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

    async def current_pass_done(self) -> None:
        """Return once no pass that started before this call is still running. A pass
        works from the source it read when it started: a caller that changed the source
        and then the kernel itself (the agent attaching a new endpoint's port) waits this
        out first, so that no pass from before its change undoes it."""
        if self._in_pass:
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
            "problems": list(self.target.problems(self.desired)),
        }

    def _retry_in(self) -> float | None:
        if self._retry_at is None:
            return None
        try:
            return max(0.0, round(self._retry_at - trio.current_time(), 3))
        except RuntimeError:  # called outside trio
            return None

    async def inspect(self) -> dict[str, Any]:
        """The target's report of a fresh kernel read against the desired state (for
        VXLAN, per network), plus ``status()``."""
        desired = self.desired
        actual = await self._call(lambda: self.target.read(desired))
        return {**self.target.report(desired, actual), **self.status()}

    async def pass_now(self, trigger: str = "manual") -> bool:
        """Run one pass at once and say whether it was clean (tests and tools; not
        while ``run`` is active: passes never overlap)."""
        await self._pass(trigger)
        return self.last.ok

    # -- the task -------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        monitor: EventSource | None = None
        try:
            try:
                monitor = await self._call(self.target.open_monitor)
            except Exception as e:  # the reconciler still works, only slower to repair
                log.warning("%s: no kernel monitor (%s); relying on resyncs", self.name, e)
            async with trio.open_nursery() as nursery:
                if monitor is not None:
                    nursery.start_soon(self._watch, monitor)
                task_status.started()
                await self._loop()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                if monitor is not None:
                    monitor.close()
                await self._call(self.target.close)
            if self._worker is not None:
                self._worker.shutdown()

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._worker is None:
            return fn()
        return await self._worker.run(fn)

    async def _watch(self, monitor: EventSource) -> None:
        while True:
            try:
                events = await monitor.next_events()
            except OSError as e:
                log.warning("%s: monitor failed (%s); relying on resyncs", self.name, e)
                return
            if events is None:
                self.counters.monitor_overflows += 1
                self._mark("monitor-overflow")
                continue
            self.counters.monitor_events += len(events)
            desired, diverges = self.desired, self.target.diverges
            if any(diverges(desired, ev) for ev in events):
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
                flush = (
                    self._first_poke
                    if self._immediate
                    else min(self._last_poke + cfg.quiescent, self._first_poke + cfg.max_quantum)
                )
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
                self._complete.set()
            if trigger == "resync":
                self.counters.resyncs += 1
            elif trigger == "retry":
                self.counters.retries += 1
            self._dirty = False
            self._immediate = False
            await self._pass(trigger)

    async def _pass(self, trigger: str) -> None:
        cfg = self.config
        t0 = trio.current_time()
        m0 = time.monotonic()
        self._in_pass = True
        self.last = LastPass(at=self._wall(), trigger=trigger)
        errors: list[str] = []
        ok = False
        try:
            source = self._source()
            full = trigger in _FULL_READ
            desired, actual, ops = await self._call(lambda: self._prepare(source, full))
            self.desired, self.actual = desired, actual
            additive = self.additive_only
            if additive:
                held = len(ops)
                ops = self.target.additive(ops)
                if held != len(ops):
                    log.info("%s: %d deletion(s) held until ready", self.name, held - len(ops))
            m1 = time.monotonic()
            result: Outcome = (
                await self._call(lambda: self.target.apply(ops)) if ops else NothingApplied()
            )
            self.last.ops = len(ops)
            if self.trace is not None:
                self.trace(trigger, m0, m1, time.monotonic(), len(ops))
            self.counters.ops_applied += result.applied
            self.counters.op_errors += len(result.errors)
            errors = [str(e) for e in result.errors[: cfg.keep_errors]]
            if len(result.errors) > cfg.keep_errors:
                errors.append(f"... and {len(result.errors) - cfg.keep_errors} more")
            if result.lost:
                errors.append("netlink replies lost (receive overflow): state re-read next pass")
            ok = result.ok
            if self._after_pass is not None:
                after = actual
                if ops and cfg.read_back:
                    after = await self._call(lambda: self.target.read(desired))
                report = PassReport(desired, actual, after, len(ops), tuple(errors), additive)
                await self._after_pass(report)
        except Exception as e:  # never let a kernel or input problem kill the agent
            errors = [f"{type(e).__name__}: {e}"]
            ok = False
            log.warning("%s: reconcile failed: %s", self.name, errors[0])
        end = trio.current_time()
        self.counters.reconciles += 1
        self.last.duration_s = end - t0
        self.last.ok = ok
        self.last.errors = errors
        self._next_resync = end + cfg.resync_interval
        self._quiet_from = end + cfg.idle_factor * (end - t0)
        if ok:
            self._retry_at = None
            self._backoff = cfg.backoff_initial
        else:
            self.counters.failures += 1
            self._retry_at = end + self._backoff
            self._backoff = min(self._backoff * 2, cfg.backoff_max)
            if errors:
                log.info(
                    "%s: %d error(s), retry in %.2fs: %s",
                    self.name,
                    len(errors),
                    self._retry_at - end,
                    errors[0],
                )
        self._in_pass = False
        self._passes_done += 1
        self._pass_done.set()
        self._pass_done = trio.Event()

    def _prepare(self, source: V, full: bool = False) -> tuple[D, A, list[O]]:
        target = self.target
        forget = getattr(target, "forget", None) if full else None
        if forget is not None:
            forget()
        desired = target.compile(source)
        actual = target.read(desired)
        return desired, actual, target.plan(desired, actual)
