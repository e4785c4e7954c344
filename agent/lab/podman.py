"""podman 4.3 with CNI in the lab's host namespaces, using ``overlay-cni``: private everything.

For the podman tests (tests/runtimes/test_podman_cni.py) and the runtime benchmark
(``bench.runtime_cni``).

Per lab host a directory under the lab's work directory holds podman's configuration
and data: ``containers.conf`` (CNI backend, our plugin directory first and Debian's
``/usr/lib/cni`` second, a private network-config directory whose conflists name the
agent's networks, cgroupfs, file events, a private tmp dir, and ``default_ulimits``
because podman's default open-files limit cannot be set without CAP_SYS_RESOURCE here),
``storage.conf`` (vfs, private graphroot/runroot), ``bin/overlay-cni`` (a symlink to the
installed console script: the install path a user makes in /opt/cni/bin or
/usr/lib/cni). podman runs through ``nsenter --net=/run/netns/HOST`` (not ``ip netns
exec``, which remounts /sys) with ``CONTAINERS_CONF`` and ``CONTAINERS_STORAGE_CONF``;
no daemon. Containers use ``--rootfs`` on a busybox directory (Debian's
busybox-static): no image, no registry.

What podman 4.3 touches outside those directories, and how ``close`` puts it back (it
never raises; it returns problems): container namespaces are bind mounts
``/run/netns/netns-<uuid>`` (new ones are removed after ``podman rm -af``); libcni
caches results in ``/var/lib/cni/results/<net>-<container id>-<ifname>`` (only our
containers' files are removed, and the directories if we created them); the SHM lock
segment ``/dev/shm/libpod_lock`` (removed if it was not there before). conmon
processes still running from our directories are killed by pid.
Owns: the per-host podman set-up, the client, and that tear-down. Does not: start
agents (``agent.lab.agentnode``) or create the agents' networks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.lab.agentnode import _program
from agent.lab.netlab import Host, Lab

PODMAN = "/usr/bin/podman"
BUSYBOX = "/bin/busybox"
STOCK_PLUGINS = "/usr/lib/cni"
CNI_CACHE = Path("/var/lib/cni")
SHM_LOCK = Path("/dev/shm/libpod_lock")
NETNS_DIR = Path("/run/netns")


class PodmanError(RuntimeError):
    """A podman command failed; the message has its stderr."""


def cni_program() -> list[str]:
    """The installed ``overlay-cni`` (console script next to this interpreter)."""
    return _program("overlay-cni", "agent.runtimes.cni.plugin")


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for path in (PODMAN, BUSYBOX, f"{STOCK_PLUGINS}/bridge", "/usr/bin/conmon", "/usr/bin/nsenter"):
        if not os.path.exists(path):
            return (f"{path} is missing (Debian packages podman, containernetworking-plugins, "
                    "busybox-static: make debs)")
    return None


def make_rootfs(root: Path) -> Path:
    """bin/busybox plus its applets as symlinks (``busybox --install -s``)."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for d in ("proc", "sys", "dev", "etc", "tmp", "run", "sbin", "usr/bin", "usr/sbin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    subprocess.run(["chroot", str(root), "/bin/busybox", "--install", "-s"], check=True, capture_output=True)
    return root


def conflist(name: str, network: str, socket: str, *, plugins: Sequence[dict[str, Any]] = (),
             **entry: Any) -> dict[str, Any]:
    """A network list for podman: ``overlay-cni`` first, then ``plugins`` (e.g. tuning)."""
    first = {"type": "overlay-cni", "network": network, "socket": socket, **entry}
    return {"cniVersion": "1.0.0", "name": name, "plugins": [first, *plugins]}


@dataclass
class Podman:
    index: int
    host: Host
    dir: Path

    @property
    def netdir(self) -> Path:
        return self.dir / "net.d"

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.dir),
                "CONTAINERS_CONF": str(self.dir / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.dir / "storage.conf"),
                "CONTAINERS_REGISTRIES_CONF": str(self.dir / "registries.conf")}


@dataclass
class PodmanHosts:
    """One podman set-up per lab host; ``sockets[i]`` is host i's agent control socket;
    ``close`` undoes everything (see the module docstring)."""

    lab: Lab
    sockets: list[str]
    root: Path
    hosts: list[Podman] = field(default_factory=list)
    rootfs: Path = Path()
    _netns_before: set[str] = field(default_factory=set)
    _had_cache: bool = False
    _had_lock: bool = False
    _containers: set[str] = field(default_factory=set)

    @classmethod
    def create(cls, lab: Lab, sockets: Sequence[str]) -> PodmanHosts:
        root = lab.workdir / "podman"
        pl = cls(lab, list(sockets), root,
                 _netns_before=set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set(),
                 _had_cache=CNI_CACHE.exists(), _had_lock=SHM_LOCK.exists())
        pl.rootfs = make_rootfs(root / "rootfs")
        plugin = Path(cni_program()[0])
        for i, host in enumerate(lab.hosts[: len(sockets)]):
            d = root / f"h{i}"
            for sub in ("bin", "net.d", "tmp", "graph", "run"):
                (d / sub).mkdir(parents=True)
            (d / "bin" / "overlay-cni").symlink_to(plugin)
            (d / "containers.conf").write_text(
                "[containers]\n"
                'default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n'
                "[network]\n"
                'network_backend = "cni"\n'
                f'cni_plugin_dirs = ["{d}/bin", "{STOCK_PLUGINS}"]\n'
                f'network_config_dir = "{d}/net.d"\n'
                "[engine]\n"
                'cgroup_manager = "cgroupfs"\n'
                'events_logger = "file"\n'
                f'events_logfile_path = "{d}/events.log"\n'
                f'tmp_dir = "{d}/tmp"\n')
            (d / "storage.conf").write_text(
                f'[storage]\ndriver = "vfs"\ngraphroot = "{d}/graph"\nrunroot = "{d}/run"\n')
            (d / "registries.conf").write_text("unqualified-search-registries = []\n")
            pl.hosts.append(Podman(i, host, d))
        return pl

    # -- configuration ------------------------------------------------------------------------
    def add_network(self, i: int, name: str, network: str | None = None, **entry: Any) -> None:
        """A conflist ``name`` on host i for the agent's network (default: the same name)."""
        body = conflist(name, network or name, self.sockets[i], **entry)
        (self.hosts[i].netdir / f"{name}.conflist").write_text(json.dumps(body, indent=1))

    def add_raw_network(self, i: int, name: str, body: dict[str, Any]) -> None:
        (self.hosts[i].netdir / f"{name}.conflist").write_text(json.dumps(body, indent=1))

    # -- podman ---------------------------------------------------------------------------------
    def podman(self, i: int, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        p = self.hosts[i]
        r = subprocess.run(["nsenter", f"--net={p.host.netns_path}", PODMAN, *args], env=p.env(),
                           capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise PodmanError(f"podman {' '.join(args)} on host{i} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def run(self, i: int, name: str, network: str, *cmd: str, detach: bool = True,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["run", "-d" if detach else "--rm", "--name", name, "--network", network,
                "--rootfs", str(self.rootfs)]  # the rootfs is the image: every option before it
        r = self.podman(i, *argv, "/bin/busybox", *(cmd or ("sleep", "100000")), check=check)
        if detach and r.returncode == 0:
            self._containers.add(r.stdout.strip())
        return r

    def container_id(self, i: int, name: str) -> str:
        return self.podman(i, "inspect", "--format", "{{.Id}}", name).stdout.strip()

    def exec(self, i: int, name: str, argv: Sequence[str], check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.podman(i, "exec", name, "/bin/busybox", *argv, check=check)

    def ip_of(self, i: int, name: str, ifname: str = "eth0") -> str:
        out = self.exec(i, name, ["ip", "-4", "-o", "addr", "show", "dev", ifname], check=True).stdout
        return out.split(" inet ", 1)[1].split("/", 1)[0]

    def links(self, i: int, name: str) -> str:
        return self.exec(i, name, ["ip", "-o", "link"], check=True).stdout

    def ping(self, i: int, name: str, ip: str, count: int = 3) -> bool:
        r = self.exec(i, name, ["ping", "-c", str(count), "-W", "2", ip])
        return " 0% packet loss" in r.stdout

    # -- tear-down ------------------------------------------------------------------------------
    def close(self) -> list[str]:
        problems: list[str] = []
        for i in range(len(self.hosts)):
            with contextlib.suppress(subprocess.TimeoutExpired, PodmanError, OSError):
                ids = self.podman(i, "ps", "-aq", "--no-trunc", check=False).stdout.split()
                self._containers.update(ids)
                self.podman(i, "rm", "-af", "-t", "0", check=False)
        self._kill_ours(problems)
        for name in sorted(set(os.listdir(NETNS_DIR)) - self._netns_before if NETNS_DIR.is_dir() else ()):
            if name.startswith("netns-"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
                if (NETNS_DIR / name).exists():
                    problems.append(f"namespace {name} left behind")
        results = CNI_CACHE / "results"
        if results.is_dir():
            for f in results.iterdir():
                if any(cid in f.name for cid in self._containers if cid):
                    f.unlink(missing_ok=True)
        if not self._had_cache and CNI_CACHE.exists():
            with contextlib.suppress(OSError):
                for sub in sorted(CNI_CACHE.rglob("*"), reverse=True):
                    sub.rmdir()
                CNI_CACHE.rmdir()
            if CNI_CACHE.exists():
                problems.append(f"{CNI_CACHE} not empty after the test: {sorted(map(str, CNI_CACHE.rglob('*')))}")
        if not self._had_lock:
            SHM_LOCK.unlink(missing_ok=True)
        for line in Path("/proc/self/mounts").read_text().splitlines():
            mnt = line.split()[1]
            if mnt.startswith(str(self.root)):
                subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
                problems.append(f"mount {mnt} was left (unmounted lazily)")
        return problems

    def _kill_ours(self, problems: list[str]) -> None:
        """conmon (and anything else) still running with our directory on its command line."""
        mine = str(self.root)
        deadline = time.monotonic() + 10
        while True:
            pids = []
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if mine.encode() in cmd and int(entry) != os.getpid():
                    pids.append(int(entry))
            if not pids:
                return
            if time.monotonic() > deadline:
                problems.append(f"processes {pids} survived SIGKILL")
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
