"""Network-namespace lab: an underlay bridge, N hosts on it, processes inside them.

Owns: creating and deleting the lab's namespaces, links, addresses and static
neighbour entries; launching processes inside a host (setns in the child, so the
recorded pid is the program's own); partitions between sets of hosts; a state
file per lab so that ``python -m agent.lab.cleanup [PREFIX]`` (``agent.lab.cleanup``)
can remove what a killed harness left behind. Used by the demo (``agent.lab.demo``),
the netns/interop/vm tests and the benchmarks; VXLAN hosts run on the same underlay.
Does not know about serf or our agent (``bench.serfnode``, ``agent.lab.agentnode``).

Topology (all outside the root namespace, which gets no interface or route):
  ``PREFIX-hub``  bridge ``br0``, port ``vI`` per host, plus a dead-end ``sink`` port
  ``PREFIX-I``    ``eth0`` (veth peer of ``vI``) with ADDR/PREFIXLEN, ``lo`` up,
                  IPv6 off, permanent neighbour entries for every other host.
IPv6 off and static neighbours are needed at scale (docs/benchmarks.md, "The serf
baseline", testbed pitfalls): with many ports on one bridge, router solicitations,
MLD and ARP floods overflow the kernel's input backlog and 100 serf agents never
converged.

Partitions: this kernel has nftables but no ``nft``/``iptables``/``ebtables``
binaries, and tc has no drop action (no act_gact/flower). So a cut is made in
the neighbour tables: on each side the permanent entry for a peer on the other
side is rewritten to the sink MAC, which the bridge forwards to the ``sink``
port whose veth peer is down, i.e. drops it. Both UDP and TCP to the peer then
vanish silently (no ICMP, no RST), like a real partition; ``heal`` restores the
true MACs. VXLAN traffic between hosts is cut the same way.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import itertools
import json
import os
import shutil
import signal
import socket as _socket
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.lab import procstat
from agent.lab.netns import netns_path, preexec_setns, socket_in, write_sysctl

NAME_BASE = "olab"
STATE_ROOT = Path("/run/overlay-lab")
BRIDGE = "br0"
HOST_IFNAME = "eth0"
SINK_PORT = "sink"
SINK_MAC = "02:6f:6c:ff:ff:ff"
DEFAULT_SUBNET = "192.0.2.0/24"

_counter = itertools.count()
_open_labs: weakref.WeakSet[Lab] = weakref.WeakSet()


class LabError(RuntimeError):
    """A lab operation failed; the message holds the command and its stderr."""


def host_mac(index: int) -> str:
    """Deterministic locally administered MAC of host ``index`` (never SINK_MAC)."""
    b = index.to_bytes(3, "big")
    return f"02:6f:6c:{b[0]:02x}:{b[1]:02x}:{b[2]:02x}"


def _run(argv: Sequence[str], *, stdin: str | None = None, timeout: float = 60.0) -> None:
    r = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if r.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed (rc={r.returncode}): {r.stderr.strip()}")


@dataclass(frozen=True, slots=True)
class Host:
    """One host namespace on the underlay bridge."""

    index: int
    netns: str
    addr: str
    prefixlen: int
    mac: str
    port: str
    """Name of the host's bridge port in the hub namespace."""
    ifname: str = HOST_IFNAME

    @property
    def netns_path(self) -> str:
        return netns_path(self.netns)


@dataclass(slots=True)
class LabProc:
    """A process the lab started inside a host; ``pid`` is the program's own pid."""

    name: str
    host: Host
    argv: list[str]
    popen: subprocess.Popen[bytes]
    started: int | None
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


@dataclass
class _State:
    prefix: str
    workdir: str
    owner_pid: int
    owner_start: int | None
    namespaces: list[str] = field(default_factory=list)
    pids: list[tuple[int, int | None]] = field(default_factory=list)


class Lab:
    """A bridge in a hub namespace plus host namespaces; use as a context manager.

    Everything is torn down by ``close()`` (idempotent): processes get SIGKILL by
    pid, then every namespace this lab made is deleted, then its work directory
    (logs, sockets) unless ``keep_workdir``.
    """

    def __init__(
        self,
        hosts: int = 0,
        *,
        subnet: str = DEFAULT_SUBNET,
        prefix: str | None = None,
        keep_workdir: bool = False,
        state_root: Path = STATE_ROOT,
    ) -> None:
        if os.geteuid() != 0:
            raise LabError("the namespace lab needs root")
        self.prefix = prefix or f"{NAME_BASE}{os.getpid():x}x{next(_counter)}"
        self.net = ipaddress.IPv4Network(subnet)
        self.hub = f"{self.prefix}-hub"
        self.hosts: list[Host] = []
        self.procs: list[LabProc] = []
        self.keep_workdir = keep_workdir
        self._fds: dict[str, int] = {}
        self._cuts: set[tuple[int, int]] = set()
        self._closed = False
        self._state_root = state_root
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-", dir="/tmp"))
        (self.workdir / "logs").mkdir()
        self._state = _State(
            prefix=self.prefix,
            workdir=str(self.workdir),
            owner_pid=os.getpid(),
            owner_start=procstat.start_time(os.getpid()),
        )
        _open_labs.add(self)
        try:
            self._make_hub()
            if hosts:
                self.add_hosts(hosts)
        except BaseException:
            self.close()
            raise

    # -- context manager ---------------------------------------------------------------
    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state file ----------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self._state_root / f"{self.prefix}.json"

    def _save_state(self) -> None:
        self._state_root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state.__dict__), encoding="utf-8")
        os.replace(tmp, self.state_path)

    # -- namespaces --------------------------------------------------------------------------
    def add_namespaces(self, names: list[str]) -> None:
        """Create namespaces owned by the lab (its hosts, or "containers" a test or the
        demo adds): recorded in the state file, deleted with the lab."""
        # Record first: a harness killed between the two steps still leaves a trail.
        self._state.namespaces.extend(names)
        self._save_state()
        _run(["ip", "-batch", "-"], stdin="".join(f"netns add {n}\n" for n in names))
        for n in names:
            self._fds[n] = os.open(netns_path(n), os.O_RDONLY | os.O_CLOEXEC)
            # IPv6 off before any interface exists: no RS/MLD/DAD floods on the bridge.
            for scope in ("all", "default"):
                write_sysctl(netns_path(n), f"net/ipv6/conf/{scope}/disable_ipv6", "1")

    def _make_hub(self) -> None:
        self.add_namespaces([self.hub])
        self.batch(
            self.hub,
            [
                f"link add {BRIDGE} type bridge",
                f"link set {BRIDGE} up",
                # The sink: a bridge port whose veth peer stays down, so frames sent
                # to it are dropped by the bridge (see module docstring).
                f"link add {SINK_PORT} type veth peer name {SINK_PORT}peer",
                f"link set {SINK_PORT} master {BRIDGE} up",
            ],
        )
        _run(
            ["bridge", "-n", self.hub, "fdb", "add", SINK_MAC, "dev", SINK_PORT, "master", "static"]
        )

    def _address(self, index: int) -> str:
        addr = self.net.network_address + 1 + index
        if addr >= self.net.broadcast_address:
            raise LabError(f"subnet {self.net} has no room for host {index}")
        return str(addr)

    def add_hosts(self, count: int) -> list[Host]:
        """Create ``count`` more hosts on the bridge; every host knows every MAC."""
        first = len(self.hosts)
        new = [
            Host(
                index=i,
                netns=f"{self.prefix}-{i}",
                addr=self._address(i),
                prefixlen=self.net.prefixlen,
                mac=host_mac(i + 1),
                port=f"v{i}",
            )
            for i in range(first, first + count)
        ]
        self.add_namespaces([h.netns for h in new])
        hub_lines: list[str] = []
        for h in new:
            # Both veth ends are created inside lab namespaces: the root namespace is untouched.
            hub_lines.append(
                f"link add {h.port} type veth peer name {h.ifname} address {h.mac} netns {h.netns}"
            )
            hub_lines.append(f"link set {h.port} master {BRIDGE} up")
        self.batch(self.hub, hub_lines)
        self.hosts.extend(new)
        for h in new:
            self.batch(
                h,
                [
                    "link set lo up",
                    f"addr add {h.addr}/{h.prefixlen} dev {h.ifname}",
                    f"link set {h.ifname} up",
                ],
            )
        # New hosts learn everyone; old hosts learn the new ones.
        self._write_neighbours(new, only=None)
        if first:
            self._write_neighbours(self.hosts[:first], only=new)
        return new

    def _neighbour_mac(self, me: Host, peer: Host) -> str:
        return SINK_MAC if (me.index, peer.index) in self._cuts else peer.mac

    def _write_neighbours(self, hosts: Iterable[Host], only: Sequence[Host] | None) -> None:
        """Rewrite permanent neighbour entries on ``hosts`` (for ``only`` peers, or all)."""
        peers = list(only) if only is not None else self.hosts
        for h in hosts:
            lines = [
                f"neigh replace {p.addr} lladdr {self._neighbour_mac(h, p)} dev {h.ifname} nud permanent"
                for p in peers
                if p.index != h.index
            ]
            if lines:
                self.batch(h, lines)

    # -- commands inside namespaces ---------------------------------------------------------
    def _ns_name(self, where: Host | str) -> str:
        return where.netns if isinstance(where, Host) else where

    def batch(self, where: Host | str, lines: Sequence[str]) -> None:
        """Run iproute2 ``ip`` commands (without the leading ``ip``) in one process."""
        _run(
            ["ip", "-n", self._ns_name(where), "-batch", "-"],
            stdin="".join(f"{x}\n" for x in lines),
        )

    def run(
        self,
        where: Host | str,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command inside a namespace and wait for it (killed on timeout)."""
        fd = self._fds[self._ns_name(where)]
        r = subprocess.run(
            list(argv),
            preexec_fn=preexec_setns(fd),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and r.returncode != 0:
            raise LabError(
                f"in {self._ns_name(where)}: {' '.join(argv)} failed (rc={r.returncode}): "
                f"{r.stderr.strip()}"
            )
        return r

    def socket(self, where: Host | str, family: int, kind: int) -> _socket.socket:
        """A socket created inside a namespace (e.g. to reach 127.0.0.1 of that host)."""
        return socket_in(netns_path(self._ns_name(where)), family, kind)

    # -- processes ---------------------------------------------------------------------------
    def spawn(
        self,
        host: Host,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> LabProc:
        """Start a long-running process inside ``host``; stdout+stderr go to its log file."""
        if self._closed:
            raise LabError("lab is closed")
        log_path = self.workdir / "logs" / f"{name}.log"
        # Agents keep per-boot secrets (IPsec keys) under $RUNTIME_DIRECTORY, else in
        # /run/overlay-agent: point them into the work directory, which close() removes.
        run_env = dict(os.environ) if env is None else dict(env)
        if env is None or "RUNTIME_DIRECTORY" not in env:
            run_env["RUNTIME_DIRECTORY"] = str(self.workdir / "run")
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                list(argv),
                preexec_fn=preexec_setns(self._fds[host.netns]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C on the harness's terminal does not reach the
                # agents; the harness kills them itself, by pid.
                start_new_session=True,
                env=run_env,
                cwd=cwd,
            )
        proc = LabProc(name, host, list(argv), popen, procstat.start_time(popen.pid), log_path)
        self.procs.append(proc)
        self._state.pids.append((popen.pid, proc.started))
        self._save_state()
        return proc

    def send_signal(self, proc: LabProc, sig: int) -> None:
        if proc.running():
            os.kill(proc.pid, sig)

    def kill(self, proc: LabProc) -> None:
        """SIGKILL and reap."""
        self.send_signal(proc, signal.SIGKILL)
        proc.popen.wait(timeout=10)

    def stop(self, proc: LabProc, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Send ``sig`` and wait up to ``timeout``; returns the exit code (None: had to SIGKILL)."""
        self.send_signal(proc, sig)
        try:
            return proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            return None

    # -- partitions --------------------------------------------------------------------------
    def cut(self, side_a: Iterable[Host], side_b: Iterable[Host]) -> None:
        """Drop all traffic between every host of ``side_a`` and every host of ``side_b``."""
        a, b = list(side_a), list(side_b)
        if {h.index for h in a} & {h.index for h in b}:
            raise LabError("a host cannot be on both sides of a cut")
        for x in a:
            for y in b:
                self._cuts.add((x.index, y.index))
                self._cuts.add((y.index, x.index))
        self._write_neighbours(a, only=b)
        self._write_neighbours(b, only=a)

    def isolate(self, host: Host) -> None:
        self.cut([host], [h for h in self.hosts if h.index != host.index])

    def heal(self) -> None:
        """Remove every cut."""
        touched = sorted({i for pair in self._cuts for i in pair})
        self._cuts.clear()
        self._write_neighbours([self.hosts[i] for i in touched], only=None)

    # -- teardown ------------------------------------------------------------------------------
    def close(self) -> list[str]:
        """Kill every process, delete every namespace, remove the work directory.

        Never raises: problems are returned (and printed to stderr) so that a
        cleanup in a ``finally`` cannot hide the original failure.
        """
        if self._closed:
            return []
        self._closed = True
        problems: list[str] = []
        for proc in self.procs:
            try:
                if proc.running():
                    os.kill(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired) as e:
                problems.append(f"process {proc.name} pid {proc.pid}: {e}")
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        if self._state.namespaces:
            r = subprocess.run(
                ["ip", "-force", "-batch", "-"],
                input="".join(f"netns del {n}\n" for n in reversed(self._state.namespaces)),
                capture_output=True,
                text=True,
                check=False,
            )
            leftovers = [n for n in self._state.namespaces if os.path.exists(netns_path(n))]
            if leftovers:
                problems.append(f"namespaces not deleted: {leftovers} ({r.stderr.strip()})")
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if not problems:
            with contextlib.suppress(OSError):
                self.state_path.unlink()
        for p in problems:
            print(f"lab {self.prefix}: {p}", file=sys.stderr)
        return problems


@atexit.register
def _close_open_labs() -> None:
    for lab in list(_open_labs):
        lab.close()
