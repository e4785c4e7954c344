"""The ``propagation`` section of ``python -m bench runtime``: a Docker container started on
host A -> its FDB row and neighbour in host B's kernel.

A 2-host namespace lab runs real agents serving the Docker plugin and one private
dockerd per host (``agent.lab.dockerd``); both hosts create the same Docker network and
host B runs one container on it (a host takes part in a network's gossip only while it
has an endpoint there). The observer is a netlink monitor in B's namespace
(``dataplane.monitor.NetlinkMonitor``, RTNLGRP_NEIGH), which stamps the arrival of the
unicast FDB row (MAC -> A's VTEP) and the permanent neighbour (IP -> MAC) on B's VXLAN
device with the wall clock. Then N containers (default 50) are made on host A one
after the other with ``docker create --network NET IMAGE sleep …`` (not timed: the
image layer is copied) and started with ``docker start`` (left running).

Per container, three references: ``issued`` (just before the ``docker start`` command
is run), ``returned`` (the command returned: the container runs) and ``started``
(dockerd's ``State.StartedAt``, the container process's start). The figure
(``p50_ms``, ``p99_ms``) is ``arrived - issued``: from asking Docker to start the
container to both entries being in B's kernel, which includes Docker's own work on
the start (sandbox, the plugin calls). Also reported: ``after_return`` and
``after_process_start`` (negative: the entries were in B's kernel before the
container's process ran, as the plugin publishes the endpoint at RequestAddress,
before Join), ``docker_start_ms`` (the command's own wall time), and ``after_veth_on_a``:
from the endpoint's host-side veth appearing in A's namespace (a second monitor; the
plugin makes it at RequestAddress, right after publishing the row) to B's entries,
which is the agents' share (gossip, B's reconciler) without Docker's. At the end B's
kernel must hold an entry for every container.

Owns: the steps and figures of this section. Does not: start daemons or agents beyond
the lab harnesses (``agent.lab.dockerd``, ``agent.lab.agentnode``).
"""

from __future__ import annotations

import datetime
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from agent.lab import dockerd
from agent.lab.agentnode import ControlClient, agent_argv, wait_ready
from agent.lab.netlab import Lab, LabError
from bench.summary import log
from dataplane.events import FdbEvent, LinkEvent, NeighEvent
from dataplane.monitor import NetlinkMonitor

PREFIX = "ov-"
TARGET_P99_MS = 500.0
CONTAINERS = 50
QUICK_CONTAINERS = 10
WAIT = 60.0
SUBNET = "10.206.0.0/24"
NETWORK = "prop"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def parse_started(text: str) -> float:
    """Docker's ``State.StartedAt`` (RFC 3339, nanoseconds, UTC) -> POSIX seconds."""
    stamp, _, frac = text.rstrip("Z").partition(".")
    base = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC)
    return base.timestamp() + (float("0." + frac) if frac else 0.0)


class Observer:
    """Wall-clock arrival times of FDB rows (MAC, VTEP) and neighbours (IP, MAC), and of
    new links by name, in one namespace."""

    def __init__(self) -> None:
        self.fdb: dict[tuple[str, str], float] = {}
        self.neigh: dict[tuple[str, str], float] = {}
        self.links: dict[str, float] = {}
        self.overflows = 0
        self.changed = trio.Event()

    async def watch(self, monitor: NetlinkMonitor) -> None:
        while True:
            events = await monitor.next_events()
            now = time.time()
            if events is None:
                self.overflows += 1
                continue
            for ev in events:
                if isinstance(ev, FdbEvent) and ev.present:
                    self.fdb.setdefault((ev.mac, ev.dst), now)
                elif isinstance(ev, NeighEvent) and ev.mac is not None:
                    self.neigh.setdefault((ev.ip, ev.mac), now)
                elif isinstance(ev, LinkEvent) and ev.link is not None:
                    self.links.setdefault(ev.name, now)
            self.changed.set()
            self.changed = trio.Event()

    def arrived(self, ip: str, mac: str, vtep: str) -> float | None:
        f, n = self.fdb.get((mac, vtep)), self.neigh.get((ip, mac))
        return None if f is None or n is None else max(f, n)


def _start(hosts: dockerd.DockerHosts, i: int, name: str) -> tuple[float, float]:
    """``docker create`` (untimed), then ``docker start`` on host i: (issued, returned)
    wall-clock times of the start."""
    hosts.docker(i, "create", "--name", name, "--network", NETWORK, dockerd.IMAGE, "sleep", "36000")
    issued = time.time()
    hosts.docker(i, "start", name)
    return issued, time.time()


def _inspect(hosts: dockerd.DockerHosts, i: int, name: str) -> tuple[str, str, float]:
    info = hosts.inspect(i, name)
    net = info["NetworkSettings"]["Networks"][NETWORK]
    return net["IPAddress"], net["MacAddress"].lower(), parse_started(info["State"]["StartedAt"])


def _host_ifname(sock: str, ip: str) -> str:
    """The host-side veth of host A's endpoint with address ``ip`` (its agent's answer)."""
    eps = ControlClient(sock, timeout=30.0).request("endpoint", args={"action": "ls"})
    return str(next(e["host_ifname"] for e in eps if e.get("local") and e.get("ipv4") == ip))


async def _measure(lab: Lab, hosts: dockerd.DockerHosts, sock_a: str,
                   count: int) -> tuple[list[dict[str, float]], int]:
    obs, obs_a = Observer(), Observer()
    monitor = await trio.to_thread.run_sync(NetlinkMonitor, lab.hosts[1].netns, PREFIX)
    monitor_a = await trio.to_thread.run_sync(NetlinkMonitor, lab.hosts[0].netns, PREFIX)
    vtep = lab.hosts[0].addr
    rows: list[dict[str, float]] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(obs.watch, monitor)
            nursery.start_soon(obs_a.watch, monitor_a)
            for k in range(count):
                name = f"prop{k}"
                issued, returned = await trio.to_thread.run_sync(_start, hosts, 0, name)
                ip, mac, started = await trio.to_thread.run_sync(_inspect, hosts, 0, name)
                with trio.fail_after(WAIT):
                    while (at := obs.arrived(ip, mac, vtep)) is None:
                        await obs.changed.wait()
                veth = await trio.to_thread.run_sync(_host_ifname, sock_a, ip)
                made = obs_a.links.get(veth, math.nan)
                rows.append({"issued": issued, "returned": returned, "started": started, "arrived": at,
                             "veth": made})
                if (k + 1) % 10 == 0:
                    log(f"  {k + 1}/{count}: last {1000 * (at - issued):.0f} ms after docker start was issued")
            nursery.cancel_scope.cancel()
    finally:
        monitor.close()
        monitor_a.close()
    return rows, obs.overflows + obs_a.overflows


def _stats(values: list[float]) -> dict[str, Any]:
    return {"p50_ms": round(percentile(values, 50), 1), "p99_ms": round(percentile(values, 99), 1),
            "min_ms": round(min(values), 1), "max_ms": round(max(values), 1),
            "mean_ms": round(statistics.mean(values), 1)}


def _check_kernel(lab: Lab, vni: int, count: int) -> None:
    dev = f"{PREFIX}vx-{vni}"
    r = lab.run(lab.hosts[1], ["ip", "-o", "neigh", "show", "dev", dev, "nud", "permanent"], check=False)
    have = len(r.stdout.splitlines())
    if have < count:
        raise RuntimeError(f"host B's kernel holds {have} neighbours on {dev}, expected at least {count}")


def run_propagation(containers: int) -> dict[str, Any]:
    """The ``propagation`` section (see the module docstring)."""
    if dockerd.skip_reason():
        raise LabError(f"propagation section: {dockerd.skip_reason()}")
    lab = Lab(2)
    hosts = dockerd.DockerHosts(lab, 2)
    problems: list[str] = []
    try:
        for i, host in enumerate(lab.hosts):
            sock = str(lab.workdir / f"host{i}.sock")
            lab.spawn(host, agent_argv(f"host{i}", host.addr, sock, join=[lab.hosts[0].addr] if i else [],
                                       state_dir=str(lab.workdir / f"state{i}"), extra=hosts.agent_args(i)),
                      name=f"agent{i}")
            try:
                wait_ready(sock, WAIT)
            except OSError as exc:
                raise LabError(str(exc)) from None
        with tempfile.TemporaryDirectory(prefix="bench-runtime-prop-") as tmp:
            rootfs = dockerd.make_rootfs(Path(tmp) / "rootfs")
            for i in range(2):
                hosts.start(i)
                hosts.import_image(i, rootfs)
        for i in range(2):
            p = hosts.plugins[i]
            hosts.docker(i, "network", "create", "-d", p, "--ipam-driver", p, "--ipam-opt", f"network={NETWORK}",
                         *(["--subnet", SUBNET] if i == 0 else []), NETWORK)
        hosts.docker(1, "run", "-d", "--name", "observer", "--network", NETWORK, dockerd.IMAGE, "sleep", "36000")
        hosts.docker(0, "run", "--rm", "--network", NETWORK, dockerd.IMAGE, "true")  # warm-up
        log(f"timing {containers} docker start on host A, observed in host B's kernel ...")
        rows, overflows = trio.run(_measure, lab, hosts, str(lab.workdir / "host0.sock"), containers)
        _check_kernel(lab, _vni(lab), containers)
    finally:
        problems += hosts.close()
        problems += lab.close()
    if problems:
        log(f"bench runtime: cleanup problems: {problems}")
    issued = [1000 * (r["arrived"] - r["issued"]) for r in rows]
    returned = [1000 * (r["arrived"] - r["returned"]) for r in rows]
    started = [1000 * (r["arrived"] - r["started"]) for r in rows]
    docker_start = [1000 * (r["returned"] - r["issued"]) for r in rows]
    agent = [1000 * (r["arrived"] - r["veth"]) for r in rows if not math.isnan(r["veth"])]
    return {
        "propagation": {
            "containers": containers,
            "observer": "host B: netlink monitor in its namespace (RTNLGRP_NEIGH), wall-clock stamps",
            "measured": "docker start issued on host A -> unicast FDB row and permanent neighbour present "
                        "in host B's kernel",
            **_stats(issued),
            "samples_ms": [round(x, 1) for x in issued],
            "after_return": _stats(returned),
            "after_process_start": _stats(started),
            "docker_start_ms": _stats(docker_start),
            "after_veth_on_a": _stats(agent) if agent else None,
            "monitor_overflows": overflows,
            "target_p99_ms": TARGET_P99_MS,
        },
        "ratios": {"propagation_p99_vs_target": round(percentile(issued, 99) / TARGET_P99_MS, 3)},
    }


def _vni(lab: Lab) -> int:
    """The VNI of host B's only VXLAN device of ours."""
    r = lab.run(lab.hosts[1], ["ip", "-o", "link", "show", "type", "vxlan"], check=False)
    for line in r.stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(f"{PREFIX}vx-"):
            return int(name.removeprefix(f"{PREFIX}vx-"))
    raise RuntimeError("host B has no VXLAN device of ours")


def summary(report: dict[str, Any]) -> str:
    p = report["propagation"]
    agent = p["after_veth_on_a"] or {"p50_ms": math.nan, "p99_ms": math.nan}
    return (f"docker start on A -> entries in B's kernel over {p['containers']} containers: p50 {p['p50_ms']} ms, "
            f"p99 {p['p99_ms']} ms (target p99 <= {TARGET_P99_MS:g}); after the process started: p50 "
            f"{p['after_process_start']['p50_ms']} ms, p99 {p['after_process_start']['p99_ms']} ms; "
            f"after the veth on A: p50 {agent['p50_ms']} ms, p99 {agent['p99_ms']} ms")
