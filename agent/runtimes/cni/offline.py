"""A CNI DEL the agent cannot serve: delete the container's interface directly.

Owns: the one kernel change ``overlay-cni`` makes itself. DEL must not fail (the runtime
would keep the container half torn down), so when the agent is down or does not
answer, the plugin deletes ``CNI_IFNAME`` inside ``CNI_NETNS``; a veth pair goes as a
whole, so the agent's host-side interface disappears too and the agent withdraws the
endpoint: at once when it runs (``agent.overlay.lifecycle``), at its next start
otherwise (an endpoint whose interface is gone is not restored). Only a veth is
deleted, never in the plugin's own namespace. The calling process enters the namespace
(``setns``) and comes back: the plugin is single-threaded and short-lived.
Does not: talk to the agent or change any table.
"""

from __future__ import annotations

import ctypes
import os
import socket

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def delete_interface(netns: str, ifname: str) -> str:
    """Delete veth ``ifname`` in the namespace at ``netns``; returns what happened, one line.
    Never raises for a missing namespace or interface (that is the goal state)."""
    from dataplane import rtnl

    if not netns:
        return "no network namespace given: nothing to delete"
    try:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"network namespace {netns} is gone: nothing to delete"
    except OSError as exc:
        return f"network namespace {netns}: {exc.strerror or exc}"
    try:
        target, own_st = os.fstat(fd), os.stat("/proc/self/ns/net")
        if (target.st_dev, target.st_ino) == (own_st.st_dev, own_st.st_ino):
            return f"{netns} is the host's own network namespace: {ifname} left alone"
        own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(fd)
            try:
                sock = rtnl.RtnlSocket()
            finally:
                _setns(own)  # the socket stays in the container's namespace
        finally:
            os.close(own)
        try:
            link = rtnl.get_link(sock, ifname)
            if link is None:
                return f"{ifname} is gone from {netns}: nothing to delete"
            if link.kind != "veth":
                return f"{ifname} in {netns} is a {link.kind or 'device'}, not a veth: left alone"
            body = rtnl.IFINFO.pack(socket.AF_UNSPEC, 0, link.index, 0, 0)
            sock.request(rtnl.RTM_DELLINK, rtnl.NLM_F_ACK, body)
            return f"deleted {ifname} in {netns}"
        finally:
            sock.close()
    except OSError as exc:
        return f"cannot delete {ifname} in {netns}: {exc.strerror or exc}"
    finally:
        os.close(fd)
