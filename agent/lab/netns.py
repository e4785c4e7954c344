"""Enter a named network namespace: in a child before exec, or briefly in this thread.

Owns: the ``setns(2)`` primitive (Python 3.11 has no ``os.setns``), a
``preexec_fn`` that moves a child into a namespace so the pid the parent records
is the real program's (no ``ip netns exec`` wrapper), and ``entered()`` for
creating sockets or writing per-namespace sysctls from the harness itself.
A socket stays in the namespace it was created in, so after ``entered()`` the
thread goes back while the socket keeps talking inside the lab.
Does not create or delete namespaces (see agent/lab/netlab.py).
Reference: setns(2), network_namespaces(7); /run/netns is where iproute2 keeps names.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

# Loaded once at import time: a preexec_fn runs between fork and exec, where
# loading a library is not safe.
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def preexec_setns(fd: int) -> Callable[[], None]:
    """A ``subprocess`` preexec_fn entering the namespace open at ``fd``.

    The fd must stay open in the parent until the child has exec'd (Popen
    returns only after that), which the lab guarantees by owning the fds.
    """

    def enter() -> None:
        setns(fd)

    return enter


@contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body with this thread inside the namespace at ``path``, then return."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def socket_in(
    path: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new socket living in the namespace at ``path``."""
    with entered(path):
        return socket.socket(family, kind)


def write_sysctl(path: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl (``key`` like ``net/ipv6/conf/all/disable_ipv6``)."""
    with entered(path), open(f"/proc/sys/{key}", "w", encoding="ascii") as f:
        f.write(value)


def netns_inode(path: str) -> int | None:
    """Inode that identifies the namespace (compare with /proc/PID/ns/net)."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
