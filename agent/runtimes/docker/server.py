"""HTTP/1.1 on the plugin's Unix socket: what dockerd's plugin client speaks.

Every call is ``POST /<Interface>.<Method>`` with a JSON body, answered with a JSON
body of content type ``application/vnd.docker.plugins.v1.2+json``. A handler's
``PluginError`` becomes status 500 with ``{"Err": message}`` (the shape dockerd shows
the user); an unknown method is a 404 of the same shape.

Every input is hostile until bounded: bodies over ``MAX_BODY`` bytes, JSON nested
deeper than ``MAX_DEPTH``, a request that takes longer than ``REQUEST_TIMEOUT`` to
arrive, and more than ``MAX_CONNECTIONS`` at once are refused; the socket is mode 0600
(dockerd runs as root).

Owns: opening the socket (stale socket files are replaced), the h11 connection loop,
JSON decoding with its bounds, the error shape. Does not: know any method
(``driver``, ``ipam`` through ``plugin``).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio

from agent.log import kv

log = logging.getLogger("agent.runtimes.docker")

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
MAX_BODY = 1 << 20
MAX_DEPTH = 16
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT = 30.0
"""From the first byte of a request to its last (dockerd sends a small body at once)."""
IDLE_TIMEOUT = 120.0
"""A kept-alive connection with no new request is closed after this long."""

Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""(method, request object) -> reply object; raises PluginError or UnknownMethod."""


class PluginError(Exception):
    """A refused call; the message is one line for the user (``docker`` prints it)."""


class UnknownMethod(Exception):
    pass


class SocketError(RuntimeError):
    """The socket cannot be opened; one line for the operator."""


def open_socket(path: str) -> trio.socket.SocketType:
    """Bind and listen on ``path`` (mode 0600), making its directory if needed."""
    import socket as stdsocket

    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise SocketError(f"docker plugin socket {path} exists and is not a socket")
            probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # left behind by an agent that did not exit cleanly
            else:
                raise SocketError(f"docker plugin socket {path} is in use by another process")
            finally:
                probe.close()
        sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old)
        sock.listen(MAX_CONNECTIONS)
    except SocketError:
        raise
    except OSError as exc:
        raise SocketError(f"docker plugin socket {path}: {exc.strerror or exc}") from None
    return trio.socket.from_stdlib_socket(sock)


def depth(obj: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a decoded JSON value, counting up to ``limit + 1`` at most."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    deepest = 0
    while stack:
        value, d = stack.pop()
        if d > limit:
            return d
        deepest = max(deepest, d)
        if isinstance(value, dict):
            stack.extend((v, d + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, d + 1) for v in value)
    return deepest


def decode(body: bytes) -> dict[str, Any]:
    """The request object (an empty body is ``{}``). PluginError."""
    if not body.strip():
        return {}
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise PluginError("request body is not JSON") from None
    if not isinstance(obj, dict):
        raise PluginError("request body is not a JSON object")
    if depth(obj) > MAX_DEPTH:
        raise PluginError(f"request body is nested deeper than {MAX_DEPTH} levels")
    return obj


class Server:
    def __init__(self, sock: trio.socket.SocketType, path: str, handler: Handler) -> None:
        self.sock = sock
        self.path = path
        self.handler = handler
        self.limit = trio.CapacityLimiter(MAX_CONNECTIONS)
        self.calls = 0
        self.errors = 0

    def close(self) -> None:
        self.sock.close()
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except OSError:
            pass

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.SocketListener(self.sock)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                if self.limit.borrowed_tokens >= self.limit.total_tokens:
                    await stream.aclose()  # over the bound: dockerd retries
                    continue
                nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with self.limit, stream:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
            try:
                while True:
                    request = await self._read_request(conn, stream)
                    if request is None:
                        return
                    method, body = request
                    status, reply = await self._dispatch(method, body)
                    await self._send(conn, stream, status, reply)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
            except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream) -> tuple[str, bytes] | None:
        """(method, body) of the next request; None when the connection is done."""
        target = ""
        body = bytearray()
        with trio.move_on_after(IDLE_TIMEOUT) as scope:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    scope.deadline = min(scope.deadline, trio.current_time() + REQUEST_TIMEOUT)
                    length = dict(event.headers).get(b"content-length", b"0")
                    if event.method == b"POST":
                        target = event.target.decode("latin-1").lstrip("/")
                    if length.isdigit() and int(length) > MAX_BODY:
                        await self._send(conn, stream, 413, {"Err": f"request body over {MAX_BODY} bytes"})
                        return None
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY:
                        await self._send(conn, stream, 413, {"Err": f"request body over {MAX_BODY} bytes"})
                        return None
                elif isinstance(event, h11.EndOfMessage):
                    return target, bytes(body)
                elif isinstance(event, h11.ConnectionClosed):
                    return None
        return None  # too slow or idle too long

    async def _dispatch(self, method: str, body: bytes) -> tuple[int, dict[str, Any]]:
        self.calls += 1
        try:
            if not method:
                raise UnknownMethod()
            reply = await self.handler(method, decode(body))
        except UnknownMethod:
            self.errors += 1
            return 404, {"Err": f"overlay-agent: unknown plugin method {method[:80]!r}"}
        except PluginError as exc:
            self.errors += 1
            log.warning(kv("docker-call-refused", method=method, reason=str(exc)))
            return 500, {"Err": str(exc)}
        return 200, reply

    @staticmethod
    async def _send(conn: h11.Connection, stream: trio.SocketStream, status: int, reply: dict[str, Any]) -> None:
        data = json.dumps(reply).encode()
        headers = [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(data)))]
        out = b"".join(conn.send(e) or b"" for e in (
            h11.Response(status_code=status, headers=headers), h11.Data(data=data), h11.EndOfMessage()))
        await stream.send_all(out)
