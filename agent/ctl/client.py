"""``agentctl``'s client of the control socket: blocking, one connection per request.

Owns: where the socket is (``--socket``, ``$OVERLAY_AGENT_SOCKET``, the default path),
connecting with errors an operator can act on, sending ``agent.control.protocol``
request lines and reading the replies (size cap, timeout, version check), and
``CtlError``: every failure as one line for stderr, exit status 1.
Does not: parse the command line or format output (``agent.ctl.main``,
``agent.ctl.network``), or import trio (agentctl stays a plain blocking program).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

from agent.control import protocol as api

SOCKET_ENV = "OVERLAY_AGENT_SOCKET"
DEFAULT_SOCKET = "/run/overlay-agent/agent.sock"
MAX_REPLY = api.MAX_REPLY


class CtlError(RuntimeError):
    """A failure to report as one line, exit status 1."""


class Client:
    """Requests to one agent's control socket, one connection per request."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise CtlError(
                f"no agent control socket at {self.path} (is overlay-agent running? "
                f"choose another with --socket or ${SOCKET_ENV})"
            ) from None
        except ConnectionRefusedError:
            sock.close()
            raise CtlError(f"the agent is not running (connection refused on {self.path})") from None
        except PermissionError:
            sock.close()
            raise CtlError(f"permission denied on {self.path} (run as root or as a member of the "
                           f"agent's control_group)") from None
        except OSError as exc:
            sock.close()
            raise CtlError(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        return sock

    def _lines(self, sock: socket.socket) -> Iterator[dict[str, Any]]:
        buf = bytearray()
        while True:
            end = buf.find(b"\n")
            if end >= 0:
                line = bytes(buf[:end])
                del buf[: end + 1]
                yield self._decode(line)
                continue
            if len(buf) > MAX_REPLY:
                raise CtlError("reply from the agent is too large")
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise CtlError(f"the agent did not answer within {self.timeout:g}s ({self.path})") from None
            except OSError as exc:
                raise CtlError(f"connection to the agent failed: {exc.strerror or exc}") from None
            if not chunk:
                if buf.strip():
                    yield self._decode(bytes(buf))
                return
            buf += chunk

    def _decode(self, line: bytes) -> dict[str, Any]:
        try:
            obj = api.parse_reply(line)
        except ValueError as exc:
            raise CtlError(f"malformed reply from the agent: {exc}") from None
        if not isinstance(obj, dict):
            raise CtlError("malformed reply from the agent")
        if obj.get("v") != api.VERSION:
            raise CtlError(f"the agent speaks control API version {obj.get('v')!r}, agentctl {api.VERSION}")
        if not obj.get("ok"):
            raise CtlError(f"agent: {obj.get('error', 'unknown error')}")
        return obj

    def request(self, op: str, args: dict[str, Any] | None = None) -> Any:
        with self._connect() as sock:
            try:
                sock.sendall(api.request_line(op, args))
            except OSError as exc:
                raise CtlError(f"connection to the agent failed: {exc.strerror or exc}") from None
            for reply in self._lines(sock):
                return reply.get("result")
        raise CtlError("the agent closed the connection without a reply")

    def stream(self, op: str) -> Iterator[dict[str, Any]]:
        """A streaming op: the first reply acknowledges, then one event per line."""
        with self._connect() as sock:
            sock.sendall(api.request_line(op))
            lines = self._lines(sock)
            if next(lines, None) is None:
                raise CtlError("the agent closed the connection without a reply")
            sock.settimeout(None)  # events may be far apart
            for reply in lines:
                if "event" in reply:
                    yield reply["event"]
