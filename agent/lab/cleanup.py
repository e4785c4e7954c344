"""Remove what lab harnesses that were killed left behind: ``python -m agent.lab.cleanup [PREFIX]``.

Owns: reading the per-lab state files (agent/lab/netlab.py writes one before it
creates anything), killing the recorded processes whose start time still
matches (so a reused pid is never hit) and any process still inside one of
those namespaces, deleting the namespaces, work directories and state files.
A lab whose harness still runs is left alone. Does not touch anything whose
name does not start with the prefix (default ``olab``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.lab import procstat
from agent.lab.netlab import NAME_BASE, STATE_ROOT
from agent.lab.netns import netns_inode, netns_path


def _pids_in_netns(inode: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    pids.append(int(entry))
    return pids


def cleanup(prefix: str = NAME_BASE, *, state_root: Path = STATE_ROOT) -> list[str]:
    """Remove what labs whose harness is gone left behind; returns what was done.

    For each state file of a lab whose name starts with ``prefix`` and whose owner
    no longer runs: SIGKILL the recorded pids (if their start time still matches)
    and any process still inside one of its namespaces, delete the namespaces, the
    work directory and the state file. Namespaces named ``prefix...`` that no live
    lab claims are deleted too.
    """
    done: list[str] = []
    claimed: set[str] = set()
    states = sorted(state_root.glob("*.json")) if state_root.is_dir() else []
    doomed: list[str] = []
    for path in states:
        try:
            st = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not str(st.get("prefix", "")).startswith(prefix):
            continue
        owner = int(st.get("owner_pid", 0))
        if procstat.is_alive(owner, st.get("owner_start")):
            claimed.update(st.get("namespaces", []))
            done.append(f"skip {st['prefix']}: harness {owner} still runs")
            continue
        for pid, started in st.get("pids", []):
            if started is not None and procstat.is_alive(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                done.append(f"kill {pid}")
        doomed.extend(st.get("namespaces", []))
        workdir = str(st.get("workdir", ""))
        if workdir.startswith("/tmp/") and os.path.isdir(workdir):
            shutil.rmtree(workdir, ignore_errors=True)
            done.append(f"rm -r {workdir}")
        path.unlink(missing_ok=True)
    if os.path.isdir("/run/netns"):
        doomed.extend(n for n in sorted(os.listdir("/run/netns")) if n.startswith(prefix))
    for ns in dict.fromkeys(doomed):
        if ns in claimed or not os.path.exists(netns_path(ns)):
            continue
        inode = netns_inode(netns_path(ns))
        if inode is not None:
            for pid in _pids_in_netns(inode):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                done.append(f"kill {pid} (in {ns})")
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        done.append(f"ip netns del {ns}")
    return done


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or (args and args[0].startswith("-")):
        print("usage: python -m agent.lab.cleanup [PREFIX]   (default prefix: olab)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("cleanup needs root", file=sys.stderr)
        return 1
    prefix = args[0] if args else NAME_BASE
    if not prefix:
        print("the prefix must not be empty", file=sys.stderr)
        return 2
    done = cleanup(prefix)
    for line in done:
        print(line)
    if not done:
        print(f"nothing left behind under prefix {prefix!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
