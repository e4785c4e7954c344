"""The control API server: a Unix socket speaking ``agent.control.protocol`` JSON lines.

Owns: the socket file (mode 0600, or 0660 and group ``control_group``; a stale
file from a crashed agent is replaced, a live agent's is not), who may talk to
it (SO_PEERCRED: root, the agent's own user, or a member of the control group;
checked per connection even though the file mode already keeps others out,
because a socket file's mode is easy to loosen by accident), connection
handling (line limit, idle timeout, a cap on concurrent connections) and
dispatch to a registry of ops (``Op``; the built-in ones are in ``agent.control.ops``,
later layers register more with ``ControlServer.register``). Bad requests get
an error reply; nothing a client sends can affect the agent beyond the op it
asks for: every exception of a request (parsing, the op, shaping its reply) becomes an
error reply, and anything else a connection raises ends that connection only, logged.
The limits (line size, connections, idle timeout) are ``agent.limits``'.
Does not: implement ops, or touch the core.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket as stdsocket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from agent import limits
from agent.control import protocol as api
from agent.log import kv

if TYPE_CHECKING:
    from agent.runtime import Runtime

log = logging.getLogger("agent.control.server")

IDLE_TIMEOUT = limits.DEFAULT.control_idle_timeout
"""A connection that sends no complete request for this long is closed."""
MAX_CONNECTIONS = limits.DEFAULT.control_connections
DRAIN_TIMEOUT = 1.0
DRAIN_LIMIT = 4 * 1024 * 1024
"""Input discarded after refusing a request, so the client gets the reply."""
REFUSAL_LOG_INTERVAL = 60.0


class ControlError(RuntimeError):
    """The control socket cannot be set up; the message says why."""


# -- the socket file ------------------------------------------------------------------------


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


def open_socket(path: str, gid: int | None = None) -> trio.socket.SocketType:
    """Bind and listen on ``path``: mode 0600, or 0660 owned by group ``gid``. Raises ControlError."""
    parent = os.path.dirname(path) or "."
    mode = 0o600 if gid is None else 0o660
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
            if gid is not None:
                try:
                    os.chown(path, -1, gid)  # group first, then widen the mode
                except PermissionError:
                    raise ControlError(f"control socket {path}: cannot give it to group {gid} "
                                       f"(control_group): the agent needs CAP_CHOWN or to be a member") from None
            os.chmod(path, mode)
            sock.listen(MAX_CONNECTIONS)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
    except ControlError:
        raise
    except OSError as exc:
        raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None
    return trio.socket.from_stdlib_socket(sock)


# -- who is calling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(sock: stdsocket.socket | trio.socket.SocketType) -> Peer | None:
    try:
        raw = sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


def _supplementary_groups(pid: int) -> list[int]:
    """The peer's supplementary groups (SO_PEERCRED gives only the primary one)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return [int(g) for g in line.split()[1:] if g.isdigit()]
    except OSError:
        pass
    return []


def refusal(peer: Peer | None, gid: int | None, group_name: str | None) -> str | None:
    """Why ``peer`` may not use the API, or None when it may."""
    if peer is None:
        return "permission denied: cannot identify the caller (SO_PEERCRED failed)"
    if peer.uid in (0, os.geteuid()):
        return None
    if gid is not None and (peer.gid == gid or gid in _supplementary_groups(peer.pid)):
        return None
    if gid is None:
        return (f"permission denied: uid {peer.uid} is not root (the control socket is root-only; "
                f"set control_group to allow a group)")
    return f"permission denied: uid {peer.uid} is neither root nor in group {group_name or gid} (control_group)"


# -- ops ----------------------------------------------------------------------------------------

Handler = Callable[["Runtime", api.Request, trio.SocketStream], Awaitable[Any]]


@dataclass(frozen=True)
class Op:
    """One control operation. ``handler(runtime, request, stream)`` returns the result."""

    handler: Handler
    summary: str
    streaming: bool = False
    """The handler writes its own replies (``agent.control.protocol.event`` lines) and the connection ends."""
    stops_agent: bool = False
    """After the reply is sent, the agent stops (``leave``)."""


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


class ControlServer:
    def __init__(
        self,
        sock: trio.socket.SocketType,
        path: str,
        runtime: Runtime,
        ops: Mapping[str, Op],
        *,
        gid: int | None = None,
        group_name: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.sock = sock
        self.path = path
        self.runtime = runtime
        self.ops: dict[str, Op] = dict(ops)
        self.gid = gid
        self.group_name = group_name
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.refused = 0
        self.failed_connections = 0
        """Connections ended by an unexpected exception (logged); the agent carries on."""
        self._active = 0
        self._refusal_logged: dict[int, float] = {}

    def register(self, name: str, op: Op) -> None:
        """Add an op (later layers: ``network``, ``endpoint``, ``dataplane``...)."""
        if name in self.ops:
            raise ValueError(f"control op {name!r} is already registered")
        self.ops[name] = op

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.SocketListener(self.sock)
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    log.warning(kv("control-accept-error", errno=exc.errno))
                    await trio.sleep(0.1)
                    continue
                if self._active >= self.max_connections:
                    with contextlib.suppress(trio.BrokenResourceError, OSError):
                        await stream.send_all(api.encode(api.error("too many control connections")))
                    await stream.aclose()
                    continue
                self._active += 1
                nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                why = refusal(peer_of(stream.socket), self.gid, self.group_name)
                if why is not None:
                    self._note_refusal(stream, why)
                    await stream.send_all(api.encode(api.error(why)))
                    await _hang_up(stream)
                    return
                await self._requests(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away
        except Exception:
            # A bug must end this connection only, never the server (and the agent).
            self.failed_connections += 1
            log.exception(kv("control-connection-failed"))
        finally:
            self._active -= 1

    def _note_refusal(self, stream: trio.SocketStream, why: str) -> None:
        self.refused += 1
        peer = peer_of(stream.socket)
        uid = peer.uid if peer else -1
        now = trio.current_time()
        last = self._refusal_logged.get(uid)
        if last is None or now - last >= REFUSAL_LOG_INTERVAL:  # a local user cannot flood the log
            if len(self._refusal_logged) > 256:
                self._refusal_logged.clear()
            self._refusal_logged[uid] = now
            log.warning(kv("control-refused", uid=uid, pid=peer.pid if peer else None, reason=why))

    async def _requests(self, stream: trio.SocketStream) -> None:
        reader = _LineReader(stream)
        while True:
            line: bytes | None = None
            with trio.move_on_after(self.idle_timeout):
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
            done, reply = await self._answer(line, stream)
            if reply is None:  # a streaming op wrote its own replies; the connection ends
                return
            await stream.send_all(reply)
            if done is not None and done[1].stops_agent:
                self.runtime.shutdown.request(done[0])  # only once the client has its answer
                return

    async def _answer(
        self, line: bytes, stream: trio.SocketStream
    ) -> tuple[tuple[str, Op] | None, bytes | None]:
        """(op name, op) when the op succeeded, and the encoded reply line to one request
        line (None: a streaming op wrote its own). Never raises but for the connection's
        own trouble (cancellation, a broken stream): any other exception, whether from
        parsing, the op or encoding its result, is an error reply."""
        req_id: Any = None
        name: str | None = None
        try:
            req = api.parse_request(line)
            req_id, name = req.id, req.op
            op = self.ops.get(req.op)
            if op is None:
                known = ", ".join(sorted(self.ops))
                return None, api.encode(api.error(f"unknown op {req.op!r} (known: {known})", req.id))
            result = await op.handler(self.runtime, req, stream)
            if op.streaming:
                return (req.op, op), None
            return (req.op, op), api.encode(api.ok(result, req.id))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except api.ApiError as exc:
            return None, _error_line(str(exc), req_id)
        except Exception as exc:
            log.exception(kv("control-op-failed", op=name))  # not the request: it may hold a key
            text = " ".join(str(exc).split())[:300] or type(exc).__name__
            return None, _error_line(f"internal error: {text}", req_id)


def _error_line(message: str, req_id: Any) -> bytes:
    """An encoded error reply; without the id when that cannot be encoded back."""
    try:
        return api.encode(api.error(message, req_id))
    except (TypeError, ValueError, RecursionError):
        return api.encode(api.error(message))
