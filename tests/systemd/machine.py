"""A throwaway systemd machine: systemd as PID 1 in ``systemd-nspawn``, in a lab namespace.

Owns: building the machine's root tree (a temporary directory under /var/tmp: a small
``/etc``; ``/usr`` = this host's ``/usr`` through an overlay whose upper layer only adds
``/usr/local/bin/{overlay-agent,agentctl}``; the agent installed as docs/operations.md
says, a virtualenv at /opt/overlay-agent on Debian's python whose site-packages is this
checkout's venv's, bound read-only, with the checkout bound read-only at ``SOURCE``, put
first on the console scripts' ``sys.path``), booting it with ``systemd-nspawn -b`` inside a network
namespace the caller made (so every interface the agent creates lives there), running
commands inside it (``nsenter`` into all its namespaces), reading its files from outside
(``/proc/<init>/root``), and tearing it down: a clean power-off, else SIGKILL of its
PID 1 (which kills its whole pid namespace), then its cgroup, nspawn's leftovers under
/run/systemd/nspawn and the tree. A harness killed outright still powers it off
(nspawn gets SIGTERM as its parent-death signal).

Why nspawn and not the QEMU VM: this host's kernel runs nspawn with a cgroup-v1
(hybrid) hierarchy fine, a boot takes a few seconds, and no image has to be cached;
the VM (TCG, no KVM) would spend minutes per boot. The price: the kernel is the
host's, which lacks ESP, so IPsec SAs cannot be installed here (docs/ipsec.md: the VM
tier does that); the agent's key file is still made and kept (tests/systemd/esp_peer.py).
Nspawn runs with ``--keep-unit --register=no``: there is no systemd on the host to
register with, and the container goes into a cgroup of its own that we make.

Does not: create the network namespace or the underlay (``agent.lab.netlab``), or know
about the agent beyond the path of its program.
Reference: systemd-nspawn(1), nsenter(1).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
NSPAWN = "systemd-nspawn"
NSPAWN_RUN = Path("/run/systemd/nspawn")
CGROUP_V1_SYSTEMD = Path("/sys/fs/cgroup/systemd")
PROGRAM = "/usr/local/bin/overlay-agent"
"""Where the packaged unit's ExecStart expects the console script (a symlink, as the docs
install it)."""
BOOT_TIMEOUT = 120.0
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # loaded here: not between fork and exec
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


VENV = "/opt/overlay-agent"
SOURCE = "/srv/overlay-agent"
"""Where the checkout is bound inside the machine. Not at its own path: the unit's
PrivateTmp= and ProtectHome= hide /tmp, /var/tmp and /root from the agent, and a clone
may well live there (the venv's editable install would point into a hidden tree)."""
SITE_PACKAGES = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"


def system_python() -> str:
    """Debian's interpreter of this Python's version (the machine's venv runs on it)."""
    return f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"


def host_site_packages() -> str:
    return sysconfig.get_path("purelib")


class MachineError(RuntimeError):
    """The machine could not be built, booted or reached; the message says which step."""


def skip_reason() -> str | None:
    """Why a machine cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "booting systemd in systemd-nspawn needs root"
    for tool, package in ((NSPAWN, "systemd-container"), ("nsenter", "util-linux"),
                          ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    if not Path("/usr/lib/systemd/systemd").exists():
        return "systemd is not installed (Debian package systemd)"
    if not Path(system_python()).exists():
        return f"{system_python()} is missing (Debian package python3): the machine's venv runs on it"
    if sys.prefix == sys.base_prefix:
        return "not running in the project's venv (make venv)"
    return None


def wait_until(check: Callable[[], Any], what: str, within: float, every: float = 0.1) -> Any:
    """Poll ``check`` until truthy; MachineError after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise MachineError(f"timed out after {within:g}s waiting for {what}")
        time.sleep(every)


class Machine:
    """One booted machine; ``close()`` (idempotent, never raises) removes everything."""

    def __init__(self, name: str, netns: str, *, files: Mapping[str, str] = {}) -> None:
        self.name = name
        self.netns = netns
        self.root_dir = Path(tempfile.mkdtemp(prefix=f"overlay-agent-systemd-{name}-", dir="/var/tmp"))
        self.tree = self.root_dir / "root"
        self.usr_upper = self.root_dir / "usr-upper"
        self.log_path = self.root_dir / "nspawn.log"
        self.cgroup = CGROUP_V1_SYSTEMD / f"overlay-agent-test-{name}"
        self.popen: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None
        self._closed = False
        self._nspawn_run_existed = NSPAWN_RUN.exists()
        try:
            self._build(files)
            self._boot()
        except BaseException:
            self.close()
            raise

    # -- building and booting ------------------------------------------------------------
    def _build(self, files: Mapping[str, str]) -> None:
        t = self.tree
        for d in ("etc/systemd/system", "usr", "proc", "sys", "dev", "run", "tmp", "var/tmp",
                  "var/lib", "root", SOURCE.lstrip("/")):
            (t / d).mkdir(parents=True, exist_ok=True)
        for link in ("bin", "sbin", "lib", "lib64"):
            if Path("/usr", link).exists():
                (t / link).symlink_to(f"usr/{link}")
        # /etc: only what a boot needs. A machine id means no "first boot" wizard.
        (t / "etc/os-release").write_text(Path("/usr/lib/os-release").read_text())
        (t / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        (t / "etc/hostname").write_text(self.name + "\n")
        (t / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (t / "etc/group").write_text("root:x:0:\nsystemd-journal:x:101:\n")
        (t / "etc/nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files\n")
        for rel, text in files.items():
            self.write(rel, text)
        self._install_agent()
        # Its own cgroup (v1 name=systemd hierarchy): the container's systemd builds its
        # tree below it, and whatever a killed machine leaves there goes with it.
        if CGROUP_V1_SYSTEMD.is_dir():
            self.cgroup.mkdir()

    def _install_agent(self) -> None:
        """A virtualenv at /opt/overlay-agent on Debian's python, as docs/operations.md installs
        it, whose site-packages is this checkout's venv's (bound read-only), the checkout itself
        first on the console scripts' path (bound at SOURCE: the editable install's own
        finder points at the checkout's host path, which the sandbox may hide). Not the
        venv itself: its interpreter may live under /root (pyenv), which ProtectHome= hides."""
        venv = self.tree / VENV.lstrip("/")
        (venv / "bin").mkdir(parents=True)
        (venv / SITE_PACKAGES).mkdir(parents=True)
        (venv / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = false\n"
                                         f"version = {'.'.join(map(str, sys.version_info[:3]))}\n")
        (venv / "bin/python").symlink_to(system_python())
        local_bin = self.usr_upper / "local/bin"
        local_bin.mkdir(parents=True)
        for script, module in (("overlay-agent", "agent.__main__"), ("agentctl", "agent.ctl.main")):
            path = venv / "bin" / script
            path.write_text(f"#!{VENV}/bin/python\nimport sys\nsys.path.insert(0, {SOURCE!r})\n"
                            f"from {module} import main\nsys.exit(main())\n")
            path.chmod(0o755)
            # The console scripts where the unit (and an operator's PATH) expects them.
            (local_bin / script).symlink_to(f"{VENV}/bin/{script}")

    def _boot(self) -> None:
        argv = [
            NSPAWN, "--quiet", "-D", str(self.tree), "-M", self.name, "-b",
            "--register=no", "--keep-unit", "--console=pipe",
            f"--network-namespace-path=/run/netns/{self.netns}",
            # CAP_NET_ADMIN: nspawn grants it only with a private network it made itself.
            "--capability=CAP_NET_ADMIN",
            # /usr read-write through an overlay: writes land in usr_upper, never on the host.
            f"--overlay=/usr:{self.usr_upper}:/usr",
            f"--bind-ro={REPO}:{SOURCE}",
            f"--bind-ro={host_site_packages()}:{VENV}/{SITE_PACKAGES}",
            "--", "systemd.unit=multi-user.target", "systemd.show_status=0",
        ]
        cgroup_procs = self.cgroup / "cgroup.procs" if self.cgroup.is_dir() else None

        def enter_cgroup() -> None:
            if cgroup_procs is not None:
                cgroup_procs.write_text(str(os.getpid()))
            # A harness killed outright still powers the machine off (nspawn's SIGTERM).
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=enter_cgroup)
        self.init_pid = wait_until(self._find_init, "the machine's PID 1", BOOT_TIMEOUT)
        wait_until(lambda: self.path("/run/systemd/private").exists() or self._dead(),
                   "the machine's systemd to listen", BOOT_TIMEOUT)
        self._check_alive()
        # running or degraded: the boot is over; the state itself does not matter here.
        r = self.run(["systemctl", "is-system-running", "--wait"], timeout=BOOT_TIMEOUT, check=False)
        if r.stdout.strip() not in ("running", "degraded"):
            raise MachineError(f"the machine did not finish booting: {r.stdout.strip()} {r.stderr.strip()}")

    def _dead(self) -> bool:
        return self.popen is None or self.popen.poll() is not None

    def _check_alive(self) -> None:
        if self._dead():
            raise MachineError(f"systemd-nspawn exited; log tail:\n{self.log_tail()}")

    def _find_init(self) -> int | None:
        """The host pid of the machine's systemd: nspawn's child running /usr/lib/systemd/systemd."""
        self._check_alive()
        assert self.popen is not None
        for task in Path(f"/proc/{self.popen.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for pid in (task / "children").read_text().split():
                    with contextlib.suppress(OSError):
                        if Path(f"/proc/{pid}/exe").resolve().name == "systemd":
                            return int(pid)
        return None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- inside the machine --------------------------------------------------------------------
    def path(self, inside: str) -> Path:
        """A path of the machine's file system as seen from the host."""
        return Path(f"/proc/{self.init_pid}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        """Write a file of the machine (its /etc is a plain directory of the tree)."""
        p = self.tree / inside.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)

    def nsenter(self, target_pid: int | None = None) -> list[str]:
        pid = target_pid or self.init_pid
        return ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w"]

    def run(self, argv: Sequence[str], *, timeout: float = 60.0, check: bool = True,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the machine (all its namespaces, its root) and wait."""
        self._check_alive()
        full_env = {"PATH": PATH, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LANG": "C.UTF-8",
                    **(env or {})}
        r = subprocess.run([*self.nsenter(), "env", "-i", *(f"{k}={v}" for k, v in full_env.items()),
                            *argv], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise MachineError(f"in {self.name}: {' '.join(argv)} failed (rc={r.returncode}): "
                               f"{r.stderr.strip() or r.stdout.strip()}")
        return r

    def popen_inside(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """A long-running command inside the machine; its output goes to ``log``."""
        with open(log, "ab") as f:
            return subprocess.Popen([*self.nsenter(), "env", "-i", f"PATH={PATH}", *argv],
                                    stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def systemctl(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", *args], check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p ...`` as a dict."""
        r = self.systemctl("show", unit, *(f"-p{p}" for p in props))
        out: dict[str, str] = {}
        for line in r.stdout.splitlines():
            k, _, v = line.partition("=")
            out[k] = v
        return out

    def journal(self, unit: str, *extra: str) -> list[dict[str, Any]]:
        """The unit's journal entries (all boots of this machine; one JSON object each)."""
        r = self.run(["journalctl", "--no-pager", "-o", "json", "-u", unit, *extra], check=False)
        return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]

    # -- teardown ------------------------------------------------------------------------------
    def close(self) -> list[str]:
        """Power off (SIGTERM to nspawn: a clean shutdown), else SIGKILL PID 1; remove the
        cgroup, nspawn's run files and the tree. Never raises; returns problems."""
        if self._closed:
            return []
        self._closed = True
        problems: list[str] = []
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                problems.append("the machine did not power off within 60 s: killed")
                # Killing PID 1 of a pid namespace kills every process in it.
                if self.init_pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.init_pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(timeout=30)
        if self.cgroup.is_dir():
            # Children first (rmdir of an empty cgroup is how it is removed).
            for d in sorted((p for p in self.cgroup.rglob("*") if p.is_dir()),
                            key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
            try:
                self.cgroup.rmdir()
            except OSError as e:
                problems.append(f"cgroup {self.cgroup}: {e}")
        # nspawn leaves its propagation directory behind when /run is not a tmpfs.
        with contextlib.suppress(OSError):
            shutil.rmtree(NSPAWN_RUN / "propagate" / self.name)
        if not self._nspawn_run_existed:
            for d in (NSPAWN_RUN / "propagate", NSPAWN_RUN / "locks", NSPAWN_RUN):
                with contextlib.suppress(OSError):
                    d.rmdir()
        shutil.rmtree(self.root_dir, ignore_errors=True)
        if self.root_dir.exists():
            problems.append(f"could not remove {self.root_dir}")
        for p in problems:
            print(f"machine {self.name}: {p}", file=sys.stderr)
        return problems
