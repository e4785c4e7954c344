"""Dataplane benchmark: bulk FDB + neighbour programming, ours vs iproute2 vs pyroute2.

``python -m bench dataplane [--quick] [--json FILE] [--entries N] [--rounds R]``

In one fresh network namespace (deleted at the end), with one bridge + VXLAN device
made by our LinuxKernel, the desired state of ``dataplane.samples.bulk_view(N, 100)``
(N unicast FDB rows, N permanent neighbours, 100 flood rows; N = 10,000) is
programmed, re-applied unchanged, and deleted, by:

* ours: ``LinuxKernel.read`` + ``plan`` + ``LinuxKernel.apply`` (batched netlink),
  timed end to end (compile is done once, outside the timing, and reported apart);
* iproute2: ``bridge -batch`` (FDB) + ``ip -batch`` (neighbours), process start
  included, the way an operator or a shell-based agent would do it;
* the floor: the same 20,100 messages, packed before the clock starts, sent in the
  same chunks (256 per ``send``) with a non-blocking drain of error replies after
  each, and nothing else: what any netlink client pays the kernel;
* pyroute2, one call per entry (``IPRoute.fdb``/``neigh``, replace semantics); with
  ``--quick`` only 2,000 entries are timed and the figure is scaled linearly.

Each round programs with ours and with iproute2 (alternating which goes first, so
a load change on this shared 2-core machine hits both), checks that the kernel
holds exactly the desired entries after each, then deletes them. Reported figures
are medians over rounds. ``resync_nochange_ms``: a full read (every dump, as the
reconciler's periodic resync does) + plan + apply-nothing with all entries present
(median of many); ``pass_nochange_ms``: a reconciler pass's compile (cached) + read +
plan through ``VxlanTarget`` right after that full read, the read answered from
``LinuxKernel``'s notification-fed mirror (a pass after a table change that changed
nothing in the kernel; ``dataplane/mirror.py``); ``pass_repeat_ms``: the pass after
that (nothing moved since the last pass: the same read object, the plan remembered). ``repair_ms_*``: an entry deleted by hand
(``bridge fdb del`` / ``ip neigh del``), from starting the command (process start
included) until the running Reconciler's repair pass ends (monitor-driven; resync interval 1 h). ``ratios`` = ours / reference:
``bulk_program`` (target <= 1.0) = ours / iproute2 batch program time;
``bulk_vs_floor`` (target <= 1.5) = ours / the floor, on the CPU time of the
sending thread (user + system: rtnetlink runs in the sender's context, so it holds
the kernel's share too), which a shared machine disturbs far less than wall time
(``bulk_vs_floor_wall`` is the same on wall time). ``resync_dump_floor_ms``: the two
dumps of a no-change resync received and dropped unparsed (what the read cannot go
below).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from bench.summary import log, machine, write_json
from dataplane import rtnl
from dataplane.compile import compile as compile_view
from dataplane.kernel import LinuxKernel
from dataplane.model import State
from dataplane.netlink_batch import FDB_SET, FLOOD_ADD, NEIGH_SET, Batcher, Entry
from dataplane.plan import plan
from dataplane.rtnl import NTF_SELF, NUD_NOARP, NUD_PERMANENT
from dataplane.samples import bulk_view
from dataplane.scratch import Scratch, run, skip_reason
from dataplane.target import VxlanTarget

VTEPS = 100
LOCAL = "198.51.100.1"


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Bench:
    def __init__(self, scratch: Scratch, entries: int) -> None:
        self.s = scratch
        self.ns = scratch.add("bench")
        scratch.batch(
            self.ns,
            [
                "link add eth0 type veth peer name eth0p",
                f"addr add {LOCAL}/24 dev eth0",
                "link set eth0 up",
                "link set eth0p up",
            ],
        )
        self.view = view = bulk_view(entries, VTEPS, local_vtep=LOCAL)
        t0 = time.perf_counter()
        self.desired = compile_view(view)
        self.compile_s = time.perf_counter() - t0
        self.devices = State(self.desired.links, self.desired.ports)
        self.kernel = LinuxKernel(self.ns)
        result = self.kernel.apply(plan(self.devices, self.kernel.read(self.devices)))
        if not result.ok:
            raise RuntimeError(f"cannot create devices: {result.errors}")
        (self.vx,) = [n for n, lk in self.desired.links.items() if lk.kind == "vxlan"]
        self.target = VxlanTarget(self.kernel)  # shares the kernel: closed with it
        self.target.compile(view)
        self.workdir = tempfile.mkdtemp(prefix="bench-dataplane-")
        self._write_batches()

    def close(self) -> None:
        self.kernel.close()
        for name in os.listdir(self.workdir):
            os.unlink(os.path.join(self.workdir, name))
        os.rmdir(self.workdir)

    # -- ours ---------------------------------------------------------------------------------
    def ours_to(self, target: State, *, full: bool = False) -> dict[str, float]:
        """Read + plan + apply. ``full``: the read dumps everything (the reconciler's
        periodic resync), else it may come from the kernel's notification-fed mirror
        (a pass after a table change)."""
        if full:
            self.kernel.forget()
        c0 = time.thread_time()
        t0 = time.perf_counter()
        actual = self.kernel.read(target)
        t1 = time.perf_counter()
        ops = plan(target, actual)
        t2 = time.perf_counter()
        result = self.kernel.apply(ops) if ops else None
        t3 = time.perf_counter()
        c3 = time.thread_time()
        if result is not None and not result.ok:
            raise RuntimeError(f"apply failed: {result.errors[:3]}")
        return {
            "total": t3 - t0,
            "cpu": c3 - c0,
            "read": t1 - t0,
            "plan": t2 - t1,
            "apply": t3 - t2,
            "ops": len(ops),
        }

    def target_pass(self) -> dict[str, float]:
        """What a reconciler pass does before applying, through ``VxlanTarget``: compile
        (the view is unchanged: cached), read (from the mirror), plan."""
        target = self.target
        c0, t0 = time.thread_time(), time.perf_counter()
        desired = target.compile(self.view)
        actual = target.read(desired)
        t1 = time.perf_counter()
        ops = target.plan(desired, actual)
        t2, c2 = time.perf_counter(), time.thread_time()
        return {"total": t2 - t0, "cpu": c2 - c0, "read": t1 - t0, "plan": t2 - t1, "ops": len(ops)}

    def entries_now(self) -> int:
        return self.kernel.read(self.devices).entry_count()

    def check_exact(self, what: str) -> None:
        actual = self.kernel.read(self.desired)
        if (actual.fdb, actual.flood, actual.neigh) != (
            self.desired.fdb,
            self.desired.flood,
            self.desired.neigh,
        ):
            raise RuntimeError(f"{what}: kernel does not hold exactly the desired entries")

    # -- the floor: pre-packed messages, sent and nothing else --------------------------------------
    def floor_chunks(self) -> list[bytes]:
        """The messages ours sends for a full program, packed once (outside any timing)."""
        sock = self.kernel.sock
        vx = self.kernel.ifindex(self.vx)
        if vx is None:
            raise RuntimeError(f"{self.vx} has no ifindex")
        d = self.desired
        entries: list[Entry] = [(FLOOD_ADD, vx, dst, "") for (_, dst) in d.flood]
        entries += [(FDB_SET, vx, mac, dst) for (_, mac), dst in d.fdb.items()]
        entries += [(NEIGH_SET, vx, ip, mac) for (_, ip), mac in d.neigh.items()]
        chunk = self.kernel.chunk
        batcher = Batcher(sock, chunk)
        return [
            bytes(batcher.encode(entries[i : i + chunk], sock.next_seq(len(entries[i : i + chunk]))))
            for i in range(0, len(entries), chunk)
        ]

    def quiet(self) -> contextlib.AbstractContextManager[None]:
        """No notification listener of ours in the namespace (the floor and iproute2
        legs): ours mutes its mirror around a big apply too, so every leg pays the
        kernel for the same listeners (none)."""
        mirror = self.kernel.mirror

        @contextlib.contextmanager
        def muted() -> Iterator[None]:
            if mirror is None:
                yield
                return
            mirror.mute()
            try:
                yield
            finally:
                mirror.unmute()

        return muted()

    def floor(self, chunks: list[bytes]) -> dict[str, float]:
        with self.quiet():
            return self._floor(chunks)

    def _floor(self, chunks: list[bytes]) -> dict[str, float]:
        sock = self.kernel.sock.sock
        refused = 0
        c0 = time.thread_time()
        t0 = time.perf_counter()
        for buf in chunks:
            sock.send(buf)
            while True:  # error replies are queued by the time send returns
                try:
                    refused += len(sock.recv(1 << 20, socket.MSG_DONTWAIT))
                except BlockingIOError:
                    break
        t1 = time.perf_counter()
        c1 = time.thread_time()
        if refused:
            raise RuntimeError("the kernel refused messages of the floor leg")
        return {"total": t1 - t0, "cpu": c1 - c0}

    def dump_floor(self) -> tuple[float, float]:
        """Seconds (wall, CPU) to receive a no-change resync's two entry dumps, parsing nothing."""
        sock = self.kernel.sock
        vx = self.kernel.ifindex(self.vx)
        assert vx is not None

        def until_done(buf: bytes) -> bool:
            # NLMSG_DONE is the last message of the dump's last buffer, 20 bytes when it
            # carries no extended ack; a small buffer (where a longer DONE would be) is
            # walked. No per-entry work: this is the floor.
            if len(buf) >= 20:
                length, mtype, _f, _seq, _pid = rtnl.HDR.unpack_from(buf, len(buf) - 20)
                if length == 20 and mtype == rtnl.NLMSG_DONE:
                    return True
            if len(buf) <= 4096:
                return any(m[2] == rtnl.NLMSG_DONE for m in rtnl.messages(buf))
            return False

        c0, t0 = time.thread_time(), time.perf_counter()
        sock.dump(rtnl.RTM_GETNEIGH, rtnl.fdb_dump_body(vx), until_done)
        sock.dump(rtnl.RTM_GETNEIGH, rtnl.neigh_dump_body(vx), until_done)
        return time.perf_counter() - t0, time.thread_time() - c0

    # -- iproute2 -------------------------------------------------------------------------------
    def _write_batches(self) -> None:
        d, vx = self.desired, self.vx
        fdb = [f"fdb append 00:00:00:00:00:00 dev {vx} dst {dst}" for (_, dst) in d.flood]
        fdb += [
            f"fdb replace {mac} dev {vx} dst {dst} self permanent"
            for (_, mac), dst in d.fdb.items()
        ]
        neigh = [
            f"neigh replace {ip} lladdr {mac} dev {vx} nud permanent"
            for (_, ip), mac in d.neigh.items()
        ]
        fdb_del = [f"fdb del 00:00:00:00:00:00 dev {vx} dst {dst} self" for (_, dst) in d.flood]
        fdb_del += [f"fdb del {mac} dev {vx} self" for (_, mac) in d.fdb]
        neigh_del = [f"neigh del {ip} dev {vx}" for (_, ip) in d.neigh]
        for name, lines in (
            ("fdb", fdb),
            ("neigh", neigh),
            ("fdb_del", fdb_del),
            ("neigh_del", neigh_del),
        ):
            with open(os.path.join(self.workdir, name), "w", encoding="ascii") as f:
                f.write("".join(f"{x}\n" for x in lines))

    def iproute2(self, fdb: str, neigh: str) -> dict[str, float]:
        with self.quiet():
            return self._iproute2(fdb, neigh)

    def _iproute2(self, fdb: str, neigh: str) -> dict[str, float]:
        t_fdb = timed(
            lambda: run(["bridge", "-n", self.ns, "-batch", os.path.join(self.workdir, fdb)])
        )
        t_neigh = timed(
            lambda: run(["ip", "-n", self.ns, "-batch", os.path.join(self.workdir, neigh)])
        )
        return {"total": t_fdb + t_neigh, "bridge": t_fdb, "ip": t_neigh}

    # -- pyroute2, one call per entry ----------------------------------------------------------------
    def pyroute2_percall(self, limit: int | None) -> dict[str, float]:
        from pyroute2 import IPRoute

        d = self.desired
        flood = list(d.flood)
        fdb = list(d.fdb.items())
        neigh = list(d.neigh.items())
        total = len(flood) + len(fdb) + len(neigh)
        if limit is not None and limit < total:
            # Same mix as the full set, scaled down.
            scale = limit / total
            flood, fdb, neigh = (
                flood[: max(1, round(len(flood) * scale))],
                fdb[: round(len(fdb) * scale)],
                neigh[: round(len(neigh) * scale)],
            )
        done = len(flood) + len(fdb) + len(neigh)
        state = NUD_PERMANENT | NUD_NOARP
        with IPRoute(netns=self.ns, flags=0) as ipr:
            (index,) = ipr.link_lookup(ifname=self.vx)
            t0 = time.perf_counter()
            for _, dst in flood:
                ipr.fdb("append", ifindex=index, lladdr="00:00:00:00:00:00", dst=dst)
            for (_, mac), dst in fdb:
                ipr.fdb("replace", ifindex=index, lladdr=mac, dst=dst, flags=NTF_SELF, state=state)
            for (_, ip), mac in neigh:
                ipr.neigh("replace", ifindex=index, dst=ip, lladdr=mac, state=NUD_PERMANENT)
            elapsed = time.perf_counter() - t0
        return {
            "measured_entries": done,
            "measured": elapsed,
            "scaled_total": elapsed * total / done,
        }


def repair_latency(b: Bench, samples: int) -> list[float]:
    """Seconds from starting an operator's ``bridge fdb del`` / ``ip neigh del`` to the
    end of the reconciler pass that put the entry back (monitor-driven: the periodic
    resync is set to an hour). All entries programmed, reconciler threaded.

    From the command's start, not its exit: a pass that starts at once (the reconciler
    was idle) often ends before trio has reaped the process, so the end of each pass is
    taken from the reconciler's ``trace`` hook rather than by waiting for a next pass."""
    import trio

    from dataplane.reconciler import ReconcilerConfig
    from dataplane.target import VxlanReconciler

    fdb_keys = list(b.desired.fdb)
    neigh_keys = list(b.desired.neigh)
    out: list[float] = []
    ends: list[tuple[float, str, int]] = []

    def repaired(since: int) -> float | None:
        return next((end for end, trigger, ops in ends[since:] if trigger == "kernel-changed" and ops), None)

    async def main() -> None:
        rec = VxlanReconciler(VxlanTarget(LinuxKernel(b.ns)), lambda: b.view, ReconcilerConfig(resync_interval=3600))
        rec.trace = lambda trigger, _start, _apply, end, ops: ends.append((end, trigger, ops))
        rec.ready()
        async with trio.open_nursery() as nursery:
            await nursery.start(rec.run)
            await rec.settled()
            for i in range(samples):
                if i % 2 == 0:
                    dev, mac = fdb_keys[i * 7919 % len(fdb_keys)]
                    argv = ["bridge", "-n", b.ns, "fdb", "del", mac, "dev", dev, "self"]
                else:
                    dev, ip = neigh_keys[i * 7919 % len(neigh_keys)]
                    argv = ["ip", "-n", b.ns, "neigh", "del", ip, "dev", dev]
                since = len(ends)
                t0 = time.monotonic()
                await trio.run_process(argv)
                with trio.fail_after(30):
                    while (end := repaired(since)) is None:
                        await rec.next_pass()
                if not rec.last.ok:
                    raise RuntimeError(f"repair pass failed: {rec.last.errors[:3]}")
                out.append(end - t0)
                await trio.sleep(0.2)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return out


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run_bench(
    entries: int, rounds: int, resyncs: int, percall_limit: int | None, repair_samples: int
) -> dict[str, Any]:
    with Scratch() as scratch:
        bench = Bench(scratch, entries)
        try:
            return measure(bench, rounds, resyncs, percall_limit, repair_samples)
        finally:
            bench.close()


def measure(
    b: Bench, rounds: int, resyncs: int, percall_limit: int | None, repair_samples: int
) -> dict[str, Any]:
    ours_prog: list[dict[str, float]] = []
    ours_del: list[dict[str, float]] = []
    ipr2_prog: list[dict[str, float]] = []
    ipr2_del: list[dict[str, float]] = []
    resync: list[dict[str, float]] = []
    passes: list[dict[str, float]] = []
    repeats: list[dict[str, float]] = []
    floor: list[dict[str, float]] = []
    dump_floor: list[tuple[float, float]] = []
    chunks = b.floor_chunks()
    legs = ("ours", "floor", "iproute2")
    for r in range(rounds):
        order = legs[r % 3 :] + legs[: r % 3]  # each leg goes first in turn
        for who in order:
            if b.entries_now():
                raise RuntimeError("entries left over before a round")
            if who == "ours":
                ours_prog.append(b.ours_to(b.desired))
                b.check_exact("ours")
                b.ours_to(b.desired)  # the read after a big apply is a full one
                for _ in range(max(3, resyncs // rounds)):
                    res = b.ours_to(b.desired, full=True)
                    nochange = b.target_pass()
                    repeat = b.target_pass()
                    if res["ops"] or nochange["ops"] or repeat["ops"]:
                        raise RuntimeError("no-change resync produced operations")
                    resync.append(res)
                    passes.append(nochange)
                    repeats.append(repeat)
                    dump_floor.append(b.dump_floor())
                ours_del.append(b.ours_to(b.devices))
            elif who == "floor":
                floor.append(b.floor(chunks))
                b.check_exact("floor")
                b.ours_to(b.devices)
            else:
                ipr2_prog.append(b.iproute2("fdb", "neigh"))
                b.check_exact("iproute2")
                ipr2_del.append(b.iproute2("fdb_del", "neigh_del"))
        log(
            f"round {r + 1}/{rounds}: ours {ms(ours_prog[-1]['total'])} ms, "
            f"floor {ms(floor[-1]['total'])} ms, iproute2 {ms(ipr2_prog[-1]['total'])} ms"
        )
    repairs = repair_latency(b, repair_samples)
    b.ours_to(b.devices)
    percall = b.pyroute2_percall(percall_limit)
    b.ours_to(b.devices)  # clean up what the per-call run wrote
    d = b.desired

    def med(rows: list[dict[str, float]], key: str = "total") -> float:
        return ms(median([x[key] for x in rows]))

    results: dict[str, Any] = {
        "ours_program_ms": med(ours_prog),
        "ours_program_read_ms": med(ours_prog, "read"),
        "ours_program_plan_ms": med(ours_prog, "plan"),
        "ours_program_apply_ms": med(ours_prog, "apply"),
        "ours_program_runs_ms": [ms(x["total"]) for x in ours_prog],
        "ours_program_cpu_ms": med(ours_prog, "cpu"),
        "floor_program_ms": med(floor),
        "floor_program_cpu_ms": med(floor, "cpu"),
        "floor_program_runs_ms": [ms(x["total"]) for x in floor],
        "iproute2_batch_program_ms": med(ipr2_prog),
        "iproute2_bridge_batch_ms": med(ipr2_prog, "bridge"),
        "iproute2_ip_batch_ms": med(ipr2_prog, "ip"),
        "iproute2_batch_program_runs_ms": [ms(x["total"]) for x in ipr2_prog],
        "pyroute2_percall_program_ms": ms(percall["scaled_total"]),
        "pyroute2_percall_measured_entries": int(percall["measured_entries"]),
        "pyroute2_percall_measured_ms": ms(percall["measured"]),
        "pyroute2_percall_us_per_entry": round(
            percall["measured"] / percall["measured_entries"] * 1e6, 1
        ),
        "resync_nochange_ms": med(resync),
        "resync_nochange_min_ms": ms(min(x["total"] for x in resync)),
        "resync_nochange_read_ms": med(resync, "read"),
        "resync_nochange_plan_ms": med(resync, "plan"),
        "resync_nochange_runs": len(resync),
        "resync_nochange_cpu_ms": med(resync, "cpu"),
        "pass_nochange_ms": med(passes),
        "pass_nochange_cpu_ms": med(passes, "cpu"),
        "pass_nochange_min_ms": ms(min(x["total"] for x in passes)),
        "pass_nochange_read_ms": med(passes, "read"),
        "pass_nochange_plan_ms": med(passes, "plan"),
        "pass_repeat_ms": med(repeats),
        "pass_repeat_cpu_ms": med(repeats, "cpu"),
        "resync_dump_floor_ms": ms(median([w for w, _ in dump_floor])),
        "resync_dump_floor_cpu_ms": ms(median([c for _, c in dump_floor])),
        "ours_delete_all_ms": med(ours_del),
        "iproute2_batch_delete_ms": med(ipr2_del),
        "compile_ms": ms(b.compile_s),
        "repair_ms_median": ms(median(repairs)),
        "repair_ms_max": ms(max(repairs)),
        "repair_samples": len(repairs),
    }
    return {
        "benchmark": "dataplane",
        "entries": {
            "fdb": len(d.fdb),
            "flood": len(d.flood),
            "neigh": len(d.neigh),
            "total": d.entry_count(),
        },
        "rounds": len(ours_prog),
        "results": results,
        "ratios": {
            "bulk_program": round(
                results["ours_program_ms"] / results["iproute2_batch_program_ms"], 3
            ),
            "bulk_vs_floor": round(
                results["ours_program_cpu_ms"] / results["floor_program_cpu_ms"], 3
            ),
            "bulk_vs_floor_wall": round(results["ours_program_ms"] / results["floor_program_ms"], 3),
            "delete_all": round(
                results["ours_delete_all_ms"] / results["iproute2_batch_delete_ms"], 3
            ),
            "vs_pyroute2_percall": round(
                results["ours_program_ms"] / results["pyroute2_percall_program_ms"], 4
            ),
        },
        "targets": {
            "bulk_program": 1.0,
            "bulk_vs_floor": 1.5,
            "resync_nochange_ms": 15.0,
            "pass_nochange_ms": 15.0,
        },
    }


def table(report: dict[str, Any]) -> str:
    r = report["results"]
    e = report["entries"]
    rows = [
        (
            "program (fdb+flood+neigh)",
            r["ours_program_ms"],
            r["iproute2_batch_program_ms"],
            r["pyroute2_percall_program_ms"],
        ),
        ("program, CPU ms", r["ours_program_cpu_ms"], None, None),
        ("delete all", r["ours_delete_all_ms"], r["iproute2_batch_delete_ms"], None),
        ("resync (full read), no change", r["resync_nochange_ms"], None, None),
        ("pass (mirror), no change", r["pass_nochange_ms"], None, None),
    ]
    out = [
        f"dataplane: {e['total']} entries ({e['fdb']} FDB + {e['flood']} flood + {e['neigh']} neighbours), "
        f"median of {report['rounds']} rounds, ms",
        f"{'':28}{'ours':>10}{'iproute2 batch':>16}{'pyroute2 per call':>19}",
    ]
    for name, a, b, c in rows:
        out.append(
            f"{name:28}{a:>10.1f}{'' if b is None else f'{b:.1f}':>16}{'' if c is None else f'{c:.0f}':>19}"
        )
    pc = (
        "scaled from " + str(r["pyroute2_percall_measured_entries"])
        if r["pyroute2_percall_measured_entries"] < e["total"]
        else "measured"
    )
    out.append(
        f"ours program = read {r['ours_program_read_ms']} + plan {r['ours_program_plan_ms']} + "
        f"apply {r['ours_program_apply_ms']}; resync min {r['resync_nochange_min_ms']} "
        f"(read {r['resync_nochange_read_ms']}, plan {r['resync_nochange_plan_ms']}); pyroute2 {pc}, "
        f"{r['pyroute2_percall_us_per_entry']} us/entry; compile (not timed above) {r['compile_ms']}"
    )
    out.append(
        f"floor (same {e['total']} messages pre-packed, sent in the same chunks, nothing else): "
        f"{r['floor_program_ms']} ms wall, {r['floor_program_cpu_ms']} ms CPU; "
        f"no-change resync {r['resync_nochange_ms']} ms ({r['resync_nochange_cpu_ms']} ms CPU), "
        f"the bare dumps alone {r['resync_dump_floor_ms']} ms ({r['resync_dump_floor_cpu_ms']} ms CPU)"
    )
    out.append(
        f"entry deleted by hand -> restored by the reconciler (monitor): median "
        f"{r['repair_ms_median']} ms, max {r['repair_ms_max']} ms over {r['repair_samples']}"
    )
    ratios = report["ratios"]
    out.append(
        f"ratios (ours/reference): bulk_program {ratios['bulk_program']} (target <= 1.0), "
        f"bulk_vs_floor {ratios['bulk_vs_floor']} CPU / {ratios['bulk_vs_floor_wall']} wall "
        f"(target <= 1.5), "
        f"delete_all {ratios['delete_all']}, vs pyroute2 per call {ratios['vs_pyroute2_percall']}; "
        f"resync_nochange_ms {r['resync_nochange_ms']} (target <= 15); "
        f"pass_nochange_ms {r['pass_nochange_ms']} ({r['pass_nochange_cpu_ms']} CPU; read "
        f"{r['pass_nochange_read_ms']}, plan {r['pass_nochange_plan_ms']}); the next pass, "
        f"nothing moved since: {r['pass_repeat_ms']} ({r['pass_repeat_cpu_ms']} CPU)"
    )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench dataplane", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--quick", action="store_true", help="fewer rounds; pyroute2 per-call on 2,000 entries"
    )
    ap.add_argument("--json", metavar="FILE", help="write raw figures and ratios here")
    ap.add_argument("--entries", type=int, default=10_000, help="remote endpoints (default 10000)")
    ap.add_argument(
        "--rounds", type=int, help="program/delete rounds per variant (default 5, quick 3)"
    )
    args = ap.parse_args(argv)
    reason = skip_reason()
    if reason:
        print(f"bench dataplane: cannot run: {reason}", file=sys.stderr)
        return 1
    if args.entries < 10:
        print("bench dataplane: --entries must be at least 10", file=sys.stderr)
        return 2
    rounds = args.rounds or (3 if args.quick else 5)
    report = run_bench(
        args.entries,
        rounds,
        10 if args.quick else 20,
        2000 if args.quick else None,
        6 if args.quick else 20,
    )
    report["quick"] = args.quick
    report["command"] = "python -m bench dataplane" + (" --quick" if args.quick else "")
    report["machine"] = machine()
    print(table(report))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
