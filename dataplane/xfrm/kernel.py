"""The NETLINK_XFRM socket: batched requests, one result per request, dumps read back.

Owns: ``XfrmSocket`` (optionally opened inside a named network namespace) that sends
many requests per ``sendmsg`` and returns one result per request, with the kernel's
extended-ack text in errors, and reads the SA and policy databases back; the
``XfrmApplier`` protocol it implements (fakes in tests implement it too); moving the
calling thread into a namespace (a named one for ``open``, a fresh one for the probe).
Does not: build or parse messages (``codec``), decide what to send (``plan``), or run
in trio (callers use a worker thread: a socket is used by one thread at a time).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Protocol

from dataplane.xfrm.codec import (
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    XFRM_MSG_NEWPOLICY,
    XFRM_MSG_NEWSA,
    Request,
    dump_policies_request,
    dump_states_request,
    pack_nlmsg,
    parse_error,
    parse_policy,
    parse_state,
)
from dataplane.xfrm.model import PolicyInfo, StateInfo, XfrmError

NETLINK_XFRM = 6
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # errors do not echo the whole request back
NETLINK_EXT_ACK = 11  # errors carry the kernel's explanation


class XfrmApplier(Protocol):
    """What a reconciler pass needs from the kernel (``XfrmSocket``; fakes in tests)."""

    def dump_states(self) -> list[StateInfo]: ...

    def dump_policies(self) -> list[PolicyInfo]: ...

    def apply(self, requests: Sequence[Request]) -> list[XfrmError | None]: ...

    def close(self) -> None: ...


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def unshare_netns() -> None:
    """Move the calling thread into a brand-new network namespace (gone with the thread)."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"unshare(CLONE_NEWNET): {os.strerror(e)}")


@contextlib.contextmanager
def _netns(name: str | None) -> Iterator[None]:
    """This thread inside /run/netns/NAME (or an absolute path) for the body."""
    if name is None:
        yield
        return
    path = name if name.startswith("/") else f"/run/netns/{name}"
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


class XfrmSocket:
    """A NETLINK_XFRM socket. Not thread-safe; one per worker thread or task.

    A socket stays bound to the namespace it was opened in, so ``open(netns=...)``
    programs that namespace while the thread itself goes back home.
    """

    CHUNK = 60 * 1024  # bytes of requests per sendmsg
    TIMEOUT = 30.0  # seconds to wait for an answer (TimeoutError, an OSError)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0

    @classmethod
    def open(cls, netns: str | None = None) -> XfrmSocket:
        with _netns(netns):
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
            except OSError as e:
                raise XfrmError(
                    e.errno or errno.EPROTONOSUPPORT,
                    "open NETLINK_XFRM socket",
                    "kernel has no XFRM netlink interface (CONFIG_XFRM_USER, module xfrm_user)",
                ) from e
        try:
            sock.bind((0, 0))
            sock.settimeout(cls.TIMEOUT)  # a kernel that never answers must not hang us
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
                with contextlib.suppress(OSError):  # older kernels: plain errors
                    sock.setsockopt(SOL_NETLINK, opt, 1)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> XfrmSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        return self._seq

    def apply(self, requests: Sequence[Request]) -> list[XfrmError | None]:
        """Send ``requests`` batched (many per sendmsg); one result per request, in order.

        A failed request does not stop the others: the kernel handles each message of
        a batch on its own, and each one gets its own ack.
        """
        results: list[XfrmError | None] = [None] * len(requests)
        i = 0
        while i < len(requests):
            chunk: dict[int, int] = {}  # seq -> index in requests
            buf = bytearray()
            while i < len(requests) and (not buf or len(buf) < self.CHUNK):
                seq = self._next_seq()
                chunk[seq] = i
                buf += pack_nlmsg(requests[i], seq)
                i += 1
            self._sock.send(bytes(buf))
            while chunk:
                for hdr_type, flags, seq, body in self._recv():
                    if hdr_type != NLMSG_ERROR or seq not in chunk:
                        continue
                    idx = chunk.pop(seq)
                    err, detail = parse_error(body, flags)
                    if err:
                        results[idx] = XfrmError(err, requests[idx].what, detail)
        return results

    def request(self, req: Request) -> None:
        """One request; raises ``XfrmError`` if the kernel refuses it."""
        res = self.apply([req])[0]
        if res is not None:
            raise res

    def _recv(self) -> Iterator[tuple[int, int, int, bytes]]:
        data = self._sock.recv(1 << 20)
        off = 0
        while off + NLMSGHDR.size <= len(data):
            length, kind, flags, seq, _pid = NLMSGHDR.unpack_from(data, off)
            if length < NLMSGHDR.size:
                break
            yield kind, flags, seq, data[off + NLMSGHDR.size : off + length]
            off += (length + 3) & ~3

    def _dump(self, req: Request, reply_type: int) -> list[bytes]:
        seq = self._next_seq()
        self._sock.send(pack_nlmsg(req, seq))
        out: list[bytes] = []
        while True:
            for kind, flags, rseq, body in self._recv():
                if rseq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    err, detail = parse_error(body, flags)
                    if err:
                        raise XfrmError(err, req.what, detail)
                    return out
                if kind == reply_type:
                    out.append(body)

    def dump_states(self) -> list[StateInfo]:
        return [parse_state(b) for b in self._dump(dump_states_request(), XFRM_MSG_NEWSA)]

    def dump_policies(self) -> list[PolicyInfo]:
        return [parse_policy(b) for b in self._dump(dump_policies_request(), XFRM_MSG_NEWPOLICY)]
