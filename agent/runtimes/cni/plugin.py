"""``overlay-cni``: the CNI plugin binary (CNI spec 1.1.0), a short-lived client of the agent.

The runtime (podman, containerd, cri-o, cnitool) runs it with ``CNI_*`` in the
environment and the network configuration on stdin, e.g. the conflist entry
``{"type": "overlay-cni", "network": "blue", "socket": "/run/overlay-agent/agent.sock"}``
(``network`` defaults to the conflist's ``name``, ``socket`` to ``$OVERLAY_AGENT_SOCKET``
or the agent's default path). Each command is one request on the agent's control
socket (op ``cni``, ``agent.runtimes.cni.attachments``):

- ADD: the agent creates the endpoint and its veth (container side ``CNI_IFNAME`` in
  ``CNI_NETNS``); the result lists both interfaces and the addresses. First in a chain:
  it takes no ``prevResult``; ``portmap``, ``tuning`` etc. may follow it.
- DEL: idempotent, ``CNI_NETNS`` may be empty (containerd). When the agent is down or
  fails, the container's interface is deleted here (``offline``) and DEL succeeds.
- CHECK: the endpoint, both ends of the veth and the prevResult's addresses agree.
- STATUS: code 50 when the agent is unreachable or the network unknown.
- GC: CNI endpoints of the network whose (container, ifname) is not listed go.
- VERSION: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0.
A failure is the spec's error object on stdout with a one-line ``msg`` (podman prints
``plugin type="overlay-cni" failed (add): <msg>``) and exit status 1.

Owns: the command dispatch and the mapping of agent answers to CNI results and errors.
Does not: import trio, typing, dataclasses or the agent's control client (it must start
fast: a podman run starts four plugin processes), or check the invocation itself (``spec``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

from agent.runtimes.cni import spec
from agent.runtimes.cni.spec import CniError, Invocation

TYPE_CHECKING = False  # no typing at run time (start-up cost; see PROTOCOL_VERSION)
if TYPE_CHECKING:
    from typing import Any

OP = "cni"
PROTOCOL_VERSION = 1
"""``agent.control.protocol.VERSION``, spoken here directly: importing the control client
(and with it the gossip codecs) would cost every plugin process ~20 ms. A test checks
the two agree, and ``DEFAULT_SOCKET`` / ``SOCKET_ENV`` with ``agent.ctl.client``'s."""
DEFAULT_SOCKET = "/run/overlay-agent/agent.sock"
SOCKET_ENV = "OVERLAY_AGENT_SOCKET"
MAX_REPLY = 1 << 20
ADD_TIMEOUT = 30.0
"""The agent may wait for its first reconcile pass and builds the veth in a namespace."""
TIMEOUT = 15.0


class Unreachable(Exception):
    """No agent answers on the socket (not running, wrong path, no permission)."""


class Refused(Exception):
    """The agent answered with an error (its one line is the message)."""


def socket_path(inv: Invocation, env: Mapping[str, str]) -> str:
    return inv.socket or env.get(SOCKET_ENV) or DEFAULT_SOCKET


def request(path: str, args: dict[str, Any], timeout: float) -> Any:
    """One ``cni`` request, one connection; Unreachable, Refused, or CniError(TRY_AGAIN)
    when the agent does not answer in time or answers nonsense."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise Unreachable(exc.strerror or str(exc)) from None
        line = json.dumps({"v": PROTOCOL_VERSION, "op": OP, "args": args}).encode() + b"\n"
        buf = bytearray()
        try:
            sock.sendall(line)
            while b"\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_REPLY:
                    raise CniError(spec.TRY_AGAIN, f"overlay-agent at {path}: reply too large")
        except TimeoutError:
            raise CniError(spec.TRY_AGAIN, f"overlay-agent at {path} did not answer within {timeout:g}s") from None
        except OSError as exc:
            raise CniError(spec.TRY_AGAIN, f"overlay-agent at {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(bytes(buf).split(b"\n", 1)[0])
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or reply.get("v") != PROTOCOL_VERSION:
        raise CniError(spec.TRY_AGAIN, f"overlay-agent at {path}: malformed reply (control API version "
                                       f"{PROTOCOL_VERSION} expected)")
    if not reply.get("ok"):
        raise Refused(str(reply.get("error") or "unknown error"))
    return reply.get("result")


def _unreachable(path: str, why: str) -> str:
    return (f"overlay-agent is not reachable at {path} ({why}); start it or set \"socket\" "
            "in the network configuration")


def run(inv: Invocation, env: Mapping[str, str]) -> dict[str, Any] | None:
    """Execute one checked invocation; the JSON to print (None: nothing). CniError."""
    if inv.command == "VERSION":
        return spec.version_reply(inv.version)
    path = socket_path(inv, env)
    if inv.command == "DEL":
        _delete(inv, path)
        return None
    args: dict[str, Any] = {"network": inv.network}
    if inv.command == "ADD":
        args.update(action="add", container=inv.container, netns=inv.netns, ifname=inv.ifname)
        for key, value in (("name", inv.name), ("ip", inv.ipv4), ("ip6", inv.ipv6), ("mac", inv.mac)):
            if value is not None:
                args[key] = value
        if inv.ranges:
            args["ranges"] = [dict(r) for r in inv.ranges]
        if inv.aliases:
            args["aliases"] = list(inv.aliases)
        timeout = ADD_TIMEOUT
    elif inv.command == "CHECK":
        args.update(action="check", container=inv.container, netns=inv.netns, ifname=inv.ifname)
        timeout = TIMEOUT
    elif inv.command == "GC":
        args.update(action="gc", valid=[{"container": a.container, "ifname": a.ifname} for a in inv.valid])
        timeout = TIMEOUT
    else:
        args.update(action="status")
        timeout = TIMEOUT
    try:
        result = request(path, args, timeout)
    except Unreachable as exc:
        code = spec.NOT_AVAILABLE if inv.command == "STATUS" else spec.TRY_AGAIN
        raise CniError(code, _unreachable(path, str(exc))) from None
    except Refused as exc:
        raise CniError(spec.NOT_AVAILABLE if inv.command == "STATUS" else spec.AGENT_REFUSED, str(exc)) from None
    if inv.command == "ADD":
        if not isinstance(result, dict):
            raise CniError(spec.AGENT_REFUSED, "malformed reply from the agent")
        return spec.add_result(inv, result)
    if inv.command == "CHECK":
        _compare(inv, result)
    return None


def _delete(inv: Invocation, path: str) -> None:
    """DEL never fails for the agent's sake: without an answer, delete the interface here."""
    from agent.runtimes.cni import offline

    args = {"action": "del", "network": inv.network, "container": inv.container, "ifname": inv.ifname,
            "netns": inv.netns}
    try:
        request(path, args, TIMEOUT)
    except (Unreachable, Refused, CniError) as exc:
        note = offline.delete_interface(inv.netns, inv.ifname)
        print(f"overlay-cni: DEL without the agent at {path} ({' '.join(str(exc).split())}): {note}",
              file=sys.stderr)


def _compare(inv: Invocation, ep: Any) -> None:
    if not isinstance(ep, dict):
        raise CniError(spec.AGENT_REFUSED, "malformed reply from the agent")
    want = spec.expected_addresses(inv.prev_result)
    have = {c for c in (ep.get("ipv4_cidr"), ep.get("ipv6_cidr")) if isinstance(c, str) and c}
    if want and want != have:
        raise CniError(spec.AGENT_REFUSED, f"{inv.ifname} of container {inv.container[:12]} has "
                                           f"{', '.join(sorted(have)) or 'no address'}, prevResult says "
                                           f"{', '.join(sorted(want))}")


def _version_hint(data: bytes) -> str:
    """The configuration's cniVersion for an error reply, when it can be read at all."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return spec.SPEC_VERSION
    version = obj.get("cniVersion") if isinstance(obj, dict) else None
    return version if isinstance(version, str) else spec.SPEC_VERSION


def main() -> int:
    env = os.environ
    data = b""
    try:
        data = sys.stdin.buffer.read(spec.MAX_CONFIG + 1)
        inv = spec.parse(env, data)
        out = run(inv, env)
    except CniError as err:
        _write(spec.error_reply(_version_hint(data), err))
        return 1
    except OSError as exc:
        _write(spec.error_reply(_version_hint(data), CniError(spec.IO_FAILURE, f"I/O error: {exc}")))
        return 1
    if out is not None:
        _write(out)
    return 0


def _write(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
