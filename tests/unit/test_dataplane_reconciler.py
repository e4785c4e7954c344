"""Reconciler under trio with a FakeKernel: coalescing, repair, resync, retry, status."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio
import trio.testing

from dataplane.compile import compile
from dataplane.fake import FakeKernel
from dataplane.model import Link, OverlayView, State
from dataplane.plan import FdbSet, plan
from dataplane.reconciler import PassReport, ReconcilerConfig
from dataplane.report import render_text
from dataplane.samples import bulk_view
from dataplane.target import VxlanReconciler, VxlanTarget

VX, BR = "ov-vx-4242", "ov-br-4242"


class Views:
    """A mutable source of views, like the agent's tables."""

    def __init__(self, view: OverlayView) -> None:
        self.view = view
        self.calls = 0

    def __call__(self) -> OverlayView:
        self.calls += 1
        return self.view


@asynccontextmanager
async def running(
    kernel: FakeKernel,
    views: Callable[[], OverlayView],
    ready: bool = True,
    pass_cost: float = 0.0,
    **cfg: float,
) -> AsyncIterator[VxlanReconciler]:
    """A running reconciler; ``pass_cost``: virtual seconds each pass takes (a pass of
    the FakeKernel otherwise takes none on the mock clock)."""

    async def cost(_: PassReport[State, State]) -> None:
        await trio.sleep(pass_cost)

    rec = VxlanReconciler(VxlanTarget(kernel), views, ReconcilerConfig(**cfg), threaded=False,  # type: ignore[arg-type]
                          after_pass=cost if pass_cost else None)
    if ready:  # the tables are complete from the start (tests of the steady state)
        rec.ready()
    async with trio.open_nursery() as nursery:
        await nursery.start(rec.run)
        yield rec
        nursery.cancel_scope.cancel()


def in_sync(kernel: FakeKernel, view: OverlayView) -> bool:
    desired = compile(view)
    return plan(desired, kernel.read(desired)) == []


async def test_first_pass_programs_everything_and_adopts_what_exists(
    autojump_clock: trio.testing.MockClock,
) -> None:
    view = bulk_view(50, 5)
    kernel = FakeKernel()
    async with running(kernel, Views(view)) as rec:
        await trio.sleep(0.1)
        assert in_sync(kernel, view)
        assert rec.counters.reconciles == 1 and rec.last.ok and rec.last.ops == 2 + 5 + 50 + 50
    assert kernel.closed
    # A restarted agent finds everything in place and writes nothing.
    kernel.closed = False
    async with running(kernel, Views(view)) as rec:
        await trio.sleep(0.1)
        assert rec.last.ops == 0 and rec.counters.reconciles == 1


async def test_a_restarted_agent_deletes_nothing_until_its_view_is_ready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    full = bulk_view(20, 4)
    kernel = FakeKernel()
    kernel.load(compile(full))  # what the previous run left: all still forwarding
    kernel.create_link(Link("ov-br-7", "bridge", 1450))  # a network deleted meanwhile
    partial = Views(replace(full, endpoints=full.endpoints[:5]))  # tables not synced yet
    async with running(kernel, partial, ready=False, startup_grace=15.0) as rec:
        await trio.sleep(1.0)
        assert rec.additive_only and rec.status()["additive_only"]
        assert kernel.read().entry_count() == compile(full).entry_count()  # nothing removed
        partial.view = full
        rec.poke()
        await trio.sleep(0.1)
        rec.ready()
        await trio.sleep(0.1)
        assert not rec.additive_only
        assert "ov-br-7" not in kernel.links and in_sync(kernel, full)
    # Nobody says "ready": the grace period ends and deletions go through.
    kernel.create_link(Link("ov-br-7", "bridge", 1450))
    async with running(kernel, Views(full), ready=False, startup_grace=15.0) as rec:
        with trio.move_on_after(10):
            await rec.wait_complete()
        assert "ov-br-7" in kernel.links and rec.additive_only
        await rec.wait_complete()  # the grace ends (what the XFRM reconciler follows)
        assert trio.current_time() >= 15 and not rec.additive_only
        await trio.sleep(1)
        assert "ov-br-7" not in kernel.links


async def test_a_burst_of_pokes_is_coalesced(autojump_clock: trio.testing.MockClock) -> None:
    views = Views(bulk_view(10, 2))
    kernel = FakeKernel()
    # Passes of 2 ms: idle again 2 ms after one ends (idle_factor 1).
    async with running(kernel, views, pass_cost=0.002, quiescent=0.05, max_quantum=0.5) as rec:
        await trio.sleep(0.1)
        start = rec.counters.reconciles
        # The first poke finds the reconciler idle: its pass starts at once, with no
        # coalescing window (the pass is done when its own 2 ms are).
        t0 = trio.current_time()
        rec.poke()
        await rec.next_pass()
        assert trio.current_time() - t0 == pytest.approx(0.002)
        assert rec.counters.reconciles == start + 1
        # The rest of the burst comes during activity: one more pass for all 99.
        for _ in range(99):
            rec.poke()
            await trio.sleep(0.001)
        await trio.sleep(0.2)
        assert rec.counters.reconciles == start + 2
        # Pokes that never stop: one pass at once (idle again), then one every
        # max_quantum.
        t0 = trio.current_time()
        while trio.current_time() - t0 < 2.0:
            rec.poke()
            await trio.sleep(0.001)
        assert 4 <= rec.counters.reconciles - start - 2 <= 5


async def test_a_poke_soon_after_a_pass_waits_for_the_quiet_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Idle means no pass runs and the last one ended ``idle_factor`` times its duration
    ago: a poke sooner is coalesced (flushed ``quiescent`` after it), one later is not."""
    kernel = FakeKernel()
    async with running(
        kernel, Views(bulk_view(10, 2)), pass_cost=0.01, quiescent=0.05, idle_factor=4.0
    ) as rec:
        await trio.sleep(0.1)
        rec.poke()
        await rec.next_pass()
        await trio.sleep(0.03)  # < 4 x 10 ms
        t0 = trio.current_time()
        rec.poke()
        await rec.next_pass()
        assert trio.current_time() - t0 == pytest.approx(0.05 + 0.01)
        await trio.sleep(0.041)  # > 4 x 10 ms
        t0 = trio.current_time()
        rec.poke()
        await rec.next_pass()
        assert trio.current_time() - t0 == pytest.approx(0.01)


async def test_table_changes_reach_the_kernel_after_a_poke(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views = Views(bulk_view(10, 2))
    kernel = FakeKernel()
    async with running(kernel, views, resync_interval=3600) as rec:
        await trio.sleep(0.1)
        views.view = bulk_view(20, 3)
        rec.poke("endpoints")
        await trio.sleep(0.1)
        assert in_sync(kernel, views.view)
        assert rec.last.trigger == "endpoints"
        views.view = replace(
            views.view, endpoints=views.view.endpoints[1:]
        )  # last local endpoint gone
        await rec.settled()
        assert kernel.read().links == {} and kernel.read().entry_count() == 0


async def test_entries_removed_by_an_operator_are_restored_within_a_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    view = bulk_view(10, 2)
    kernel = FakeKernel()
    async with running(kernel, Views(view), resync_interval=3600) as rec:
        await trio.sleep(0.1)
        mac, dst = next(iter((k[1], v) for k, v in kernel.fdb.items()))
        kernel.operator_delete_fdb(VX, mac)
        kernel.operator_set_neigh(VX, "10.64.0.16", "02:00:00:00:00:66")
        assert not in_sync(kernel, view)
        with trio.fail_after(1.0):  # virtual time: the monitor path, not the 1 h resync
            while not in_sync(kernel, view):
                await rec.next_pass()
        assert kernel.fdb[(VX, mac)] == dst
        assert rec.counters.monitor_repairs >= 1 and rec.last.trigger == "kernel-changed"
        # The operator deletes the whole VXLAN device: it comes back with its entries.
        kernel.operator_delete_link(VX)
        await trio.sleep(1.0)
        assert in_sync(kernel, view)


async def test_our_own_writes_do_not_trigger_more_passes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kernel = FakeKernel()
    async with running(kernel, Views(bulk_view(100, 4)), resync_interval=3600) as rec:
        await trio.sleep(2.0)
        assert rec.counters.reconciles == 1
        assert rec.counters.monitor_events >= 200 and rec.counters.monitor_repairs == 0


async def test_operator_objects_are_left_alone(autojump_clock: trio.testing.MockClock) -> None:
    view = bulk_view(10, 2)
    kernel = FakeKernel()
    kernel.create_link(Link("opbr0", "bridge", 1500))
    kernel.fdb[("opbr0", "02:00:00:00:00:01")] = "192.0.2.9"
    async with running(kernel, Views(view), resync_interval=1.0):
        kernel.operator_add_link(Link("tap0", "tun", 1500, BR))
        await trio.sleep(3.5)
        assert kernel.links["tap0"].master == BR
        assert kernel.fdb[("opbr0", "02:00:00:00:00:01")] == "192.0.2.9"


async def test_silent_drift_is_repaired_by_the_periodic_resync(
    autojump_clock: trio.testing.MockClock,
) -> None:
    view = bulk_view(10, 2)
    kernel = FakeKernel()
    async with running(kernel, Views(view), resync_interval=30.0) as rec:
        await trio.sleep(0.1)
        key = next(iter(kernel.neigh))
        del kernel.neigh[key]  # no event: a lost notification
        await trio.sleep(20)
        assert key not in kernel.neigh
        await trio.sleep(11)
        assert key in kernel.neigh and rec.counters.resyncs >= 1


async def test_monitor_overflow_forces_a_resync(autojump_clock: trio.testing.MockClock) -> None:
    view = bulk_view(10, 2)
    kernel = FakeKernel()
    rec = VxlanReconciler(VxlanTarget(kernel), Views(view), ReconcilerConfig(resync_interval=3600), threaded=False)
    kernel_open = kernel.open_monitor
    kernel.open_monitor = lambda capacity=2: kernel_open(2)  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(rec.run)
        await trio.sleep(0.1)
        for key in list(kernel.fdb)[:5]:
            del kernel.fdb[key]
        kernel.operator_delete_neigh(
            *next(iter(kernel.neigh))
        )  # one event, but the queue overflowed
        kernel.operator_delete_neigh(*next(iter(kernel.neigh)))
        kernel.operator_delete_neigh(*next(iter(kernel.neigh)))
        await trio.sleep(0.5)
        assert rec.counters.monitor_overflows >= 1
        assert in_sync(kernel, view)
        nursery.cancel_scope.cancel()


async def test_failures_are_retried_with_backoff_until_they_succeed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    view = bulk_view(10, 2)
    kernel = FakeKernel()
    kernel.fail(FdbSet, errno.EBUSY, times=3)
    kernel.fail_reads(2)
    async with running(kernel, Views(view), resync_interval=3600, backoff_initial=0.25) as rec:
        await trio.sleep(0.01)
        assert rec.counters.failures == 1 and "injected read failure" in rec.last.errors[0]
        await trio.sleep(10)
        assert in_sync(kernel, view)
        assert rec.last.ok and rec.counters.failures == 3 and rec.counters.retries == 3
        assert rec.counters.op_errors == 3  # three FdbSet refused in one pass
        status = rec.status()
        assert status["last_reconcile"]["ok"] and status["retry_in_s"] is None


async def test_bad_configuration_is_reported_not_raised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kernel = FakeKernel()
    views = Views(replace(bulk_view(3, 1), local_vtep="not-an-address"))
    async with running(kernel, views) as rec:
        await trio.sleep(1.0)
        assert not rec.last.ok and "ValueError" in rec.last.errors[0]
        views.view = bulk_view(3, 1)
        await trio.sleep(5.0)
        assert rec.last.ok and in_sync(kernel, views.view)


async def test_inspect_reports_kernel_vs_desired_per_network(
    autojump_clock: trio.testing.MockClock,
) -> None:
    view = bulk_view(10, 2)
    kernel = FakeKernel()
    async with running(kernel, Views(view), resync_interval=3600) as rec:
        await trio.sleep(0.1)
        report = await rec.inspect()
        (row,) = report["networks"]
        assert row["network"] == "bulk" and row["vni"] == 4242 and row["in_sync"]
        assert row["kernel"] == row["desired"] == {"fdb": 10, "flood": 2, "neigh": 10}
        del kernel.fdb[next(iter(kernel.fdb))]  # silently
        report = await rec.inspect()
        (row,) = report["networks"]
        assert not row["in_sync"] and row["missing"]["fdb"] == 1
        text = render_text(report)
        assert "DIFFERS" in text and "9/10" in text and "4242" in text
        assert report["counters"]["reconciles"] == 1


async def test_settled_waits_for_a_fresh_pass(autojump_clock: trio.testing.MockClock) -> None:
    views = Views(bulk_view(5, 1))
    kernel = FakeKernel()
    async with running(kernel, views) as rec:
        views.view = bulk_view(8, 2)
        await rec.settled()
        assert in_sync(kernel, views.view)


async def test_after_pass_sees_the_kernel_before_and_after_the_apply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports: list[PassReport[State, State]] = []

    async def seen(report: PassReport[State, State]) -> None:
        reports.append(report)

    view = bulk_view(5, 1)
    kernel = FakeKernel()
    rec = VxlanReconciler(VxlanTarget(kernel), Views(view), ReconcilerConfig(read_back=True),
                          threaded=False, after_pass=seen)
    assert await rec.pass_now()  # additive (not ready): adds only, which is all there is
    first = reports[0]
    assert first.additive_only and first.ops == rec.last.ops > 0 and first.errors == ()
    assert first.actual.entry_count() == 0 and first.after == kernel.read(first.desired)
    rec.ready()
    assert await rec.pass_now()
    assert reports[1].ops == 0 and reports[1].after is reports[1].actual
    assert not reports[1].additive_only
