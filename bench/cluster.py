"""A membership cluster of serf agents and/or our agents in a lab, and waiting on its views.

Owns: starting either kind of agent on a lab host with the same conventions
(each on its own address, port 7946; logs in the lab's work directory), reading
every agent's member list the cheap way (serf native RPC, our control socket),
and ``wait_for``: poll a set of agents until each one's view satisfies a goal,
recording when. Tests use it with generous deadlines; the membership benchmark
uses the recorded times. Statuses are kept as each agent reports them
(serf: alive/leaving/left/failed; ours: alive/suspect/dead/left); ``DOWN`` is
the pair that means "declared failed".
Does not build the network (``agent.lab.netlab``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from agent.lab.agentnode import (
    AGENT_PORT,
    PROJECT_ROOT,
    ControlClient,
    agent_argv,
    agentctl_program,
)
from agent.lab.netlab import Host, Lab, LabProc
from bench.serfnode import SERF_PORT, SerfRpc, serf_argv, serf_binary

Kind = Literal["serf", "ours"]
View = dict[str, str]
"""member name -> status, as one agent sees it."""

DOWN = frozenset({"failed", "dead"})


class ClusterTimeout(AssertionError):
    """A wait ran out; the message says who did not get there and what they saw."""


@dataclass(eq=False)
class Node:
    kind: Kind
    name: str
    host: Host
    proc: LabProc
    bind: str
    control_socket: str | None = None
    rpc: SerfRpc | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


def all_alive(names: Iterable[str]) -> Callable[[View], bool]:
    """Goal: exactly ``names`` are alive (others may be listed as failed/left)."""
    want = frozenset(names)
    return lambda v: frozenset(n for n, s in v.items() if s == "alive") == want


def sees_down(name: str) -> Callable[[View], bool]:
    return lambda v: v.get(name) in DOWN


def sees_status(name: str, *statuses: str) -> Callable[[View], bool]:
    return lambda v: v.get(name) in statuses


def all_of(*goals: Callable[[View], bool]) -> Callable[[View], bool]:
    return lambda v: all(g(v) for g in goals)


@dataclass
class WaitResult:
    """When each polled agent first met the goal, in seconds after ``t0``."""

    times: dict[str, float]
    sweeps: int
    polls: int
    last_views: dict[str, View | None] = field(default_factory=dict)
    answered: dict[str, float] = field(default_factory=dict)
    """When each agent first answered a poll at all (same clock as ``times``)."""


class Cluster:
    """Agents in one lab. ``close()`` closes RPC connections; the lab kills processes."""

    def __init__(self, lab: Lab, *, profile: str = "lan", serf_log_level: str = "info") -> None:
        self.lab = lab
        self.profile = profile
        self.serf_log_level = serf_log_level
        self.nodes: dict[str, Node] = {}
        self._serf = serf_binary()

    # -- starting agents -----------------------------------------------------------------
    def _check_name(self, name: str) -> None:
        old = self.nodes.get(name)
        if old is not None and old.proc.running():
            raise ValueError(f"agent {name} is already running")

    def start_serf(
        self,
        host: Host,
        name: str,
        *,
        join: Sequence[str] = (),
        encrypt: str | None = None,
        tags: Mapping[str, str] | None = None,
        config: Mapping[str, object] | None = None,
    ) -> Node:
        """Start ``serf agent`` on ``host``; ``config`` goes to a -config-file (e.g.
        ``{"reconnect_interval": "10m"}``)."""
        if self._serf is None:
            raise RuntimeError("serf is not installed (Debian package 'serf')")
        self._check_name(name)
        config_file = None
        if config:
            path = self.lab.workdir / f"{name}.serf.json"
            path.write_text(json.dumps(dict(config)), encoding="utf-8")
            config_file = str(path)
        bind = f"{host.addr}:{SERF_PORT}"
        argv = serf_argv(
            self._serf,
            name,
            bind,
            join=join,
            profile=self.profile,
            encrypt=encrypt,
            tags=tags,
            log_level=self.serf_log_level,
            config_file=config_file,
        )
        proc = self.lab.spawn(host, argv, name=name)
        node = Node("serf", name, host, proc, bind, rpc=SerfRpc(self.lab, host))
        self.nodes[name] = node
        return node

    def start_ours(
        self,
        host: Host,
        name: str,
        *,
        join: Sequence[str] = (),
        keys: Sequence[str] = (),
        tags: Mapping[str, str] | None = None,
        leave_on_terminate: bool = False,
        extra: Sequence[str] = (),
    ) -> Node:
        """Start ``overlay-agent`` on ``host`` with its control socket in the lab's workdir."""
        self._check_name(name)
        sock = str(self.lab.workdir / f"{name}.sock")
        state_dir = self.lab.workdir / f"{name}.state"
        state_dir.mkdir(exist_ok=True)
        bind = f"{host.addr}:{AGENT_PORT}"
        argv = agent_argv(
            name,
            bind,
            sock,
            join=join,
            profile=self.profile,
            encrypt_keys=keys,
            tags=tags,
            state_dir=str(state_dir),
            leave_on_terminate=leave_on_terminate,
            extra=extra,
        )
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        proc = self.lab.spawn(host, argv, name=name, env=env, cwd=str(PROJECT_ROOT))
        node = Node("ours", name, host, proc, bind, control_socket=sock)
        self.nodes[name] = node
        return node

    # -- views --------------------------------------------------------------------------------
    def view(self, node: Node) -> View:
        """The member list ``node`` reports; raises OSError if it does not answer."""
        if node.kind == "serf":
            assert node.rpc is not None
            return {m.name: m.status for m in node.rpc.members()}
        assert node.control_socket is not None
        return {m.name: m.status for m in ControlClient(node.control_socket).members()}

    def try_view(self, node: Node) -> View | None:
        try:
            return self.view(node)
        except OSError:
            return None

    def wait_for(
        self,
        nodes: Iterable[Node],
        goal: Callable[[View], bool],
        timeout: float,
        *,
        what: str = "goal",
        t0: float | None = None,
        interval: float = 0.1,
    ) -> WaitResult:
        """Poll ``nodes`` until each one's view meets ``goal`` (each is dropped once it does).

        A new sweep starts at most every ``interval`` seconds. Times are poll
        completion times relative to ``t0`` (default: now), i.e. upper bounds.
        Raises ClusterTimeout after ``timeout`` seconds, or as soon as one of the
        polled agents has exited.
        """
        __tracebackhide__ = True  # pytest: show the caller and the message, not this loop
        start = time.monotonic()
        ref = start if t0 is None else t0
        todo = list(nodes)
        res = WaitResult(times={}, sweeps=0, polls=0)
        while todo:
            sweep_start = time.monotonic()
            for node in list(todo):
                v = self.try_view(node)
                res.polls += 1
                now = time.monotonic()
                if v is not None:
                    res.answered.setdefault(node.name, now - ref)
                if v is not None and goal(v):
                    res.times[node.name] = now - ref
                    res.last_views.pop(node.name, None)
                    todo.remove(node)
                else:
                    res.last_views[node.name] = v
            res.sweeps += 1
            if not todo:
                break
            exited = [n for n in todo if not n.proc.running()]
            now = time.monotonic()
            if exited or now - start > timeout:
                why = (
                    f"agent(s) exited: {', '.join(f'{n.name} rc={n.proc.popen.returncode}' for n in exited)}"
                    if exited
                    else f"timed out after {timeout:.1f}s"
                )
                lines = [f"waiting for {what}: {why}"]
                for n in exited:  # its own last words say why (e.g. a bind or import error)
                    tail = n.proc.log_text().strip().splitlines()[-3:]
                    lines.extend(f"  {n.name} log: {line}" for line in tail)
                for n in todo:
                    lines.append(f"  {n.name} ({n.kind}) last view: {res.last_views.get(n.name)}")
                raise ClusterTimeout("\n".join(lines))
            pause = interval - (now - sweep_start)
            if pause > 0:
                time.sleep(pause)
        return res

    def wait_ready(self, nodes: Iterable[Node], timeout: float = 30.0) -> WaitResult:
        """Until each agent answers its RPC / control socket at all."""
        return self.wait_for(nodes, lambda v: True, timeout, what="agents to answer", interval=0.02)

    # -- acting on agents --------------------------------------------------------------------
    def kill(self, node: Node) -> None:
        """SIGKILL (the namespace stays, so peers get ICMP/RST rather than silence)."""
        self.lab.kill(node.proc)
        if node.rpc is not None:
            node.rpc.close()

    def terminate(self, node: Node, timeout: float = 15.0) -> int | None:
        rc = self.lab.stop(node.proc, signal.SIGTERM, timeout)
        if node.rpc is not None:
            node.rpc.close()
        return rc

    def agentctl(self, node: Node, *args: str, timeout: float = 30.0) -> tuple[int, str, str]:
        """Run ``agentctl --socket PATH ARGS`` (root namespace: the socket is a path)."""
        assert node.control_socket is not None
        r = subprocess.run(
            [*agentctl_program(), "--socket", node.control_socket, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(PROJECT_ROOT),
            check=False,
        )
        return r.returncode, r.stdout, r.stderr

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for node in self.nodes.values():
            text = node.proc.log_text().splitlines()[-lines:]
            out.append(f"----- {node.name} ({node.kind}, pid {node.pid}) -----")
            out.extend(text)
        return "\n".join(out)

    def close(self) -> None:
        for node in self.nodes.values():
            if node.rpc is not None:
                node.rpc.close()
