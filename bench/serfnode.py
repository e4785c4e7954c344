"""The reference peer: how to run a Debian ``serf`` agent in a lab host and ask it things.

Owns: serf's command line, its native msgpack RPC client (cheap enough to poll
every 100 ms: ~0.2 ms of CPU per call against ~8 ms for a ``serf members``
process) and the ``serf members -format=json`` CLI view that tests assert on.
Does not create hosts (``agent.lab.netlab``) or decide what to wait for (``bench.cluster``).

Facts about Debian's serf 0.9.4 this relies on (checked on this machine kind, 2026;
docs/benchmarks.md, "The serf baseline", has the command line and the method): one
agent per ``-node``/``-bind``/``-rpc-addr`` (RPC default 127.0.0.1:7373, so one per
namespace is fine); statuses are alive, leaving, left and failed (serf never shows
suspect); ``serf members -format=json`` prints ``{"members": [{"name", "addr":
"ip:port", "port", "tags", "status", "protocol"}]}``, rows and tags in random order.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from agent.lab.netlab import Host, Lab

SERF_PORT = 7946
RPC_ADDR = ("127.0.0.1", 7373)


def serf_binary() -> str | None:
    """Path of the serf executable, or None when the package is not installed."""
    found = shutil.which("serf")
    if found:
        return found
    return "/usr/bin/serf" if os.access("/usr/bin/serf", os.X_OK) else None


@dataclass(frozen=True, slots=True)
class SerfMember:
    """One row of a serf member list, reduced to what tests and benchmarks compare."""

    name: str
    addr: str
    port: int
    status: str
    tags: dict[str, str]


def serf_argv(
    serf: str,
    name: str,
    bind: str,
    *,
    join: Sequence[str] = (),
    profile: str = "lan",
    encrypt: str | None = None,
    tags: Mapping[str, str] | None = None,
    log_level: str = "info",
    config_file: str | None = None,
) -> list[str]:
    """``serf agent`` command line; RPC stays on 127.0.0.1:7373 inside the host."""
    argv = [
        serf,
        "agent",
        f"-node={name}",
        f"-bind={bind}",
        f"-rpc-addr={RPC_ADDR[0]}:{RPC_ADDR[1]}",
        f"-profile={profile}",
        f"-log-level={log_level}",
    ]
    argv += [f"-join={j}" for j in join]
    if encrypt:
        argv.append(f"-encrypt={encrypt}")
    for k, v in (tags or {}).items():
        argv += ["-tag", f"{k}={v}"]
    if config_file:
        argv.append(f"-config-file={config_file}")
    return argv


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _ip_text(raw: Any) -> str:
    if isinstance(raw, bytes) and len(raw) in (4, 16):
        if len(raw) == 4:
            return str(ipaddress.IPv4Address(raw))
        v6 = ipaddress.IPv6Address(raw)
        return str(v6.ipv4_mapped or v6)
    return _text(raw)


class SerfRpc:
    """A persistent native-RPC connection to one serf agent (created inside its host).

    Any error closes the connection; the next call reconnects. Calls block for
    at most ``timeout`` seconds.
    """

    def __init__(self, lab: Lab, host: Host, timeout: float = 5.0) -> None:
        self.lab = lab
        self.host = host
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._unpacker: Any = None
        self._seq = 0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, command: str, body: Mapping[str, Any] | None = None) -> None:
        assert self._sock is not None
        self._seq += 1
        data = msgpack.packb({"Command": command, "Seq": self._seq})
        if body is not None:
            data += msgpack.packb(dict(body))
        self._sock.sendall(data)

    def _recv(self) -> Any:
        assert self._sock is not None
        while True:
            for obj in self._unpacker:
                return obj
            chunk = self._sock.recv(65536)
            if not chunk:
                raise OSError("serf RPC connection closed")
            self._unpacker.feed(chunk)

    def _header(self) -> None:
        hdr = self._recv()
        if not isinstance(hdr, dict):
            raise OSError(f"serf RPC: bad header {hdr!r}")
        err = hdr.get(b"Error")
        if err:
            raise OSError(f"serf RPC error: {_text(err)}")

    def _connect(self) -> None:
        sock = self.lab.socket(self.host, socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(RPC_ADDR)
            self._sock = sock
            self._unpacker = msgpack.Unpacker(raw=True)
            self._send("handshake", {"Version": 1})
            self._header()
        except BaseException:
            sock.close()
            self._sock = None
            raise

    def members(self) -> list[SerfMember]:
        """The agent's member list; raises OSError when the agent does not answer."""
        try:
            if self._sock is None:
                self._connect()
            self._send("members")
            self._header()
            body = self._recv()
            rows = body[b"Members"]
            return [
                SerfMember(
                    name=_text(m[b"Name"]),
                    addr=_ip_text(m[b"Addr"]),
                    port=int(m[b"Port"]),
                    status=_text(m[b"Status"]),
                    tags={_text(k): _text(v) for k, v in (m.get(b"Tags") or {}).items()},
                )
                for m in rows
            ]
        except (OSError, KeyError, TypeError, ValueError, AttributeError) as e:
            self.close()
            if isinstance(e, OSError):
                raise
            raise OSError(f"serf RPC: unexpected reply ({e!r})") from e


    def join(self, addresses: Sequence[str], *, replay: bool = False) -> int:
        """RPC ``join`` (what ``serf join`` sends): push/pull with each address; returns
        how many answered. Raises OSError when none did or the agent does not answer."""
        try:
            if self._sock is None:
                self._connect()
            self._send("join", {"Existing": list(addresses), "Replay": replay})
            self._header()
            body = self._recv()
            return int(body[b"Num"])
        except (OSError, KeyError, TypeError, ValueError, AttributeError) as e:
            self.close()
            if isinstance(e, OSError):
                raise
            raise OSError(f"serf RPC: unexpected reply ({e!r})") from e


def members_cli(lab: Lab, host: Host, serf: str, *, timeout: float = 10.0) -> list[SerfMember]:
    """``serf members -format=json`` run inside ``host``: the view a user would see."""
    r = lab.run(
        host,
        [serf, "members", "-format=json", f"-rpc-addr={RPC_ADDR[0]}:{RPC_ADDR[1]}"],
        timeout=timeout,
    )
    rows = json.loads(r.stdout)["members"]
    out = []
    for m in rows:
        addr, _, port = str(m["addr"]).rpartition(":")
        out.append(
            SerfMember(
                name=str(m["name"]),
                addr=addr,
                port=int(m.get("port") or port or 0),
                status=str(m["status"]),
                tags={str(k): str(v) for k, v in (m.get("tags") or {}).items()},
            )
        )
    return out
