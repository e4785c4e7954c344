"""Whether the kernel holds dataplane objects of ours, asked cheaply at start-up.

The overlay starts its reconcilers (VXLAN and the gateway's nftables) when this host has
a network to program. An agent that starts with no network still has to remove what an
earlier run left (devices, our nft table), so at start it asks this module whether any
such object exists; only then do the reconcilers start at once (and sweep them once the
view is complete, as always). The question costs two netlink dumps and no module of the
dataplane: an agent without networks then never loads those modules (~1.6 MiB of code
per agent) nor runs their threads or the ``nft`` tool.

Owns: ``kernel_leftovers`` (links named with our prefix: bridges, VXLAN devices, endpoint
veths; our nft table in any family) and the raw ``NFT_MSG_GETTABLE`` dump it uses.
Does not: delete anything (the reconcilers do), or know the objects' shapes
(``dataplane.naming``, ``dataplane.nft.model``). Answers "maybe" (True) whenever a
question fails, so a doubt starts the reconcilers as before.
Reference: netlink(7), ``include/uapi/linux/netfilter/nf_tables.h``.
"""

from __future__ import annotations

import errno
import socket
import struct

NFT_TABLE = "overlay_agent"
"""Our nft table's name (``dataplane.nft.model.TABLE``; a unit test keeps them equal)."""

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFTA_TABLE_NAME = 1
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
_NLMSG = struct.Struct("=IHHII")
_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.ENOENT, errno.EAFNOSUPPORT})
"""Errors that mean the kernel lacks the netlink family (nf_tables, XFRM): nothing of ours there."""


def links_with_prefix(prefix: str) -> bool:
    """A network device of this namespace is named ``prefix...`` (``if_nameindex`` is a
    netlink dump in glibc; /sys/class/net may show another namespace's devices)."""
    return any(name.startswith(prefix) for _, name in socket.if_nameindex())


def _parse_tables(data: bytes, name: bytes) -> tuple[bool | None, bool]:
    """(found ``name`` / None on an error answer, dump finished) for one netlink read."""
    found = False
    off = 0
    while off + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size or off + length > len(data):
            return None, True
        if kind == NLMSG_DONE:
            return found, True
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, off + _NLMSG.size)
            if code == 0:
                return found, True
            return (False if -code in _UNSUPPORTED else None), True
        if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE:
            attr = off + _NLMSG.size + 4  # after the nfgenmsg
            while attr + 4 <= off + length:
                alen, atype = struct.unpack_from("=HH", data, attr)
                if alen < 4:
                    break
                if atype & 0x3FFF == NFTA_TABLE_NAME and data[attr + 4:attr + alen].rstrip(b"\0") == name:
                    found = True
                attr += (alen + 3) & ~3
        off += (length + 3) & ~3
    return found, False


def nft_table_exists(name: str = NFT_TABLE, timeout: float = 2.0) -> bool | None:
    """Whether an nft table called ``name`` exists in any family; None when the kernel's
    answer could not be had or read."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    except OSError as exc:
        return False if exc.errno in _UNSUPPORTED else None
    with sock:
        try:
            sock.settimeout(timeout)
            sock.bind((0, 0))
            sock.send(_NLMSG.pack(_NLMSG.size + 4, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
                                  NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + struct.pack("=BBH", socket.AF_UNSPEC, 0, 0))
            seen = False
            while True:
                found, done = _parse_tables(sock.recv(1 << 16), name.encode())
                if found is None:
                    return None
                seen = seen or found
                if done:
                    return seen
        except OSError:
            return None


def kernel_leftovers(prefix: str, *, nft: bool) -> bool:
    """Whether the kernel may hold objects of ours: a device named ``prefix...``, or (with
    ``nft``, the gateway reconciler's) our nft table; True when in doubt."""
    try:
        if links_with_prefix(prefix):
            return True
    except OSError:
        return True
    return nft and nft_table_exists() is not False


NETLINK_XFRM = 6
XFRM_MSG_NEWSA = 0x10
XFRM_MSG_GETSA = 0x12
XFRM_MSG_NEWPOLICY = 0x13
XFRM_MSG_GETPOLICY = 0x15


def _any_xfrm(sock: socket.socket, request: int, reply: int) -> bool | None:
    """Whether one XFRM dump returns at least one object (None: an error answer)."""
    sock.send(_NLMSG.pack(_NLMSG.size, request, NLM_F_REQUEST | NLM_F_DUMP, request, 0))
    found = False
    while True:
        data = sock.recv(1 << 16)
        off = 0
        while off + _NLMSG.size <= len(data):
            length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, off)
            if length < _NLMSG.size:
                return None
            if kind == NLMSG_DONE:
                return found
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, off + _NLMSG.size)
                return found if code == 0 else None
            found = found or kind == reply
            off += (length + 3) & ~3


def xfrm_objects(timeout: float = 2.0) -> bool:
    """Whether the kernel holds any XFRM state or policy (ours or anyone's: the check does
    not parse them); True when in doubt, False without XFRM support."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_XFRM)
    except OSError as exc:
        return exc.errno not in _UNSUPPORTED
    with sock:
        try:
            sock.settimeout(timeout)
            sock.bind((0, 0))
            for request, reply in ((XFRM_MSG_GETSA, XFRM_MSG_NEWSA), (XFRM_MSG_GETPOLICY, XFRM_MSG_NEWPOLICY)):
                if _any_xfrm(sock, request, reply) is not False:
                    return True
        except OSError:
            return True
    return False
