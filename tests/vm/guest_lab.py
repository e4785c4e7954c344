"""Runs inside the test VM: hosts in namespaces, a VXLAN overlay, and a minimal key agent.

Owns: the in-VM topology (namespace ``PREFIX-hub`` with bridge ``br0``; hosts
``PREFIX-I`` with ``eth0`` 192.0.2.I/24 on it, ``vx0`` VXLAN VNI 100 on UDP 4789
without learning, bridged into ``br0`` carrying 10.10.0.I/24 and a fixed MAC, static
FDB and neighbour entries for every peer), built with plain iproute2 in one
``ip -batch``/``bridge -batch`` per namespace (each process start costs ~0.1 s
under TCG); ping helpers; and ``KeyAgent``, which does per host what the real
agent's IPsec part does: keep per-epoch X25519 keys, publish the public halves on
a shared board (standing in for the gossip tables, with a visibility delay), derive
pair SAs with crypto/ipsec.py and converge the kernel with dataplane/xfrm/.
Does not: assert anything (tests/vm/guest_xfrm.py, bench/ipsec.py do).
Only used inside the throwaway VM: nothing here runs on the host.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from crypto import ipsec
from dataplane.xfrm import codec
from dataplane.xfrm.compile import desired_xfrm
from dataplane.xfrm.kernel import XfrmSocket
from dataplane.xfrm.model import XfrmPolicy, XfrmState
from dataplane.xfrm.plan import sync_requests

VNI = 100
VXLAN_MTU_PLAIN = 1450


def underlay(i: int) -> str:
    return f"192.0.2.{i}"


def overlay(i: int) -> str:
    return f"10.10.0.{i}"


def mac(i: int) -> str:
    return f"02:00:00:00:01:{i:02x}"


def sh(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout + proc.stderr


@dataclass
class Lab:
    hosts: int = 3
    prefix: str = "ovm"
    mtu: int = VXLAN_MTU_PLAIN

    def ns(self, i: int) -> str:
        return f"{self.prefix}-{i}"

    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    def build(self) -> None:
        names = [self.hub] + [self.ns(i) for i in range(1, self.hosts + 1)]
        sh(["ip", "-batch", "-"], stdin="".join(f"netns add {n}\n" for n in names))
        hub = ["link add br0 type bridge", "link set br0 up", "link set lo up"]
        for i in range(1, self.hosts + 1):
            hub += [
                f"link add p{i} type veth peer name eth0 netns {self.ns(i)}",
                f"link set p{i} master br0 up",
            ]
        sh(["ip", "-n", self.hub, "-batch", "-"], stdin="\n".join(hub) + "\n")
        for i in range(1, self.hosts + 1):
            n = self.ns(i)
            # IPv6 off: no router solicitations or ND in the captures.
            sh(["ip", "netns", "exec", n, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])
            cmds = [
                "link set lo up",
                f"addr add {underlay(i)}/24 dev eth0",
                "link set eth0 up",
                "link add br0 type bridge",
                f"link set br0 address {mac(i)} mtu {self.mtu}",
                f"link add vx0 type vxlan id {VNI} dstport 4789 local {underlay(i)} dev eth0 "
                "nolearning",
                f"link set vx0 master br0 mtu {self.mtu} up",
                f"addr add {overlay(i)}/24 dev br0",
                "link set br0 up",
            ]
            fdb = []
            for j in range(1, self.hosts + 1):
                if j == i:
                    continue
                cmds.append(f"neigh replace {overlay(j)} lladdr {mac(j)} dev br0 nud permanent")
                fdb += [
                    f"fdb append 00:00:00:00:00:00 dev vx0 dst {underlay(j)} self permanent",
                    f"fdb replace {mac(j)} dev vx0 dst {underlay(j)} self permanent",
                ]
            sh(["ip", "-n", n, "-batch", "-"], stdin="\n".join(cmds) + "\n")
            sh(["bridge", "-n", n, "-batch", "-"], stdin="\n".join(fdb) + "\n")

    def ping_argv(
        self,
        i: int,
        j: int,
        count: int,
        interval: float = 0.2,
        size: int | None = None,
        pattern: str | None = None,
        dont_fragment: bool = False,
        wait: float = 2.0,
    ) -> list[str]:
        argv = ["ip", "netns", "exec", self.ns(i), "ping", "-n", "-q", "-c", str(count)]
        argv += ["-i", str(interval), "-W", str(wait)]
        if size is not None:
            argv += ["-s", str(size)]
        if pattern is not None:
            argv += ["-p", pattern]
        if dont_fragment:
            argv += ["-M", "do"]
        return [*argv, overlay(j)]

    def ping(self, i: int, j: int, count: int, **kw: object) -> tuple[int, int, str]:
        out = sh(self.ping_argv(i, j, count, **kw), check=False)  # type: ignore[arg-type]
        return (*ping_counts(out), out)


def ping_counts(output: str) -> tuple[int, int]:
    """(transmitted, received) from iputils ping's summary; (0, 0) if there is none."""
    m = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def xfrm_stat(ns: str) -> dict[str, int]:
    out = sh(["ip", "netns", "exec", ns, "cat", "/proc/net/xfrm_stat"])
    return {k: int(v) for k, v in (line.split() for line in out.splitlines() if line.strip())}


# ------------------------------------------------------------------- agent


@dataclass
class Board:
    """Stands in for the replicated tables: host -> epoch -> (public key, visible at)."""

    delay: float = 0.0
    rows: dict[str, dict[int, tuple[bytes, float]]] = field(default_factory=dict)

    def publish(self, host: str, epoch: int, public: bytes, now: float) -> None:
        self.rows.setdefault(host, {})[epoch] = (public, now + self.delay)

    def retract(self, host: str, keep: Sequence[int]) -> None:
        mine = self.rows.get(host, {})
        for e in [e for e in mine if e not in keep]:
            del mine[e]

    def view(self, now: float) -> dict[str, dict[int, bytes]]:
        return {
            h: {e: pub for e, (pub, at) in rows.items() if at <= now}
            for h, rows in self.rows.items()
        }


@dataclass
class KeyAgent:
    """One host's IPsec loop: keys per epoch, publish, derive, converge the kernel."""

    addr: str
    netns: str
    board: Board
    policy: ipsec.RotationPolicy
    peers: list[str]
    skew: float = 0.0  # this host's clock minus true time
    random_bytes: Callable[[int], bytes] = os.urandom
    keys: dict[int, ipsec.EpochKey] = field(default_factory=dict)
    sock: XfrmSocket | None = None
    applied: int = 0  # requests sent so far
    deleted_states: int = 0
    last_send: dict[str, int] = field(default_factory=dict)  # peer -> send SPI

    def open(self) -> None:
        self.sock = XfrmSocket.open(self.netns)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def rotate_keys(self, true_now: float) -> None:
        now = true_now + self.skew
        keep = ipsec.epochs_to_keep(now, self.policy)
        for epoch in ipsec.epochs_to_publish(now, self.policy):
            if epoch not in self.keys:
                self.keys[epoch] = ipsec.EpochKey.generate(epoch, self.random_bytes)
                self.board.publish(self.addr, epoch, self.keys[epoch].public, true_now)
        for epoch in [e for e in self.keys if e not in keep]:
            del self.keys[epoch]  # forward secrecy: the private half is gone
        self.board.retract(self.addr, keep)

    def desired(
        self, true_now: float
    ) -> tuple[list[XfrmState], list[XfrmPolicy], list[ipsec.PairSAs]]:
        """What the kernel should hold; rotation follows this host's (skewed) clock,
        key visibility follows true time (gossip delay)."""
        now = true_now + self.skew
        view = self.board.view(true_now)
        spis = ipsec.SpiTable([self.addr, *view])
        pairs = [
            ipsec.pair_sas(self.addr, self.keys, p, view.get(p, {}), now, self.policy, spis)
            for p in self.peers
            if p in view
        ]
        states, policies = desired_xfrm(self.addr, pairs)
        return states, policies, pairs

    def tick(self, true_now: float) -> list[codec.Request]:
        """One reconcile pass; returns the requests it had to send (none when converged)."""
        assert self.sock is not None
        self.rotate_keys(true_now)
        states, policies, pairs = self.desired(true_now)
        reqs = sync_requests(
            states, policies, self.sock.dump_states(), self.sock.dump_policies()
        )
        errors = [e for e in self.sock.apply(reqs) if e is not None]
        if errors:
            raise RuntimeError(f"{self.netns}: {'; '.join(map(str, errors))}")
        self.applied += len(reqs)
        self.deleted_states += sum(r.type == codec.XFRM_MSG_DELSA for r in reqs)
        for pair in pairs:
            if pair.send is not None:
                self.last_send[pair.peer] = pair.send.spi
        return reqs
