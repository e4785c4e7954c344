"""Our agent as a lab process: its command line and its control socket, seen from outside.

Owns: the ``overlay-agent`` / ``agentctl`` command lines the lab launches and a
minimal client of the control API (one JSON line per request on the Unix
socket: ``{"v":1,"op":"members"}`` -> ``{"v":1,"ok":true,"result":[...]}``),
used instead of spawning ``agentctl`` so that polling stays as cheap as serf's
native RPC. Does not import the rest of the agent package: the lab runs the
installed programs as a user would. Flags and JSON fields: docs/operations.md.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AGENT_PORT = 7946
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _program(script: str, module: str) -> list[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    exe = Path(sys.executable).parent / script
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", module]


def agent_program() -> list[str]:
    return _program("overlay-agent", "agent")


def agentctl_program() -> list[str]:
    return _program("agentctl", "agent.ctl.main")


@dataclass(frozen=True, slots=True)
class AgentMember:
    """One row of ``agentctl members --format json``."""

    name: str
    address: str
    port: int
    status: str
    incarnation: int
    tags: dict[str, str]
    self: bool


def agent_argv(
    name: str,
    bind: str,
    control_socket: str,
    *,
    join: Sequence[str] = (),
    profile: str = "lan",
    encrypt_keys: Sequence[str] = (),
    tags: Mapping[str, str] | None = None,
    state_dir: str | None = None,
    leave_on_terminate: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    argv = [
        *agent_program(),
        "--node",
        name,
        "--bind",
        bind,
        "--control-socket",
        control_socket,
        "--profile",
        profile,
    ]
    for j in join:
        argv += ["--join", j]
    for k in encrypt_keys:
        argv += ["--encrypt-key", k]
    for k, v in (tags or {}).items():
        argv += ["--tag", f"{k}={v}"]
    if state_dir:
        argv += ["--state-dir", state_dir]
    if leave_on_terminate:
        argv.append("--leave-on-terminate")
    argv += list(extra)
    return argv


def _member(row: Mapping[str, Any]) -> AgentMember:
    return AgentMember(
        name=str(row["name"]),
        address=str(row["address"]),
        port=int(row["port"]),
        status=str(row["status"]),
        incarnation=int(row.get("incarnation", 0)),
        tags={str(k): str(v) for k, v in (row.get("tags") or {}).items()},
        self=bool(row.get("self", False)),
    )


def parse_members(payload: Any) -> list[AgentMember]:
    """Rows of ``agentctl members --format json`` (a JSON array); raises ValueError."""
    if not isinstance(payload, list):
        raise ValueError(f"expected a JSON array of members, got {type(payload).__name__}")
    try:
        return [_member(r) for r in payload]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"bad member row: {e!r}") from e


class ControlClient:
    """Talks to one agent's control socket; one connection per request."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, op: str, **args: Any) -> Any:
        """Send one request; returns ``result`` or raises OSError (agent down or refused)."""
        req = json.dumps({"v": 1, "op": op, **args}).encode() + b"\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect(self.path)
            s.sendall(req)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        try:
            reply = json.loads(buf)
        except ValueError as e:
            raise OSError(f"control socket {self.path}: not a JSON reply: {buf[:200]!r}") from e
        if not isinstance(reply, dict) or not reply.get("ok"):
            err = reply.get("error") if isinstance(reply, dict) else reply
            raise OSError(f"control socket {self.path}: {op} refused: {err}")
        return reply.get("result")

    def members(self) -> list[AgentMember]:
        try:
            return parse_members(self.request("members"))
        except ValueError as e:
            raise OSError(f"control socket {self.path}: {e}") from e


def wait_ready(socket_path: str, within: float = 60.0) -> None:
    """Poll an agent's ``status`` until it reports ready; OSError after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            if ControlClient(socket_path, timeout=2.0).request("status").get("ready"):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise OSError(f"the agent at {socket_path} was not ready within {within:g}s")
        time.sleep(0.05)
