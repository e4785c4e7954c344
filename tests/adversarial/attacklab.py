"""Real agents in a namespace lab with an attacker host beside them (the adversarial tier's harness).

``AttackLab`` puts N agents (``tests.netns.overlaylab.OverlayLab``) on a lab underlay
plus two hosts without an agent: the *attacker* (sends crafted UDP and TCP from its
own namespace and address, 192.0.2.x) and the *joiner* (where ``assert_healthy`` starts
a brand-new agent that must still be able to join). ``with_network`` gives every agent
a container with one endpoint on one overlay network, so an attack can be checked to
leave the tables and the kernel (FDB, neighbours) as they were.

``assert_healthy`` is the tier's verdict after every attack: every agent still runs,
answers ``members`` and sees every other agent alive; a new agent joins through host0;
the tables and kernels equal the snapshot taken before the attack; each agent's VmRSS
(``/proc/PID/status`` of the process this harness started) grew by at most a slack.
Every wait has a deadline; nothing sleeps and hopes.

Owns: the attack helpers (UDP from the attacker with an in-order barrier, TCP streams,
idle-connection hammering) and the health verdict. Does not: build bytes
(``tests.adversarial.craft``) or own the lab's lifetime (the fixtures in conftest.py tear
it down, also on failure).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from agent.lab.agentnode import agent_argv
from agent.lab.netlab import Host, Lab, LabProc
from crypto.keyring import Keyring
from gossip.wire import codec
from gossip.wire.messages import Ping
from tests.netns.overlaylab import WAIT, OverlayLab, wait_for

MiB = 1024
"""VmRSS is read in KiB: one MiB of it."""
RSS_SLACK_MIB = 64
"""How much an agent's RSS may grow over an attack (the attacks that broke it grew it by
hundreds of MiB to GiB; a healthy agent moves by a few)."""
NETWORK = "adv"
SUBNET = "10.77.0.0/24"
_joiners = itertools.count(1)


def status_line(proc: LabProc) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``proc`` in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{proc.pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


class AttackLab:
    """Agents on hosts 0..n-1, the attacker and the joiner on the two hosts after them."""

    def __init__(self, lab: Lab, agents: int = 2, *, extra: Sequence[str] = (),
                 join_extra: Sequence[str] = ()) -> None:
        self.lab = lab
        lab.add_hosts(agents + 2 - len(lab.hosts))
        self.ol = OverlayLab(lab, hosts=lab.hosts[:agents], extra=extra)
        self.attacker: Host = lab.hosts[agents]
        self.joiner_host: Host = lab.hosts[agents + 1]
        self.join_extra = list(join_extra)
        self.vni = 0
        self.containers: list[str] = []
        self._seq = itertools.count(1)
        self.keyring: Keyring | None = None
        """The cluster's gossip keyring, if it has one (the barrier ping must be sealed)."""

    @property
    def n(self) -> int:
        return len(self.ol.nodes)

    def addr(self, i: int) -> str:
        return self.ol.nodes[i].host.addr

    def proc(self, i: int) -> LabProc:
        proc = self.ol.nodes[i].proc
        assert proc is not None
        return proc

    def start(self) -> AttackLab:
        self.ol.start_all()
        return self

    def with_network(self) -> AttackLab:
        """A network and one endpoint per agent; waits until every kernel holds the others'."""
        net = self.ol.create_network(0, NETWORK, "--subnet", SUBNET)
        self.vni = int(net["Options"]["com.docker.network.driver.overlay.vxlanid_list"])
        eps = []
        for i in range(self.n):
            c = self.ol.container(f"a{i}")
            self.containers.append(c)
            eps.append(self.ol.create_endpoint(i, NETWORK, c))
        for i in range(self.n):
            others = [e for e in eps if e["node"] != self.ol.nodes[i].name]
            wait_for(lambda i=i, others=others: self.ol.entries_for(i, self.vni, others),
                     f"{self.ol.nodes[i].name}'s kernel to hold the other endpoints")
        return self

    # -- observing -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Tables and kernel state of every agent (what an attack must not change)."""
        out: dict[str, Any] = {}
        for i in range(self.n):
            eps = sorted((e["id"], e["node"], e["mac"], e["ipv4"], e["vtep"]) for e in self.ol.endpoints(i))
            nets = sorted((n["ID"] if "ID" in n else n.get("id"), n.get("Name", n.get("name")))
                          for n in self.ol.request(i, "network", {"action": "ls"}))
            kernel = (self.ol.fdb(i, self.vni), self.ol.neigh(i, self.vni)) if self.vni else None
            out[self.ol.nodes[i].name] = {"endpoints": eps, "networks": nets, "kernel": kernel}
        return out

    def rss(self) -> list[int]:
        return [status_line(self.proc(i))["VmRSS"] for i in range(self.n)]

    def incarnation(self, seen_by: int, name: str) -> int | None:
        return next((int(m["incarnation"]) for m in self.ol.members(seen_by) if m["name"] == name), None)

    # -- attacking -------------------------------------------------------------------------------
    def udp_socket(self) -> socket.socket:
        s = self.lab.socket(self.attacker, socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((self.attacker.addr, 0))
        return s

    def udp(self, datagrams: Sequence[bytes], to: int = 0, *, pace: int = 200) -> None:
        """Send every datagram to agent ``to`` from the attacker, then wait until the
        agent has handled them all (``barrier``). ``pace``: datagrams per burst between
        barriers, so the agent's socket buffer is not what drops them."""
        with self.udp_socket() as s:
            for k in range(0, len(datagrams), pace):
                for d in datagrams[k:k + pace]:
                    with contextlib.suppress(OSError):  # EMSGSIZE etc.: the datagram is the attack
                        s.sendto(d, (self.addr(to), 7946))
                self.barrier(to, s)

    def barrier(self, to: int, s: socket.socket | None = None) -> None:
        """A ping from the attacker's address answered by an ack: the agent handles
        datagrams in order, so everything sent before it has been handled."""
        own = s is None
        sock = self.udp_socket() if s is None else s
        try:
            deadline = time.monotonic() + WAIT
            seq = next(self._seq)
            ping = codec.encode_packet([codec.encode(Ping(seq, self.ol.nodes[to].name))], compress=False,
                                       crc=False, keyring=self.keyring)
            while time.monotonic() < deadline:
                sock.sendto(ping, (self.addr(to), 7946))
                sock.settimeout(1.0)
                try:
                    while True:
                        data, _ = sock.recvfrom(65536)
                        with contextlib.suppress(Exception):
                            if any(getattr(m, "seq_no", None) == seq
                                   for m in codec.decode_packet(data, self.keyring, require_encryption=False)):
                                return
                except TimeoutError:
                    self.ol.check_running(to)
            pytest.fail(f"{self.ol.nodes[to].name} never acked the barrier ping")
        finally:
            if own:
                sock.close()

    def tcp(self, to: int = 0) -> socket.socket:
        s = self.lab.socket(self.attacker, socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(WAIT)
        s.connect((self.addr(to), 7946))
        return s

    def send_stream(self, data: bytes, to: int = 0) -> bytes:
        """One TCP stream: send ``data`` (the agent may close it early) and read until
        the agent closes; returns what it answered."""
        with self.tcp(to) as s:
            with contextlib.suppress(OSError):
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)  # the end of what we send: no waiting for a timeout
            reply = b""
            with contextlib.suppress(OSError):
                while chunk := s.recv(65536):
                    reply += chunk
            return reply

    # -- the verdict -----------------------------------------------------------------------------
    def join_new_agent(self, through: int = 0) -> None:
        """A brand-new agent on the joiner host joins through agent ``through``; both
        sides must see each other alive; then it leaves and is stopped."""
        name = f"joiner{next(_joiners)}"
        argv = agent_argv(name, self.joiner_host.addr, str(self.lab.workdir / f"{name}.sock"),
                          join=[self.addr(through)], leave_on_terminate=True,
                          extra=["--no-dataplane", *self.join_extra])
        proc = self.lab.spawn(self.joiner_host, argv, name=name)
        try:
            wait_for(lambda: self.ol.status_of(through, name) == "alive" or not proc.running(),
                     f"{name} to join through {self.ol.nodes[through].name}")
            assert proc.running(), proc.log_text()[-2000:]
        finally:
            self.lab.stop(proc, signal.SIGTERM)

    def assert_healthy(self, before: dict[str, Any] | None = None, rss: Sequence[int] | None = None, *,
                       join_through: int = 0, rss_slack_mib: int = RSS_SLACK_MIB) -> None:
        names = {n.name for n in self.ol.nodes}
        for i in range(self.n):
            self.ol.check_running(i)
            log = self.ol.log(i)
            at = log.find("Traceback")
            assert at < 0, f"{self.ol.nodes[i].name} logged an internal error:\n{log[max(0, at - 1500):at + 3000]}"
            wait_for(lambda i=i: names <= {m["name"] for m in self.ol.members(i) if m["status"] == "alive"},
                     f"{self.ol.nodes[i].name} to answer members and see every agent alive")
        if rss is not None:
            now = self.rss()
            for i in range(self.n):
                grew = (now[i] - rss[i]) / MiB
                assert grew <= rss_slack_mib, \
                    f"{self.ol.nodes[i].name}'s RSS grew by {grew:.0f} MiB ({rss[i] // MiB} -> {now[i] // MiB} MiB)"
        self.join_new_agent(join_through)
        if before is not None:
            after = self.snapshot()
            assert after == before, f"state changed:\nbefore {before}\nafter  {after}"


def mortal_namespace(lab: Lab, tag: str) -> str:
    """A namespace the lab holds no descriptor of (``ip netns del`` really frees it);
    named with the lab's prefix so a leak check sees it; delete it with ``drop_namespace``."""
    import subprocess

    name = f"{lab.prefix}-m{tag}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30)
    return name


def drop_namespace(name: str) -> None:
    import subprocess

    if os.path.exists(f"/run/netns/{name}"):
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=30)


class Hammer:
    """A background thread that keeps ``count`` TCP connections from the attacker to an
    agent open, reconnecting whatever the agent closes (issue 18 item 4)."""

    def __init__(self, al: AttackLab, to: int, count: int) -> None:
        self.al, self.to, self.count = al, to, count
        self.stop = threading.Event()
        self.connects = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Hammer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def _connect(self) -> socket.socket | None:
        s = self.al.lab.socket(self.al.attacker, socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError, OSError):
            s.connect((self.al.addr(self.to), 7946))
        self.connects += 1
        return s

    def _run(self) -> None:
        import select

        socks: list[socket.socket] = []
        try:
            while not self.stop.is_set():
                while len(socks) < self.count:
                    s = self._connect()
                    if s is not None:
                        socks.append(s)
                readable, _, _ = select.select(socks, [], [], 0.05)
                for s in readable:
                    try:
                        closed = s.recv(4096) == b""
                    except BlockingIOError:
                        closed = False
                    except OSError:
                        closed = True
                    if closed:
                        socks.remove(s)
                        s.close()
                time.sleep(0.002)  # reconnects are fast but not a busy loop
        finally:
            for s in socks:
                s.close()
