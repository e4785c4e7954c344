"""The underlay MTU: of the configured interface, or of the interface holding our VTEP address.

Owns: that lookup, with raw rtnetlink dumps (``dataplane.rtnl``: links and
addresses of the agent's own namespace), so an agent does not load pyroute2 just to
start. Blocking: run it in a worker thread. Never raises: returns (MTU or None,
where it came from or why it is unknown), and the agent falls back to 1500 with a
warning. Does not: watch for MTU changes (a restart picks them up).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from dataplane import rtnl

RTM_NEWADDR = 20
RTM_GETADDR = 22
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index


def _index_of_address(sock: rtnl.RtnlSocket, vtep: str) -> int | None:
    addr = ipaddress.ip_address(vtep)
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    for msg in sock.request(RTM_GETADDR, rtnl.NLM_F_DUMP, IFADDRMSG.pack(family, 0, 0, 0, 0)):
        _, mtype, _, _, _ = rtnl.HDR.unpack_from(msg, 0)
        if mtype != RTM_NEWADDR:
            continue
        fam, _, _, _, index = IFADDRMSG.unpack_from(msg, rtnl.HDR.size)
        if fam != family:
            continue
        for kind, start, end in rtnl.walk(msg, rtnl.HDR.size + IFADDRMSG.size, len(msg)):
            if kind in (IFA_ADDRESS, IFA_LOCAL) and msg[start:end] == addr.packed:
                return int(index)
    return None


def _usable(mtu: int) -> int:
    # Loopback reports 65536, one more than an IP packet can be: a VTEP on lo (a lab,
    # a test) must still work, so cap it at the largest IP datagram.
    return min(mtu, 65535)


def underlay_mtu(vtep: str, interface: str | None) -> tuple[int | None, str]:
    """(MTU of ``interface``, or of the interface holding ``vtep``; where it came from)."""
    try:
        sock = rtnl.RtnlSocket()
    except OSError as exc:
        return None, f"cannot open rtnetlink: {exc.strerror or exc}"
    try:
        if interface:
            link = rtnl.get_link(sock, interface)
            if link is None:
                return None, f"underlay_interface {interface} does not exist"
            return _usable(link.mtu), f"interface {interface}"
        index = _index_of_address(sock, vtep)
        if index is None:
            return None, f"no interface holds {vtep}"
        for link in rtnl.dump_links(sock):
            if link.index == index:
                return _usable(link.mtu), f"interface {link.name} (holds {vtep})"
        return None, f"the interface holding {vtep} vanished"
    except (OSError, ValueError, struct.error) as exc:
        return None, f"cannot read interfaces: {exc}"
    finally:
        sock.close()
