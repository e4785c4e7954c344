"""``make demo``: a 3-host overlay lab in network namespaces on this machine, with real agents.

``demo(hosts)`` builds the lab (``agent.lab.netlab.Lab``: an underlay bridge, one
namespace per host), starts ``overlay-agent`` in every host, waits until every agent
sees every other alive, shows ``agentctl members`` run inside each host, creates an
overlay network on host1 and one endpoint ("container" namespace) per host, shows
``agentctl network inspect``, pings from host1's container to the others over VXLAN,
shows ``agentctl dataplane``, and tears everything down on exit, on Ctrl-C and on
SIGTERM. ``keep_going`` waits for Ctrl-C before tearing down, to look around
(``ip netns``, ``agentctl``).

Owns: the demo's steps (``Demo.steps``, in order; a new feature appends its step
there) and their output, and the demo labs' namespace prefix (``PREFIX``).
Does not: create namespaces or kill processes itself (``agent.lab.netlab`` does, by
pid, and records them for cleanup), parse the command line (``agent.lab.__main__``),
or import the agent package: the agents run as the installed programs
(``agent.lab.agentnode``). Needs root (namespaces); network traffic stays inside the
lab (192.0.2.0/24, overlay 10.200.0.0/24 inside container namespaces).
"""


from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn

from agent.lab.agentnode import ControlClient, agent_argv, agentctl_program
from agent.lab.netlab import Host, Lab, LabError, LabProc

NETWORK = "demo"
SUBNET = "10.200.0.0/24"
PREFIX = "odemo"
"""Namespace prefix of demo labs (distinct from the tests' and benchmarks' ``olab``)."""
WAIT = 30.0


class DemoError(RuntimeError):
    """A step failed; the message says which and why (one line)."""


@dataclass
class Agent:
    name: str
    host: Host
    socket: str
    proc: LabProc


@dataclass
class Demo:
    lab: Lab
    hosts: int
    out: Callable[[str], None] = print
    agents: list[Agent] = field(default_factory=list)
    containers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(namespace, endpoint JSON) per host."""
    started: float = field(default_factory=time.monotonic)

    def say(self, text: str) -> None:
        self.out(f"[{time.monotonic() - self.started:5.1f}s] {text}")

    @property
    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        """The demo, in order. Later layers append (title, function) pairs here."""
        return [
            ("start an agent in every host", self.start_agents),
            ("wait until every agent sees every other alive", self.wait_converged),
            ("agentctl members, run inside each host", self.show_members),
            (f"create overlay network {NETWORK!r} ({SUBNET}) on host1", self.create_network),
            ("one endpoint per host: a 'container' namespace with a veth in the network",
             self.create_endpoints),
            ("agentctl network inspect, run on host1", self.show_inspect),
            ("ping across hosts, container to container over VXLAN", self.ping_across),
            ("agentctl dataplane on host1: kernel entries vs desired", self.show_dataplane),
        ]

    def run(self) -> None:
        for i, (title, step) in enumerate(self.steps, 1):
            self.say(f"step {i}: {title}")
            step()

    # -- steps ---------------------------------------------------------------------------

    def start_agents(self) -> None:
        seed = self.lab.hosts[0].addr
        for i, host in enumerate(self.lab.hosts):
            name = f"host{i + 1}"
            sock = str(self.lab.workdir / f"{name}.sock")
            argv = agent_argv(
                name, host.addr, sock,
                join=[seed] if i else [],
                profile="lan",
                tags={"demo": "yes"},
                state_dir=str(self.lab.workdir / f"state-{name}"),
            )
            proc = self.lab.spawn(host, argv, name=name, env=_agent_env())
            agent = Agent(name, host, sock, proc)
            self.agents.append(agent)
            self.say(f"  {name}: overlay-agent on {host.addr}:7946 in netns {host.netns} (pid {proc.pid})")
            if i == 0:
                # The others join through it: it must be listening first, or their
                # first join fails and waits for the periodic rejoin.
                self._wait_serving(agent)

    def _wait_serving(self, agent: Agent) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            self._check_running(agent)
            try:
                ControlClient(agent.socket, timeout=2.0).request("status")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise DemoError(f"{agent.name} did not answer on {agent.socket} within {WAIT:g}s") from None
            time.sleep(0.05)

    def _check_running(self, agent: Agent) -> None:
        if not agent.proc.running():
            tail = agent.proc.log_text().strip().splitlines()[-3:]
            raise DemoError(f"{agent.name} exited with {agent.proc.popen.returncode}: {' | '.join(tail)}")

    def wait_converged(self) -> None:
        names = sorted(a.name for a in self.agents)
        deadline = time.monotonic() + WAIT
        while True:
            views = {a.name: self._view(a) for a in self.agents}
            if all(v == dict.fromkeys(names, "alive") for v in views.values()):
                self.say(f"  all {len(names)} agents see {len(names)} members alive")
                return
            if time.monotonic() > deadline:
                raise DemoError(f"agents did not converge within {WAIT:g}s: {views}")
            time.sleep(0.05)

    def _view(self, agent: Agent) -> dict[str, str]:
        self._check_running(agent)
        try:
            return {m.name: m.status for m in ControlClient(agent.socket, timeout=2.0).members()}
        except OSError:
            return {}

    def show_members(self) -> None:
        for agent in self.agents:
            r = self.lab.run(agent.host, [*agentctl_program(), "--socket", agent.socket, "members"],
                             check=False)
            self.out(f"\n$ ip netns exec {agent.host.netns} agentctl --socket {agent.socket} members")
            self.out((r.stdout or r.stderr).rstrip())
        self.out("")


    # -- overlay steps ---------------------------------------------------------------------

    def _ctl(self, agent: Agent, *args: str, show: bool = True) -> str:
        r = self.lab.run(agent.host, [*agentctl_program(), "--socket", agent.socket, *args], check=False)
        if show:
            self.out(f"\n$ ip netns exec {agent.host.netns} agentctl {' '.join(args)}")
            self.out((r.stdout or r.stderr).rstrip())
        if r.returncode != 0:
            raise DemoError(f"agentctl {' '.join(args)} on {agent.name}: {r.stderr.strip()}")
        return r.stdout

    def create_network(self) -> None:
        self._ctl(self.agents[0], "network", "create", NETWORK, "--subnet", SUBNET)
        self.out("")

    def create_endpoints(self) -> None:
        for agent in self.agents:
            netns = f"{self.lab.prefix}-c{agent.host.index + 1}"
            self.lab.add_namespaces([netns])  # deleted with the lab
            out = self._ctl(agent, "endpoint", "create", NETWORK, "--netns", netns, show=False)
            ep = json.loads(out)
            self.containers.append((netns, ep))
            self.say(f"  {agent.name}: container netns {netns}, eth0 {ep['ipv4_cidr']} mac {ep['mac']} "
                     f"(host side {ep['host_ifname']})")
        self._wait_entries()

    def _wait_entries(self) -> None:
        """Until every agent lists every endpoint (they are in the kernels right after)."""
        ids = {ep["id"] for _, ep in self.containers}
        deadline = time.monotonic() + WAIT
        for agent in self.agents:
            while True:
                self._check_running(agent)
                rows = ControlClient(agent.socket, timeout=5.0).request("endpoint", args={"action": "ls"})
                if {r["id"] for r in rows} >= ids:
                    break
                if time.monotonic() > deadline:
                    raise DemoError(f"{agent.name} did not learn every endpoint within {WAIT:g}s")
                time.sleep(0.05)
        time.sleep(0.2)  # the reconcilers' coalescing window

    def show_inspect(self) -> None:
        self._ctl(self.agents[0], "network", "inspect", NETWORK)
        self.out("")

    def ping_across(self) -> None:
        src_ns, src = self.containers[0]
        for _, dst in self.containers[1:]:
            r = self.lab.run(src_ns, ["ping", "-c", "3", "-i", "0.2", "-W", "2", dst["ipv4"]], check=False)
            self.out(f"\n$ ip netns exec {src_ns} ping -c 3 {dst['ipv4']}    # {dst['node']}'s container")
            self.out(r.stdout.rstrip())
            if r.returncode != 0:
                raise DemoError(f"ping from {src['node']}'s container to {dst['node']}'s failed")
        self.out("")

    def show_dataplane(self) -> None:
        self._ctl(self.agents[0], "dataplane")
        self.out("")


def _agent_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERLAY_AGENT_")}
    env.pop("NOTIFY_SOCKET", None)  # the demo's agents are not systemd's services
    return env


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both tear the lab down (SIGINT even when started in the
    background by a shell, which would have it ignored)."""

    def handler(signum: int, frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def demo(hosts: int = 3, keep_going: bool = False) -> int:
    if os.geteuid() != 0:
        print("agent.lab: the demo needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    _stop_on_signals()
    started = time.monotonic()
    lab: Lab | None = None
    try:
        print(f"Building a lab of {hosts} hosts in network namespaces (underlay 192.0.2.0/24)...")
        lab = Lab(hosts, prefix=f"{PREFIX}{os.getpid():x}")
        d = Demo(lab, hosts, started=started)
        d.run()
        if keep_going:
            print(f"Lab {lab.prefix} is up; sockets in {lab.workdir}. Ctrl-C tears it down.")
            while all(a.proc.running() for a in d.agents):
                time.sleep(1)
        print(f"Demo finished in {time.monotonic() - started:.1f}s; tearing the lab down.")
        return 0
    except KeyboardInterrupt:
        print("\nInterrupted; tearing the lab down.", file=sys.stderr)
        return 130
    except (DemoError, LabError) as exc:
        print(f"agent.lab: demo failed: {exc}", file=sys.stderr)
        if lab is not None:
            for proc in lab.procs:
                tail = proc.log_text().strip().splitlines()[-5:]
                if tail:
                    print(f"--- {proc.name} log (last lines)\n" + "\n".join(tail), file=sys.stderr)
        return 1
    finally:
        if lab is not None:
            problems = lab.close()
            if problems:
                print(f"agent.lab: cleanup problems (run 'python -m agent.lab cleanup'): {problems}",
                      file=sys.stderr)
