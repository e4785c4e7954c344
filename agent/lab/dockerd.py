"""Real dockerd daemons in the lab's host namespaces, for ``make demo-docker``, the runtime
benchmark and the Docker tests.

Every lab host gets its own ``dockerd`` (Debian's docker.io, started by hand) with a
private ``--data-root``, ``--exec-root``, ``--pidfile`` and API socket under the lab's
work directory, with everything that would touch the machine off (``--iptables=false
--ip6tables=false --ip-forward=false --bridge=none``, vfs storage), plus
``--live-restore`` so a dockerd restart keeps containers running. dockerd starts its
own containerd under the exec-root. The client is Debian's ``/usr/bin/docker`` by
absolute path (another ``docker`` may come first on PATH) with ``-H unix://...`` and a
private ``DOCKER_CONFIG``.

Docker's legacy plugin directory ``/run/docker/plugins`` is machine-wide, so each
host's agent serves a plugin named after the lab (``plugin_names``); the socket is a
path, so the dockerd in the host namespace reaches the agent's socket.

The image is a busybox rootfs (Debian's busybox-static with relative applet symlinks)
imported with ``docker import``: no registry.

Owns: starting, restarting and stopping the daemons, the client, the image, and a
tear-down (``close``: never raises, returns problems) that leaves the machine as it
was: containers removed, dockerd stopped by pid (SIGTERM, then SIGKILL), processes
still running from our directories (containerd, shims: their command lines name our
exec-root) killed by pid, mounts under our directories unmounted, the plugin sockets
removed, and whichever of ``/run/docker``, ``/run/containerd``,
``/etc/docker/key.json``, ``/var/lib/docker``, ``/var/lib/containerd`` did not exist
before removed again. Does not: start agents (``agent.lab.agentnode``).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.lab.netlab import Lab, LabError, LabProc

DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"
PLUGIN_DIR = "/run/docker/plugins"
IMAGE = "oabusybox:latest"
MACHINE_PATHS = ("/run/docker", "/run/containerd", "/etc/docker/key.json", "/var/lib/docker",
                 "/var/lib/containerd")
READY_WAIT = 60.0


def skip_reason() -> str | None:
    """Why Docker cannot run here (None: it can)."""
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


class DockerHosts:
    """One dockerd per lab host (see the module docstring); ``close`` tears them down."""

    def __init__(self, lab: Lab, hosts: int) -> None:
        self.lab = lab
        self.before = {p: os.path.lexists(p) for p in MACHINE_PATHS}
        self.plugin_dir_existed = os.path.isdir(PLUGIN_DIR)
        self.plugins = [f"{lab.prefix}-h{i}" for i in range(hosts)]
        """Each host's plugin name: driver and IPAM driver of its Docker networks."""
        self.daemons = [Daemon(i, lab.workdir / f"k{i}") for i in range(hosts)]
        self.config_dir = lab.workdir / "docker-config"
        self.config_dir.mkdir(exist_ok=True)
        self._starts = 0
        self.closed = False

    def plugin_socket(self, i: int) -> str:
        return f"{PLUGIN_DIR}/{self.plugins[i]}.sock"

    def agent_args(self, i: int) -> list[str]:
        """The flags of host i's agent: serve its plugin, and ask its dockerd (a private
        API socket) for container names."""
        return ["--docker-plugin-socket", self.plugin_socket(i), "--docker-api-socket", self.daemons[i].sock]

    def start(self, i: int) -> None:
        """Start host i's dockerd and wait until its API answers. LabError."""
        d = self.daemons[i]
        d.dir.mkdir(exist_ok=True)
        self._starts += 1
        argv = [DOCKERD, "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--bridge=none",
                "--storage-driver=vfs", "--live-restore", "--data-root", str(d.dir / "d"),
                "--exec-root", str(d.dir / "x"), "--pidfile", str(d.dir / "docker.pid"),
                "-H", f"unix://{d.sock}"]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.config_dir)}
        proc = d.proc = self.lab.spawn(self.lab.hosts[i], argv, name=f"dockerd{i}-{self._starts}", env=env)
        deadline = time.monotonic() + READY_WAIT
        while self.docker(i, "version", check=False).returncode != 0:
            if not proc.running():
                raise LabError(f"dockerd on host {i} exited: {proc.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise LabError(f"dockerd on host {i} did not answer within {READY_WAIT:g}s")
            time.sleep(0.05)

    def stop(self, i: int) -> None:
        d = self.daemons[i]
        if d.proc is not None and d.proc.running():
            self.lab.stop(d.proc, signal.SIGTERM, timeout=30)

    def docker(self, i: int, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """``docker -H unix://SOCK ARGS`` for host i. LabError on failure with ``check``."""
        r = subprocess.run([DOCKER, "-H", f"unix://{self.daemons[i].sock}", *args], capture_output=True,
                           text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
                           env={"DOCKER_CONFIG": str(self.config_dir), "PATH": "/usr/bin:/bin"})
        if check and r.returncode != 0:
            raise LabError(f"docker {' '.join(args)} on host {i} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def import_image(self, i: int, rootfs: Path, image: str = IMAGE) -> None:
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True)
        r = subprocess.run([DOCKER, "-H", f"unix://{self.daemons[i].sock}", "import", "-", image],
                           input=tar.stdout, capture_output=True, timeout=120, check=False,
                           env={"DOCKER_CONFIG": str(self.config_dir)})
        if r.returncode != 0:
            raise LabError(f"docker import on host {i}: {r.stderr.decode(errors='replace').strip()}")

    def inspect(self, i: int, container: str) -> dict[str, Any]:
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

    def close(self) -> list[str]:
        """Tear down (see the module docstring); call it while the agents still run, or
        Docker waits for their plugins on every container it removes."""
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
                self.stop(i)
        for d in self.daemons:
            problems += _kill_strays(d.dir)
            _unmount_under(d.dir)
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
    needle = str(marker).encode() + b"/"
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


def _unmount_under(root: Path) -> None:
    prefix = str(root) + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
