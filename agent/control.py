"""The control API server: a Unix socket speaking ``agent.api`` JSON lines.

Owns: the socket file (created mode 0600 in a created parent directory; a stale
file from a crashed agent is replaced, a live agent's is not), connection
handling (line limit, idle timeout, a cap on concurrent connections) and the
ops: ``members``, ``status``, ``leave`` and the streaming ``events``. Bad
requests get an error reply; nothing a client sends can affect the agent
beyond the op it asks for. Does not: touch the core except through
``Driver.call`` / ``Driver.leave``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket as stdsocket
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from agent import api
from agent.driver import Driver
from agent.events import OVERFLOW, EventHub
from agent.log import kv
from gossip.effects import Effect
from gossip.members import Status
from gossip.swim import Swim

log = logging.getLogger("agent.control")

IDLE_TIMEOUT = 60.0
"""A connection that sends no complete request for this long is closed."""
MAX_CONNECTIONS = 64
DRAIN_TIMEOUT = 1.0
DRAIN_LIMIT = 4 * 1024 * 1024
"""Input discarded after refusing an oversized request, so the client gets the reply."""
LEAVE_WAIT = 5.0
"""How long ``leave`` waits for the leave to go out before replying anyway."""


class ControlError(RuntimeError):
    """The control socket cannot be set up; the message says why."""


def agent_version() -> str:
    from importlib import metadata  # only when asked: it costs ~1 MiB of RSS

    try:
        return metadata.version("overlay-agent")
    except metadata.PackageNotFoundError:
        return "unknown"


def _in_use(path: str) -> bool:
    """Whether a live process accepts connections on an existing socket file."""
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()


def open_socket(path: str, mode: int = 0o600) -> trio.socket.SocketType:
    """Bind and listen on ``path`` (0600; issue 7 adds 0660 + group). Raises ControlError."""
    parent = os.path.dirname(path) or "."
    try:
        os.makedirs(parent, mode=0o755, exist_ok=True)
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise ControlError(f"control socket {path} exists and is not a socket")
            if _in_use(path):
                raise ControlError(f"control socket {path} is in use by a running agent")
            os.unlink(path)  # left behind by an agent that did not exit cleanly
        sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o177)  # never visible with wider permissions
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
            os.chmod(path, mode)
            sock.listen(MAX_CONNECTIONS)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None
    return trio.socket.from_stdlib_socket(sock)


class _TooLarge(Exception):
    pass


class _LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.eof = False

    async def line(self) -> bytes | None:
        """The next line without its newline; None at EOF. Raises _TooLarge."""
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                if end > api.MAX_REQUEST:
                    raise _TooLarge
                line = bytes(self.buf[:end])
                del self.buf[: end + 1]
                return line
            if len(self.buf) > api.MAX_REQUEST:
                raise _TooLarge
            if self.eof:
                # A last request without a newline still counts (``printf ... | nc -U``).
                line, self.buf = bytes(self.buf), bytearray()
                return line or None
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                self.eof = True
            self.buf += chunk


async def _hang_up(stream: trio.SocketStream) -> None:
    """Close so that the client still reads our last reply.

    Closing with unread input makes the kernel reset the connection, and the
    client would lose the reply: half-close, then discard input for a while.
    """
    await stream.send_eof()
    with trio.move_on_after(DRAIN_TIMEOUT):
        discarded = 0
        while discarded < DRAIN_LIMIT and (chunk := await stream.receive_some(65536)):
            discarded += len(chunk)


Handler = Callable[[api.Request, trio.SocketStream], Awaitable[Any]]
_STREAMED = object()
"""A handler's return value when it has written its own replies."""


class ControlServer:
    def __init__(
        self,
        sock: trio.socket.SocketType,
        path: str,
        driver: Driver,
        hub: EventHub,
        *,
        info: dict[str, Any],
        request_stop: Callable[[str], None],
    ) -> None:
        self.sock = sock
        self.path = path
        self.driver = driver
        self.hub = hub
        self.info = info
        self.request_stop = request_stop
        self.ops: dict[str, Handler] = {
            "members": self._members,
            "status": self._status,
            "leave": self._leave,
            "events": self._events,
        }
        self._active = 0

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    async def serve(self) -> None:
        listener = trio.SocketListener(self.sock)
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    log.warning(kv("control-accept-error", errno=exc.errno))
                    await trio.sleep(0.1)
                    continue
                if self._active >= MAX_CONNECTIONS:
                    with contextlib.suppress(trio.BrokenResourceError, OSError):
                        await stream.send_all(api.encode(api.error("too many control connections")))
                    await stream.aclose()
                    continue
                self._active += 1
                nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                await self._requests(stream)
        except (trio.BrokenResourceError, OSError):
            pass  # the client went away
        finally:
            self._active -= 1

    async def _requests(self, stream: trio.SocketStream) -> None:
        reader = _LineReader(stream)
        while True:
            line: bytes | None = None
            with trio.move_on_after(IDLE_TIMEOUT):
                try:
                    line = await reader.line()
                except _TooLarge:
                    await stream.send_all(api.encode(
                        api.error(f"request too large (limit {api.MAX_REQUEST} bytes)")))
                    await _hang_up(stream)  # no cheap way to find the next request
                    return
            if line is None:
                return
            if not line.strip():
                continue
            try:
                req = api.parse_request(line)
            except api.ApiError as exc:
                await stream.send_all(api.encode(api.error(str(exc))))
                continue
            handler = self.ops.get(req.op)
            if handler is None:
                known = ", ".join(sorted(self.ops))
                await stream.send_all(api.encode(
                    api.error(f"unknown op {req.op!r} (known: {known})", req.id)))
                continue
            try:
                result = await handler(req, stream)
            except api.ApiError as exc:
                await stream.send_all(api.encode(api.error(str(exc), req.id)))
                continue
            except Exception as exc:
                log.exception(kv("control-op-failed", op=req.op))
                text = " ".join(str(exc).split()) or type(exc).__name__
                await stream.send_all(api.encode(api.error(f"internal error: {text}", req.id)))
                continue
            if result is _STREAMED:
                return
            await stream.send_all(api.encode(api.ok(result, req.id)))
            if req.op == "leave":
                self.request_stop("leave")  # only once the client has its answer
                return

    # -- ops ---------------------------------------------------------------------

    async def _members(self, req: api.Request, stream: trio.SocketStream) -> Any:
        def view(swim: Swim, now: float) -> tuple[list[dict[str, Any]], list[Effect]]:
            me = swim.local.name
            return [api.member_json(m, me) for m in sorted(swim.members(), key=lambda m: m.name)], []

        return await self.driver.call(view)

    async def _status(self, req: api.Request, stream: trio.SocketStream) -> Any:
        def view(swim: Swim, now: float) -> tuple[dict[str, Any], list[Effect]]:
            counts = {s.label: 0 for s in Status}
            for m in swim.members():
                counts[m.status.label] += 1
            counts["total"] = sum(counts.values())
            local = swim.local
            return {
                "node": local.name,
                "address": local.addr,
                "port": local.port,
                "incarnation": local.incarnation,
                "members": counts,
            }, []

        result = await self.driver.call(view)
        result.update(self.info)
        result.update({
            "version": agent_version(),
            "uptime": round(time.time() - self.driver.started_at, 1),
            "leaving": self.driver.leaving,
            "subscribers": self.hub.subscriber_count,
            "counters": dataclasses.asdict(self.driver.counters),
        })
        return result

    async def _leave(self, req: api.Request, stream: trio.SocketStream) -> Any:
        log.info(kv("leave-requested", source="control"))
        done = await self.driver.leave(LEAVE_WAIT)
        return {"left": True, "announced": done}

    async def _events(self, req: api.Request, stream: trio.SocketStream) -> Any:
        with self.hub.subscribe() as events:
            await stream.send_all(api.encode(api.ok({"subscribed": True}, req.id)))
            async with trio.open_nursery() as nursery:

                async def hang_up_on_eof() -> None:
                    # The client sends nothing more; its EOF ends the subscription.
                    while await stream.receive_some(4096):
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(hang_up_on_eof)
                async for body in events:
                    if body is OVERFLOW:
                        await stream.send_all(api.encode(api.error("event stream overflowed: client too slow")))
                        break
                    await stream.send_all(api.encode(api.event(body)))
                nursery.cancel_scope.cancel()
        return _STREAMED
