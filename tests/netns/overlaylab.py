"""Real overlay agents in a namespace lab: start/kill/restart them, make containers, read kernels.

Used by the netns tests of the overlay (issue 4 item 2, issue 5). Builds on
``agent.lab.netlab.Lab`` (hosts on an underlay bridge, processes by pid, cleanup): every
agent runs the installed ``overlay-agent`` inside its host namespace with a state
dir; containers are extra namespaces registered with the lab, so its cleanup (and
``python -m agent.lab.cleanup``) removes them too. Kernel state is read with iproute2's
JSON output (``bridge -j fdb``, ``ip -j neigh``), independently of the agent's code.
Polling helpers wait for a condition with a deadline; they never assert timing.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.ctl.client import Client, CtlError
from agent.lab.agentnode import agent_argv, agentctl_program
from agent.lab.netlab import Host, Lab, LabProc

WAIT = 40.0
"""Generous deadline for anything we wait for (never a timing assertion)."""


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[rank]


def wait_for(check: Callable[[], Any], what: str, within: float = WAIT, every: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:g}s waiting for {what}")
        time.sleep(every)


@dataclass
class Node:
    index: int
    name: str
    host: Host
    socket: str
    state_dir: str
    proc: LabProc | None = None


class OverlayLab:
    """``hosts`` agents (host0 first, the others join it) on a fresh lab."""

    def __init__(self, lab: Lab, *, profile: str = "lan", extra: Sequence[str] = (),
                 hosts: Sequence[Host] | None = None) -> None:
        self.lab = lab
        self.profile = profile
        self.extra = list(extra)
        self.nodes = [
            Node(i, f"host{i}", h, str(lab.workdir / f"host{i}.sock"), str(lab.workdir / f"state-host{i}"))
            for i, h in enumerate(lab.hosts if hosts is None else hosts)
        ]
        self._containers = 0
        self._starts = 0

    # -- agents -----------------------------------------------------------------------------
    def start(self, i: int, *, join: Sequence[int] | None = None, wait_ready: bool = True) -> Node:
        node = self.nodes[i]
        if join is None:
            join = [] if i == 0 and node.proc is None else [j for j in range(len(self.nodes)) if j != i][:2]
        self._starts += 1
        argv = agent_argv(node.name, node.host.addr, node.socket, profile=self.profile,
                          join=[self.nodes[j].host.addr for j in join], state_dir=node.state_dir,
                          extra=self.extra)
        node.proc = self.lab.spawn(node.host, argv, name=f"{node.name}-{self._starts}")
        if wait_ready:
            self.wait_ready(i)
        return node

    def start_all(self) -> None:
        self.start(0)
        for i in range(1, len(self.nodes)):
            self.start(i, join=[0], wait_ready=False)
        for i in range(1, len(self.nodes)):
            self.wait_ready(i)
        names = {n.name for n in self.nodes}
        for i in range(len(self.nodes)):
            wait_for(lambda i=i: {m["name"] for m in self.members(i) if m["status"] == "alive"} == names,
                     f"{self.nodes[i].name} to see every agent alive")

    def running(self, i: int) -> bool:
        proc = self.nodes[i].proc
        return proc is not None and proc.running()

    def check_running(self, i: int) -> None:
        proc = self.nodes[i].proc
        if proc is None or not proc.running():
            tail = proc.log_text()[-2000:] if proc is not None else ""
            pytest.fail(f"{self.nodes[i].name} is not running; log tail:\n{tail}")

    def wait_ready(self, i: int, within: float = WAIT) -> None:
        def ready() -> bool:
            self.check_running(i)
            try:
                return bool(self.request(i, "status").get("ready"))
            except CtlError:
                return False

        wait_for(ready, f"{self.nodes[i].name} to be ready", within)

    def kill(self, i: int) -> None:
        proc = self.nodes[i].proc
        assert proc is not None
        self.lab.kill(proc)

    def stop(self, i: int) -> int | None:
        proc = self.nodes[i].proc
        assert proc is not None
        return self.lab.stop(proc, signal.SIGTERM)

    def log(self, i: int) -> str:
        proc = self.nodes[i].proc
        return proc.log_text() if proc is not None else ""

    # -- control API --------------------------------------------------------------------------
    def request(self, i: int, op: str, args: dict[str, Any] | None = None, timeout: float = 15.0) -> Any:
        return Client(self.nodes[i].socket, timeout).request(op, args)

    def ctl(self, i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``agentctl --socket S ARGS`` run inside host i, as an operator would."""
        r = self.lab.run(self.nodes[i].host, [*agentctl_program(), "--socket", self.nodes[i].socket, *args],
                         check=False, timeout=60)
        if check and r.returncode != 0:
            pytest.fail(f"agentctl {' '.join(args)} on {self.nodes[i].name} failed ({r.returncode}): {r.stderr}")
        return r

    def members(self, i: int) -> list[dict[str, Any]]:
        try:
            result: list[dict[str, Any]] = self.request(i, "members")
        except CtlError:
            return []
        return result

    def status_of(self, i: int, name: str) -> str | None:
        return next((m["status"] for m in self.members(i) if m["name"] == name), None)

    def endpoints(self, i: int, network: str | None = None) -> list[dict[str, Any]]:
        args: dict[str, Any] = {"action": "ls"}
        if network is not None:
            args["network"] = network
        result: list[dict[str, Any]] = self.request(i, "endpoint", args)
        return result

    def endpoint_ids(self, i: int) -> set[str]:
        try:
            return {e["id"] for e in self.endpoints(i)}
        except CtlError:
            return set()

    def create_network(self, i: int, name: str, *args: str) -> dict[str, Any]:
        net_id = self.ctl(i, "network", "create", name, *args).stdout.strip()
        inspect = json.loads(self.ctl(i, "network", "inspect", net_id).stdout)
        assert inspect[0]["Id"] == net_id
        result: dict[str, Any] = inspect[0]
        return result

    def create_endpoint(self, i: int, network: str, netns: str, *args: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.ctl(i, "endpoint", "create", network, "--netns", netns,
                                                     *args).stdout)
        return result

    # -- containers and kernels ---------------------------------------------------------------------
    def container(self, tag: str | None = None) -> str:
        """A fresh namespace (a "container"), deleted with the lab."""
        self._containers += 1
        name = f"{self.lab.prefix}-c{tag or self._containers}"
        # agent.lab.netlab has no public "extra namespace" call; this registers it for cleanup.
        self.lab.add_namespaces([name])
        self.lab.batch(name, ["link set lo up"])
        return name

    def in_container(self, netns: str, argv: Sequence[str], timeout: float = 60.0,
                     check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.lab.run(netns, list(argv), timeout=timeout, check=check)

    def ping(self, netns: str, ip: str, *extra: str, count: int = 3) -> bool:
        r = self.in_container(netns, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", *extra, ip])
        return " 0% packet loss" in r.stdout

    def fdb(self, i: int, vni: int) -> dict[str, str]:
        """Permanent NTF_SELF unicast FDB rows of the network's VXLAN device: MAC -> VTEP."""
        rows = self._json(i, ["bridge", "-j", "fdb", "show", "dev", f"ov-vx-{vni}"])
        return {r["mac"]: r.get("dst", "") for r in rows
                if "self" in r.get("flags", []) and r.get("state") == "permanent"
                and r["mac"] != "00:00:00:00:00:00"}

    def flood(self, i: int, vni: int) -> set[str]:
        rows = self._json(i, ["bridge", "-j", "fdb", "show", "dev", f"ov-vx-{vni}"])
        return {r.get("dst", "") for r in rows if r["mac"] == "00:00:00:00:00:00"}

    def neigh(self, i: int, vni: int) -> dict[str, str]:
        """Permanent neighbours on the network's VXLAN device: IP -> MAC."""
        rows = self._json(i, ["ip", "-j", "neigh", "show", "dev", f"ov-vx-{vni}", "nud", "permanent"])
        return {r["dst"]: r.get("lladdr", "") for r in rows}

    def _json(self, i: int, argv: list[str]) -> list[dict[str, Any]]:
        r = self.lab.run(self.nodes[i].host, argv, check=False)
        if r.returncode != 0 or not r.stdout.strip():
            return []  # the device does not exist (yet / any more)
        result: list[dict[str, Any]] = json.loads(r.stdout)
        return result

    def entries_for(self, i: int, vni: int, eps: Sequence[dict[str, Any]]) -> bool:
        """Whether host i holds FDB + neighbour entries for exactly these remote endpoints."""
        fdb, neigh = self.fdb(i, vni), self.neigh(i, vni)
        want_fdb = {e["mac"]: e["vtep"] for e in eps}
        want_neigh = {e["ipv4"]: e["mac"] for e in eps}
        return fdb == want_fdb and neigh == want_neigh

    def capture(self, i: int, path: Path, bpf: str = "udp port 4789") -> LabProc:
        """tcpdump on host i's underlay interface, writing ``path``; stop it with ``stop_capture``."""
        host = self.nodes[i].host
        proc = self.lab.spawn(host, ["tcpdump", "-i", host.ifname, "-n", "-U", "--immediate-mode", "-w", str(path), bpf],
                              name=f"tcpdump-{host.index}-{path.stem}")
        wait_for(lambda: "listening on" in proc.log_text() or not proc.running(), "tcpdump to start")
        assert proc.running(), proc.log_text()
        return proc

    def stop_capture(self, proc: LabProc) -> None:
        self.lab.stop(proc, signal.SIGINT)
