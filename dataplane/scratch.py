"""Throw-away network namespaces for the dataplane's real-kernel tests and benchmark.

Owns: creating uniquely named namespaces (``dpk<pid>x<n>-<tag>``), running iproute2
inside them, the "is VXLAN available here" probe, and deleting every namespace it
made (``close`` never raises; problems are returned). Not used by the agent.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

NAME_BASE = "dpk"
_counter = itertools.count()


class ScratchError(RuntimeError):
    pass


def run(
    argv: Sequence[str], *, stdin: str | None = None, check: bool = True, timeout: float = 60
) -> str:
    r = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and r.returncode != 0:
        raise ScratchError(f"{' '.join(argv)} failed (rc={r.returncode}): {r.stderr.strip()}")
    return r.stdout


def skip_reason() -> str | None:
    """Why real-kernel dataplane tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None or shutil.which("bridge") is None:
        return "iproute2 (ip, bridge) is not installed"
    with Scratch() as s:
        ns = s.add("probe")
        try:
            s.ip(ns, "link", "add", "vx0", "type", "vxlan", "id", "1", "dstport", "4789")
        except ScratchError as e:
            return f"no VXLAN support: {e}"
    return None


class Scratch:
    """A set of namespaces deleted together; use as a context manager."""

    def __init__(self) -> None:
        self.prefix = f"{NAME_BASE}{os.getpid():x}x{next(_counter)}"
        self.names: list[str] = []

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, tag: str) -> str:
        name = f"{self.prefix}-{tag}"
        self.names.append(name)  # recorded first: a failed add is still cleaned up
        run(["ip", "netns", "add", name])
        self.ip(name, "link", "set", "lo", "up")
        return name

    def ip(self, ns: str, *args: str) -> str:
        return run(["ip", "-n", ns, *args])

    def batch(self, ns: str, lines: Sequence[str], tool: str = "ip") -> None:
        run([tool, "-n", ns, "-batch", "-"], stdin="".join(f"{x}\n" for x in lines))

    def json(self, ns: str, tool: str, *args: str) -> Any:
        out = run([tool, "-n", ns, "-j", *args])
        return json.loads(out) if out.strip() else []

    def exec(self, ns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60) -> str:
        return run(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout)

    def sysctl(self, ns: str, key: str, value: str) -> None:
        self.exec(ns, ["sysctl", "-q", "-w", f"{key}={value}"])

    def close(self) -> list[str]:
        problems: list[str] = []
        for name in reversed(self.names):
            if os.path.exists(f"/run/netns/{name}"):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run(["ip", "netns", "del", name], check=False)
                if os.path.exists(f"/run/netns/{name}"):
                    problems.append(f"namespace {name} not deleted")
        self.names.clear()
        return problems
