"""Calling ``overlay-cni`` the way a CNI runtime (or cnitool) does: environment + stdin.

Debian ships no cnitool and its libcni (1.1.2) predates STATUS and GC, so the contract
is driven directly: the installed console script runs inside a lab host's namespace
(``nsenter --net``, as podman runs its plugins), with ``CNI_*`` set and the
configuration on stdin; stdout is parsed as the result or the error object.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from agent.lab.agentnode import _program
from agent.lab.netlab import Host


def cni_program() -> list[str]:
    return _program("overlay-cni", "agent.runtimes.cni.plugin")


def container_id() -> str:
    """64 hex digits, like podman's and Docker's ids."""
    return os.urandom(32).hex()


def conf(network: str, socket: str | None, version: str = "1.1.0", **extra: Any) -> dict[str, Any]:
    """The plugin's entry as libcni hands it over (``name`` from the conflist)."""
    out: dict[str, Any] = {"cniVersion": version, "name": network, "type": "overlay-cni", "network": network}
    if socket is not None:
        out["socket"] = socket
    out.update(extra)
    return out


@dataclass
class CniCall:
    rc: int
    stdout: str
    stderr: str
    wall_s: float

    @property
    def out(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None

    @property
    def msg(self) -> str:
        """The error object's ``msg`` (asserting it is one line)."""
        obj = self.out
        assert isinstance(obj, dict) and isinstance(obj.get("msg"), str), self.stdout
        assert "\n" not in obj["msg"] and "Traceback" not in self.stdout + self.stderr, self.stdout + self.stderr
        return str(obj["msg"])

    @property
    def code(self) -> int:
        obj = self.out
        assert isinstance(obj, dict), self.stdout
        return int(obj["code"])


def call(host: Host, command: str, config: dict[str, Any] | bytes | None = None, *, container: str = "",
         netns: str = "", ifname: str = "eth0", args: str = "", env: dict[str, str] | None = None,
         timeout: float = 60.0) -> CniCall:
    """One plugin invocation inside ``host``'s namespace; empty values are left unset."""
    run_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
               "CNI_PATH": "/usr/lib/cni"}
    for key, value in (("CNI_CONTAINERID", container), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname),
                       ("CNI_ARGS", args)):
        if value:
            run_env[key] = value
    if command == "DEL" and not netns:
        run_env["CNI_NETNS"] = ""  # containerd sends it empty
    run_env.update(env or {})
    data = config if isinstance(config, bytes) else json.dumps(config or {}).encode()
    start = time.monotonic()
    r = subprocess.run(["nsenter", f"--net={host.netns_path}", *cni_program()], input=data, env=run_env,
                       capture_output=True, timeout=timeout, check=False)
    wall = time.monotonic() - start
    return CniCall(r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace"), wall)
