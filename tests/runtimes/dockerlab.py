"""Real dockerd daemons in the lab's host namespaces, each using its host agent's Docker plugin.

Every lab host runs its own ``dockerd`` (Debian's docker.io, started by hand) with a
private ``--data-root``, ``--exec-root``, ``--pidfile`` and API socket, and with
everything that would touch the machine off (``--iptables=false --ip6tables=false
--ip-forward=false --bridge=none``, vfs storage), plus ``--live-restore`` so a dockerd
restart keeps containers running. dockerd starts its own containerd under the
exec-root. The client is Debian's ``/usr/bin/docker`` by absolute path (another
``docker`` may come first on PATH) with ``-H unix://...`` and a private
``DOCKER_CONFIG``.

Docker's plugin directory ``/run/docker/plugins`` is machine-wide, so every host's
agent serves a uniquely named plugin there (``<lab prefix>-h<i>``).

The image is a busybox rootfs (Debian's busybox-static, relative applet symlinks)
imported with ``docker import``: no registry.

Tear-down (``DockerLab.close``, never raises, returns problems): containers removed,
dockerd stopped by pid (SIGTERM, then SIGKILL), then every process still running from
our exec-root (containerd, shims) killed by pid, mounts under our directories
unmounted, our plugin sockets removed, and whatever of ``/run/docker``,
``/run/containerd``, ``/etc/docker/key.json`` did not exist before removed again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.lab.netlab import Lab, LabProc
from tests.netns.overlaylab import OverlayLab, wait_for

DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"
PLUGIN_DIR = "/run/docker/plugins"
IMAGE = "oabusybox:test"
MACHINE_PATHS = ("/run/docker", "/run/containerd", "/etc/docker/key.json", "/var/lib/docker",
                 "/var/lib/containerd")
"""Machine-wide paths dockerd or containerd may create; removed again if they were not there."""


def docker_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for path in (DOCKER, DOCKERD, BUSYBOX, "/usr/bin/containerd", "/usr/sbin/runc"):
        if not os.path.exists(path):
            return f"{path} is missing (Debian packages docker.io and busybox-static: make debs)"
    return None


def make_rootfs(root: Path) -> Path:
    """A busybox rootfs: bin/busybox and a relative symlink per applet."""
    bindir = root / "bin"
    bindir.mkdir(parents=True)
    shutil.copy2(BUSYBOX, bindir / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            with contextlib.suppress(FileExistsError):
                os.symlink("busybox", bindir / applet)
    for d in ("proc", "sys", "dev", "etc", "tmp"):
        (root / d).mkdir(exist_ok=True)
    return root


@dataclass
class Daemon:
    index: int
    dir: Path
    proc: LabProc | None = None

    @property
    def sock(self) -> str:
        return str(self.dir / "docker.sock")

    @property
    def exec_root(self) -> Path:
        return self.dir / "x"

    @property
    def data_root(self) -> Path:
        return self.dir / "d"

    @property
    def pidfile(self) -> str:
        return str(self.dir / "docker.pid")


class DockerLab:
    """``hosts`` agents serving Docker plugins, one dockerd per host (see module docstring)."""

    def __init__(self, lab: Lab, hosts: int = 2) -> None:
        self.lab = lab
        self.ol = OverlayLab(lab)
        self.before = {p: os.path.lexists(p) for p in MACHINE_PATHS}
        self.plugin_dir_existed = os.path.isdir(PLUGIN_DIR)
        self.plugins = [f"{lab.prefix}-h{i}" for i in range(hosts)]
        self.daemons = [Daemon(i, lab.workdir / f"k{i}") for i in range(hosts)]
        self.config_dir = lab.workdir / "docker-config"
        self.config_dir.mkdir()
        self._starts = 0
        self.closed = False

    def plugin_socket(self, i: int) -> str:
        return f"{PLUGIN_DIR}/{self.plugins[i]}.sock"

    # -- agents ------------------------------------------------------------------------------
    def start_agent(self, i: int, *, wait_ready: bool = True) -> None:
        self.ol.extra = ["--docker-plugin-socket", self.plugin_socket(i)]
        self.ol.start(i, join=[] if i == 0 and self.ol.nodes[0].proc is None else [j for j in range(len(self.daemons)) if j != i][:1],
                      wait_ready=wait_ready)

    def start_agents(self) -> None:
        for i in range(len(self.daemons)):
            self.start_agent(i, wait_ready=False)
        for i in range(len(self.daemons)):
            self.ol.wait_ready(i)
        names = {n.name for n in self.ol.nodes}
        for i in range(len(self.daemons)):
            wait_for(lambda i=i: {m["name"] for m in self.ol.members(i) if m["status"] == "alive"} == names,
                     f"agent {i} to see every agent alive")

    # -- daemons -----------------------------------------------------------------------------
    def start_dockerd(self, i: int) -> None:
        d = self.daemons[i]
        d.dir.mkdir(exist_ok=True)
        self._starts += 1
        argv = [DOCKERD, "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--bridge=none",
                "--storage-driver=vfs", "--live-restore", "--data-root", str(d.data_root),
                "--exec-root", str(d.exec_root), "--pidfile", d.pidfile, "-H", f"unix://{d.sock}"]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.config_dir)}
        d.proc = self.lab.spawn(self.lab.hosts[i], argv, name=f"dockerd{i}-{self._starts}", env=env)

        def up() -> bool:
            if d.proc is None or not d.proc.running():
                pytest.fail(f"dockerd {i} exited; log tail:\n{d.proc.log_text()[-3000:] if d.proc else ''}")
            return self.docker(i, "version", check=False).returncode == 0

        wait_for(up, f"dockerd {i} to answer", within=60)

    def stop_dockerd(self, i: int) -> None:
        d = self.daemons[i]
        if d.proc is not None and d.proc.running():
            self.lab.stop(d.proc, signal.SIGTERM, timeout=30)

    def docker(self, i: int, *args: str, check: bool = True, timeout: float = 120.0,
               stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([DOCKER, "-H", f"unix://{self.daemons[i].sock}", *args],
                           input=stdin.decode() if stdin is not None else None, capture_output=True, text=True,
                           timeout=timeout, env={"DOCKER_CONFIG": str(self.config_dir), "PATH": "/usr/bin:/bin"},
                           check=False)
        if check and r.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} on host {i} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def import_image(self, i: int, rootfs: Path) -> None:
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True)
        r = subprocess.run([DOCKER, "-H", f"unix://{self.daemons[i].sock}", "import", "-", IMAGE],
                           input=tar.stdout, capture_output=True, timeout=120,
                           env={"DOCKER_CONFIG": str(self.config_dir)}, check=False)
        if r.returncode != 0:
            pytest.fail(f"docker import on host {i}: {r.stderr.decode(errors='replace')}")

    def inspect(self, i: int, container: str) -> dict[str, Any]:
        import json

        result: dict[str, Any] = json.loads(self.docker(i, "inspect", container).stdout)[0]
        return result

    def container_ip(self, i: int, container: str, network: str) -> str:
        ip: str = self.inspect(i, container)["NetworkSettings"]["Networks"][network]["IPAddress"]
        return ip

    def exec(self, i: int, container: str, argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.docker(i, "exec", container, *argv, check=False, timeout=timeout)

    def ping(self, i: int, container: str, ip: str, count: int = 3) -> bool:
        r = self.exec(i, container, ["ping", "-c", str(count), "-W", "2", ip])
        return " 0% packet loss" in r.stdout

    # -- tear-down -----------------------------------------------------------------------------
    def close(self) -> list[str]:
        if self.closed:
            return []
        self.closed = True
        problems: list[str] = []
        for i, d in enumerate(self.daemons):
            if d.proc is not None and d.proc.running():
                with contextlib.suppress(Exception):
                    ids = self.docker(i, "ps", "-aq", check=False, timeout=30).stdout.split()
                    if ids:
                        self.docker(i, "rm", "-f", *ids, check=False, timeout=60)
                self.stop_dockerd(i)
        for d in self.daemons:
            problems += _kill_strays(d.dir)
            problems += _unmount_under(d.dir)
        for i in range(len(self.daemons)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.plugin_socket(i))
        for path, existed in self.before.items():
            if not existed and os.path.lexists(path):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                if os.path.lexists(path):
                    problems.append(f"could not remove {path}")
        if self.before["/run/docker"] and not self.plugin_dir_existed:
            with contextlib.suppress(OSError):
                os.rmdir(PLUGIN_DIR)
        for dev in ("docker0", "docker_gwbridge"):
            if os.path.exists(f"/sys/class/net/{dev}"):
                problems.append(f"{dev} exists in the root namespace")
        return problems


def _our_pids(marker: Path) -> list[int]:
    """Processes whose command line names our directory (dockerd's containerd and shims)."""
    needle = str(marker).encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    out.append(int(entry))
        except OSError:
            continue
    return out


def _kill_strays(marker: Path) -> list[str]:
    pids = _our_pids(marker)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _our_pids(marker):
        time.sleep(0.05)
    left = _our_pids(marker)
    return [f"processes left running: {left}"] if left else []


def _unmount_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix) or point == str(root):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    return []
