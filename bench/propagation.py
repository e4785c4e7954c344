"""Propagation benchmark: ``endpoint create`` on one host -> FDB + neighbour entries on another.

``python -m bench propagation [--quick] [--json FILE] [--hosts H] [--endpoints N]``

A namespace lab (``agent.lab.netlab``) of H hosts (default 10) runs real ``overlay-agent``
processes; host0 creates a network and every host one endpoint on it first (a host
takes part in a network's gossip only while it has an endpoint there, like Docker).
Then N endpoints (default 100) are created one at a time, round-robin on hosts 1..H-1,
through the control socket (what ``agentctl endpoint create`` sends). The observer is
host0: a netlink monitor in its namespace (RTNLGRP_NEIGH) timestamps the arrival of
the unicast FDB row (MAC -> the creating host's VTEP) and of the permanent neighbour
(IP -> MAC) on host0's VXLAN device. A sample is the time from sending the create
request to both entries being present on host0. At the end host0's kernel is read
back and must hold exactly the expected entries.

Figures: ``p50_ms``, ``p99_ms`` (raw), min/mean/max, the samples; ``ratios.p99_vs_target``
= p99 / the target (issue 17: 250 ms up to 10 hosts, 400 ms above, set for 30);
``breakdown``: where each millisecond goes, p50/p99 per stage (control request, table
write, gossip wait, receive, coalescing, plan, netlink; ``bench.propagation_stages``),
from the stage marks the agents log at ``--log-level debug``. ``--quick``: 5 hosts
(the report's ``hosts`` says so), 30 endpoints (< 60 s). Needs root.

Owns: the benchmark's steps, the observer on host0 and the JSON report. Does not:
import the agent's runtime modules (it drives the installed programs like a user,
through ``agent.lab``) or build the lab (``agent.lab.netlab``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import trio

from agent.lab.agentnode import ControlClient, agent_argv
from agent.lab.netlab import Lab, LabError, LabProc
from bench.propagation_stages import Marks, breakdown, parse_marks, summarize
from bench.propagation_stages import percentile as percentile  # bench.dns imports it from here
from bench.summary import log, machine, write_json
from dataplane.events import FdbEvent, NeighEvent
from dataplane.kernel import LinuxKernel
from dataplane.monitor import NetlinkMonitor

PREFIX = "ov-"
SUBNET = "10.128.0.0/16"
WAIT = 60.0


def target_p99_ms(hosts: int) -> float:
    """Issue 17's targets: p99 <= 250 ms at 10 hosts, <= 400 ms at 30."""
    return 250.0 if hosts <= 10 else 400.0


class Cluster:
    """The lab, its agents, one container namespace per host."""

    def __init__(self, lab: Lab, *, marks: bool = False) -> None:
        self.lab = lab
        self.log_marks = marks
        """Run the agents at debug level, which logs the stage marks ``marks()`` reads."""
        self.sockets = [str(lab.workdir / f"h{h.index}.sock") for h in lab.hosts]
        self.containers: list[str] = []
        self.procs: dict[int, LabProc] = {}

    def client(self, i: int) -> ControlClient:
        return ControlClient(self.sockets[i], timeout=30.0)

    def start(self) -> None:
        seed = self.lab.hosts[0].addr
        for h in self.lab.hosts:
            argv = agent_argv(f"h{h.index}", h.addr, self.sockets[h.index], join=[seed] if h.index else [],
                              state_dir=str(self.lab.workdir / f"state-{h.index}"),
                              extra=["--log-level", "debug"] if self.log_marks else [])
            self.procs[h.index] = self.lab.spawn(h, argv, name=f"agent-{h.index}")
            if h.index == 0:
                self._wait(0, lambda st: bool(st.get("ready")), "host0 ready")
        names = {f"h{h.index}" for h in self.lab.hosts}
        for h in self.lab.hosts:
            self._wait(h.index, lambda st: bool(st.get("ready")), f"host{h.index} ready")
            deadline = time.monotonic() + WAIT
            while {m.name for m in self.client(h.index).members() if m.status == "alive"} != names:
                if time.monotonic() > deadline:
                    raise LabError(f"host{h.index} does not see every agent alive")
                time.sleep(0.05)

    def _wait(self, i: int, ok: Any, what: str) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            proc = self.procs[i]
            if not proc.running():
                raise LabError(f"{what}: the agent exited: {proc.log_text()[-500:]}")
            try:
                if ok(self.client(i).request("status")):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise LabError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def make_containers(self) -> None:
        names = [f"{self.lab.prefix}-c{h.index}" for h in self.lab.hosts]
        # agent.lab.netlab has no public call for extra namespaces; these are removed with the lab.
        self.lab.add_namespaces(names)
        self.containers = names

    def marks(self, i: int) -> Marks:
        return parse_marks(self.procs[i].log_text().splitlines())

    def create(self, i: int, ifname: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client(i).request(
            "endpoint", args={"action": "create", "network": "prop", "netns": self.containers[i], "ifname": ifname})
        return result


class Observer:
    """First arrival time (time.monotonic) of FDB rows and neighbours on the observer host."""

    def __init__(self) -> None:
        self.fdb: dict[tuple[str, str], float] = {}
        self.neigh: dict[tuple[str, str], float] = {}
        self.overflows = 0
        self.changed = trio.Event()

    async def watch(self, monitor: NetlinkMonitor) -> None:
        while True:
            events = await monitor.next_events()
            now = time.monotonic()
            if events is None:
                self.overflows += 1
                continue
            for ev in events:
                if isinstance(ev, FdbEvent) and ev.present:
                    self.fdb.setdefault((ev.mac, ev.dst), now)
                elif isinstance(ev, NeighEvent) and ev.mac is not None:
                    self.neigh.setdefault((ev.ip, ev.mac), now)
            self.changed.set()
            self.changed = trio.Event()

    def arrived(self, ep: dict[str, Any]) -> float | None:
        f = self.fdb.get((ep["mac"], ep["vtep"]))
        n = self.neigh.get((ep["ipv4"], ep["mac"]))
        return None if f is None or n is None else max(f, n)


Sample = tuple[int, float, float]
"""(creating host, request sent, both entries seen on host0), time.monotonic()."""


async def measure(c: Cluster, endpoints: int) -> tuple[list[Sample], list[dict[str, Any]], int]:
    hosts = len(c.lab.hosts)
    obs = Observer()
    monitor = await trio.to_thread.run_sync(NetlinkMonitor, c.lab.hosts[0].netns, PREFIX)
    samples: list[Sample] = []
    made: list[dict[str, Any]] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(obs.watch, monitor)
            for k in range(endpoints):
                host = 1 + k % (hosts - 1)
                start = time.monotonic()
                ep = await trio.to_thread.run_sync(c.create, host, f"p{k}")
                with trio.fail_after(WAIT):
                    while (at := obs.arrived(ep)) is None:
                        await obs.changed.wait()
                samples.append((host, start, at))
                made.append(ep)
            nursery.cancel_scope.cancel()
    finally:
        monitor.close()
    return samples, made, obs.overflows


def check_kernel(c: Cluster, vni: int, remote: list[dict[str, Any]]) -> None:
    kernel = LinuxKernel(netns=c.lab.hosts[0].netns, prefix=PREFIX)
    try:
        state = kernel.read()
    finally:
        kernel.close()
    dev = f"{PREFIX}vx-{vni}"
    fdb = {mac: dst for (d, mac), dst in state.fdb.items() if d == dev}
    neigh = {ip: mac for (d, ip), mac in state.neigh.items() if d == dev}
    if fdb != {e["mac"]: e["vtep"] for e in remote} or neigh != {e["ipv4"]: e["mac"] for e in remote}:
        raise RuntimeError(f"host0's kernel does not hold exactly the expected entries "
                           f"({len(fdb)} FDB rows, {len(neigh)} neighbours for {len(remote)} endpoints)")


def run_bench(hosts: int, endpoints: int) -> dict[str, Any]:
    started = time.monotonic()
    with Lab(hosts, prefix=f"olabprop{os.getpid():x}") as lab:
        c = Cluster(lab, marks=True)
        log(f"starting {hosts} agents ...")
        c.start()
        c.make_containers()
        net = c.client(0).request("network", args={"action": "create", "name": "prop", "subnets": [SUBNET]})
        first = [c.create(h.index, "e0") for h in lab.hosts]
        log(f"network {net['ID'][:12]} (VNI {net['VNI']}), one endpoint per host; "
            f"timing {endpoints} creates observed on host0 ...")
        samples, made, overflows = trio.run(measure, c, endpoints)
        check_kernel(c, int(net["VNI"]), first[1:] + made)
        marks = {i: c.marks(i) for i in {0, *(host for host, _, _ in samples)}}
    rows = [breakdown(sent, seen, ep["id"], marks[host], marks[0], "h0")
            for (host, sent, seen), ep in zip(samples, made, strict=True)]
    ms = [(seen - sent) * 1000 for _, sent, seen in samples]
    target = target_p99_ms(hosts)
    return {
        "benchmark": "propagation",
        "hosts": hosts,
        "endpoints": endpoints,
        "observer": "host0 (netlink monitor in its namespace)",
        "measured": "endpoint create request sent on host k -> unicast FDB row and permanent neighbour "
                    "present on host0",
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "min_ms": round(min(ms), 2),
        "mean_ms": round(statistics.mean(ms), 2),
        "max_ms": round(max(ms), 2),
        "samples_ms": [round(x, 2) for x in ms],
        "target_p99_ms": target,
        "breakdown": summarize(rows),
        "samples_stages_ms": rows,
        "monitor_overflows": overflows,
        "ratios": {"p99_vs_target": round(percentile(ms, 99) / target, 3)},
        "wall_s": round(time.monotonic() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench propagation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 hosts, 30 endpoints (< 60 s)")
    ap.add_argument("--json", metavar="FILE", help="write the raw figures here")
    ap.add_argument("--hosts", type=int, help="hosts (default 10, quick 5)")
    ap.add_argument("--endpoints", type=int, help="timed endpoint creates (default 100, quick 30)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench propagation: needs root (network namespaces)", file=sys.stderr)
        return 1
    hosts = args.hosts or (5 if args.quick else 10)
    endpoints = args.endpoints or (30 if args.quick else 100)
    if not 2 <= hosts <= 50 or not 1 <= endpoints <= 5000:
        print("bench propagation: --hosts must be 2-50 and --endpoints 1-5000", file=sys.stderr)
        return 2
    try:
        report = run_bench(hosts, endpoints)
    except (LabError, OSError, RuntimeError) as exc:
        print(f"bench propagation: {exc}", file=sys.stderr)
        return 1
    report["quick"] = args.quick
    report["command"] = " ".join(["python -m bench propagation", *(argv if argv is not None else sys.argv[1:])])
    report["machine"] = machine()
    print(f"propagation over {hosts} hosts, {endpoints} endpoints: p50 {report['p50_ms']} ms, "
          f"p99 {report['p99_ms']} ms (min {report['min_ms']}, max {report['max_ms']}); "
          f"target p99 <= {report['target_p99_ms']:g} ms")
    stages = report["breakdown"]["stages_ms"]
    print("where it goes (ms, p50/p99): " + ", ".join(
        f"{name} {v['p50']}/{v['p99']}" for name, v in stages.items() if v.get("n")))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
