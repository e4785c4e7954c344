"""One sweep point, run wherever an engine puts it: a fresh ``python -m sim`` process.

Owns: ``PointTask`` (what to run), ``PointOutcome`` (what came back) and
``run_point``, the function every engine calls. A point runs in a new process
started for it alone, so its peak RSS (``wait4``'s ``ru_maxrss`` of that
process) is the point's own and not that of a worker reused for earlier,
bigger points, and nothing a point leaves in memory can change the next one.
The process writes into a private temporary directory and ``run_point``
returns the files' bytes, so a remote worker needs no shared file system.
Does not own: where ``run_point`` runs (the engines) or what the files mean.

The child dies with the thread that started it (``PR_SET_PDEATHSIG``), so a
worker that dies or is killed leaves no orphan simulation behind.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PARENT_ENV = "SIM_POINT_PARENT_PID"
PR_SET_PDEATHSIG = 1

_running: set[int] = set()
_lock = threading.Lock()


@dataclass(frozen=True)
class PointTask:
    name: str
    spec: dict[str, Any]
    """``RunSpec.as_dict()`` of the point."""
    plots: bool = True
    attempt: int = 1


@dataclass
class PointOutcome:
    name: str
    status: str
    """``ok``, ``failed`` (the run exited with an error) or ``killed`` (by a signal)."""
    returncode: int
    message: str = ""
    stdout: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    peak_rss_mib: float = 0.0
    wall_s: float = 0.0
    host: str = ""
    pid: int = 0


def spec_argv(spec: dict[str, Any]) -> list[str]:
    argv = ["--nodes", str(spec["nodes"]), "--duration", repr(float(spec["duration"])),
            "--scenario", str(spec["scenario"]), "--seed", str(spec["seed"]),
            "--profile", str(spec.get("profile", "lan"))]
    for kv in spec.get("overrides", []):
        argv += ["--set", str(kv)]
    return argv


def run_point(task: PointTask) -> PointOutcome:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sim-point-") as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "sim", *spec_argv(task.spec), "--out", str(out), "--no-progress"]
        if not task.plots:
            cmd.append("--no-plots")
        env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
        with open(Path(tmp) / "stdout", "wb") as so, open(Path(tmp) / "stderr", "wb") as se:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=so, stderr=se, env=env)
            with _lock:
                _running.add(proc.pid)
            try:
                # wait4, not Popen.wait: the rusage of this child alone is the point's peak RSS.
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                with _lock:
                    _running.discard(proc.pid)
        rc = os.waitstatus_to_exitcode(status)
        proc.returncode = rc
        stdout = (Path(tmp) / "stdout").read_text(errors="replace")
        stderr = (Path(tmp) / "stderr").read_text(errors="replace")
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()} \
            if rc == 0 and out.is_dir() else {}
    if rc == 0 and "result.json" in files:
        state, message = "ok", ""
    elif rc < 0:
        state, message = "killed", f"killed by {signal.Signals(-rc).name}"
    else:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        state, message = "failed", (lines[-1] if lines else f"exit status {rc}")
    return PointOutcome(name=task.name, status=state, returncode=rc, message=message, stdout=stdout,
                        files=files, peak_rss_mib=usage.ru_maxrss / 1024.0, wall_s=time.monotonic() - t0,
                        host=platform.node(), pid=proc.pid)


def kill_running() -> None:
    """Kill the point processes this process started (on Ctrl-C), by pid."""
    with _lock:
        pids = list(_running)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def die_with_parent() -> None:
    """In a point process: exit when the worker that started it goes away."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(parent):
        os._exit(1)  # the worker died between fork and prctl
