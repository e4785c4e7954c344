"""Raw rtnetlink: sockets, message framing, dumps, and the parsers we need fast.

Owns: NETLINK_ROUTE sockets (optionally created inside a named network namespace),
request/dump round trips with sequence numbers, netlink error decoding, attribute
walking, and parsers for link, FDB and neighbour messages that turn kernel bytes
straight into the canonical strings of ``dataplane.model``. Does not decide what
to read or write (``kernel.py``) and does not batch writes (``netlink_batch.py``).

Why not pyroute2 for reads: its parser costs ~50 µs per FDB/neighbour message
(docs/dataplane.md, "Kernel facts"); a no-change resync of 20,000 entries must
fit in 50 ms, which leaves ~1 µs per entry, so dumps are parsed here with
``struct`` at known offsets. Constants come from the uapi headers (linux/netlink.h,
linux/rtnetlink.h, linux/neighbour.h, linux/if_link.h); the values are ABI.
"""

from __future__ import annotations

import errno as _errno
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dataplane.model import Link, VxlanConf, canonical_ip, canonical_mac

# -- netlink -----------------------------------------------------------------------------
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_RCVBUFFORCE = 33
NLMSGERR_ATTR_MSG = 1

# -- rtnetlink message types and groups ----------------------------------------------------
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_GETNEIGH = 30
RTNLGRP_LINK = 1
RTNLGRP_NEIGH = 3

# -- links -------------------------------------------------------------------------------
IFF_UP = 0x1
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_EXT_MASK = 29
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFLA_VXLAN_ID = 1
IFLA_VXLAN_LOCAL = 4
IFLA_VXLAN_LEARNING = 7
IFLA_VXLAN_PROXY = 11
IFLA_VXLAN_PORT = 15
IFLA_VXLAN_LOCAL6 = 17

# -- neighbours / FDB --------------------------------------------------------------------
AF_BRIDGE = 7
NDA_DST = 1
NDA_LLADDR = 2
NDA_PORT = 6
NDA_VNI = 7
NDA_IFINDEX = 8
NDA_MASTER = 9
NDA_SRC_VNI = 11
NTF_SELF = 0x02
NTF_MASTER = 0x04
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80

HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
NDMSG = struct.Struct("=BxxxiHBB")  # ndmsg: family, ifindex, state, flags, type
IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
IFA_ADDRESS = 1
IFA_LOCAL = 2
ATTR = struct.Struct("=HH")
U32 = struct.Struct("=I")
I32 = struct.Struct("=i")
BE16 = struct.Struct(">H")
NDM_AT = HDR.size  # 16
ATTRS_AT = HDR.size + NDMSG.size  # 28
RCVBUF = 8 << 20


class NetlinkError(OSError):
    """The kernel answered a request with an error (errno + optional extended-ack text)."""


def align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded."""
    raw = ATTR.pack(ATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (align(len(raw)) - len(raw))


def nested(kind: int, *children: bytes) -> bytes:
    return attr(kind, b"".join(children))


def parse_error(msg: bytes | memoryview, at: int = 0) -> tuple[int, int, str]:
    """(errno (positive, 0 = ack), seq of the failed request, ext-ack text) of an NLMSG_ERROR."""
    length, _type, flags, seq, _pid = HDR.unpack_from(msg, at)
    (err,) = I32.unpack_from(msg, at + HDR.size)
    text = ""
    # NLM_F_CAPPED (0x100): the echoed request is only its header; NLM_F_ACK_TLVS (0x200).
    if flags & 0x200:
        orig_len = HDR.size if flags & 0x100 else U32.unpack_from(msg, at + HDR.size + 4)[0]
        pos = at + HDR.size + 4 + align(orig_len)
        for kind, start, end in walk(msg, pos, at + length):
            if kind == NLMSGERR_ATTR_MSG:
                text = bytes(msg[start:end]).rstrip(b"\0").decode(errors="replace")
    return -err, seq, text


def walk(buf: bytes | bytearray | memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type without flag bits, payload start, payload end) of each attribute in buf[pos:end]."""
    unpack = ATTR.unpack_from
    while pos + 4 <= end:
        alen, kind = unpack(buf, pos)
        if alen < 4 or pos + alen > end:
            return
        yield kind & 0x3FFF, pos + 4, pos + alen
        pos += (alen + 3) & ~3


def messages(buf: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(offset, length, type, seq) of each netlink message in a received buffer."""
    pos, n = 0, len(buf)
    unpack = HDR.unpack_from
    while pos + 16 <= n:
        length, kind, _flags, seq, _pid = unpack(buf, pos)
        if length < 16 or pos + length > n:
            return
        yield pos, length, kind, seq
        pos += (length + 3) & ~3


class RtnlSocket:
    """A blocking NETLINK_ROUTE socket: requests, dumps, and raw send/receive.

    One per thread (not thread-safe). ``netns`` is a name under /run/netns or a
    path; None is the caller's namespace. Strict checking is on so dump filters
    (ifindex, master, kind) are applied by the kernel.
    """

    def __init__(self, netns: str | None = None, groups: tuple[int, ...] = ()) -> None:
        if netns is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        else:
            from pyroute2.netns import create_socket

            sock = create_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE, flags=0)
        self.sock = sock
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK):
                sock.setsockopt(SOL_NETLINK, opt, 1)
            sock.bind((0, 0))
            for group in groups:
                sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        except BaseException:
            sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def next_seq(self, count: int = 1) -> int:
        """Reserve ``count`` sequence numbers; returns the first."""
        first = self._seq + 1
        self._seq = (self._seq + count) & 0x7FFFFFFF
        if self._seq < first:  # wrapped: restart low, keeping the block contiguous
            first, self._seq = 1, count
        return first

    def recv(self, flags: int = 0) -> bytes:
        return self.sock.recv(1 << 20, flags)

    def request(self, kind: int, flags: int, body: bytes) -> list[bytes]:
        """Send one request; return every reply message (dump parts or the ack).

        Raises NetlinkError with the kernel's errno and message on failure.
        """
        seq = self.next_seq()
        self.drain()
        self.sock.send(HDR.pack(HDR.size + len(body), kind, flags | NLM_F_REQUEST, seq, 0) + body)
        out: list[bytes] = []
        while True:
            buf = self.recv()
            for pos, length, mtype, mseq in messages(buf):
                if mseq != seq:
                    continue  # a stale reply of an earlier, abandoned request
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    err, _, text = parse_error(buf, pos)
                    if err:
                        raise NetlinkError(err, text or os.strerror(err))
                    return out
                out.append(buf[pos : pos + length])
                if not flags & NLM_F_DUMP and not flags & NLM_F_ACK:
                    return out

    def drain(self) -> None:
        """Drop whatever is queued (replies of an earlier request that was abandoned)."""
        while True:
            try:
                self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != _errno.ENOBUFS:
                    raise

    def dump(self, kind: int, body: bytes, consume: Callable[[bytes], bool]) -> None:
        """Run a dump, handing each received buffer to ``consume`` until it returns True.

        ``consume`` parses the buffer in place (no per-message copies) and returns
        True once it saw NLMSG_DONE; it raises NetlinkError for an NLMSG_ERROR
        (``end_of_dump`` does both). The socket is drained first, so every message
        belongs to this dump.
        """
        self.drain()
        seq = self.next_seq()
        self.sock.send(
            HDR.pack(HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body
        )
        while not consume(self.recv()):
            pass


def end_of_dump(buf: bytes, pos: int, mtype: int) -> bool:
    """True for NLMSG_DONE; raises NetlinkError for a failed dump; False otherwise."""
    if mtype == NLMSG_DONE:
        return True
    if mtype == NLMSG_ERROR:
        err, _, text = parse_error(buf, pos)
        if err:
            raise NetlinkError(err, text or os.strerror(err))
        return True
    return False


# -- links -------------------------------------------------------------------------------


def link_dump_body(kind: str | None = None, master: int | None = None) -> bytes:
    body = IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(
        IFLA_EXT_MASK, U32.pack(RTEXT_FILTER_SKIP_STATS)
    )
    if master is not None:
        body += attr(IFLA_MASTER, U32.pack(master))
    if kind is not None:
        body += nested(IFLA_LINKINFO, attr(IFLA_INFO_KIND, kind.encode() + b"\0"))
    return body


def link_get_body(name: str) -> bytes:
    return (
        IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        + attr(IFLA_EXT_MASK, U32.pack(RTEXT_FILTER_SKIP_STATS))
        + attr(IFLA_IFNAME, name.encode() + b"\0")
    )


@dataclass(frozen=True, slots=True)
class RawLink:
    """A parsed RTM_NEWLINK: index, name, and master as an index (names resolved later)."""

    index: int
    name: str
    kind: str
    mtu: int
    master: int
    up: bool
    vxlan: VxlanConf | None

    def to_link(self, names: dict[int, str]) -> Link:
        master = names.get(self.master) if self.master else None
        if self.master and master is None:
            master = f"#{self.master}"  # a master we did not read: never equal to a name
        return Link(self.name, self.kind, self.mtu, master, self.up, self.vxlan)


def _cstr(buf: bytes | memoryview, start: int, end: int) -> str:
    return bytes(buf[start:end]).split(b"\0", 1)[0].decode(errors="replace")


def _parse_vxlan(buf: bytes | memoryview, start: int, end: int) -> VxlanConf:
    vni, local, port, learning, proxy = 0, "", 0, False, False
    for kind, s, e in walk(buf, start, end):
        if kind == IFLA_VXLAN_ID:
            (vni,) = U32.unpack_from(buf, s)
        elif kind == IFLA_VXLAN_LOCAL and e - s == 4:
            local = socket.inet_ntop(socket.AF_INET, bytes(buf[s:e]))
        elif kind == IFLA_VXLAN_LOCAL6 and e - s == 16:
            local = socket.inet_ntop(socket.AF_INET6, bytes(buf[s:e]))
        elif kind == IFLA_VXLAN_PORT:
            (port,) = BE16.unpack_from(buf, s)
        elif kind == IFLA_VXLAN_LEARNING:
            learning = bool(buf[s])
        elif kind == IFLA_VXLAN_PROXY:
            proxy = bool(buf[s])
    return VxlanConf(vni, local, port, learning, proxy)


def parse_link(buf: bytes | memoryview, pos: int, length: int) -> RawLink:
    """Parse the RTM_NEWLINK/DELLINK message at ``buf[pos:pos+length]``."""
    _family, _type, index, flags, _change = IFINFO.unpack_from(buf, pos + HDR.size)
    name, kind, mtu, master = "", "", 0, 0
    vx: VxlanConf | None = None
    for akind, s, e in walk(buf, pos + HDR.size + IFINFO.size, pos + length):
        if akind == IFLA_IFNAME:
            name = sys.intern(_cstr(buf, s, e))
        elif akind == IFLA_MTU:
            (mtu,) = U32.unpack_from(buf, s)
        elif akind == IFLA_MASTER:
            (master,) = U32.unpack_from(buf, s)
        elif akind == IFLA_LINKINFO:
            data: tuple[int, int] | None = None
            for ikind, s2, e2 in walk(buf, s, e):
                if ikind == IFLA_INFO_KIND:
                    kind = _cstr(buf, s2, e2)
                elif ikind == IFLA_INFO_DATA:
                    data = (s2, e2)
            if kind == "vxlan" and data is not None:
                vx = _parse_vxlan(buf, *data)
    return RawLink(index, name, kind, mtu, master, bool(flags & IFF_UP), vx)


def dump_links(
    sock: RtnlSocket, kind: str | None = None, master: int | None = None
) -> list[RawLink]:
    out: list[RawLink] = []

    def consume(buf: bytes) -> bool:
        for pos, length, mtype, _seq in messages(buf):
            if mtype == RTM_NEWLINK:
                out.append(parse_link(buf, pos, length))
            elif end_of_dump(buf, pos, mtype):
                return True
        return False

    sock.dump(RTM_GETLINK, link_dump_body(kind, master), consume)
    return out


def _link_message(sock: RtnlSocket, name: str) -> bytes | None:
    """The RTM_NEWLINK reply to a GETLINK of ``name``; None if there is no such link
    (ENODEV, or ENOENT from older kernels). Other errors raise NetlinkError."""
    try:
        msgs = sock.request(RTM_GETLINK, 0, link_get_body(name))
    except NetlinkError as e:
        if e.errno in (_errno.ENODEV, _errno.ENOENT):
            return None
        raise
    for msg in msgs:
        if HDR.unpack_from(msg, 0)[1] == RTM_NEWLINK:
            return msg
    return None


def get_link(sock: RtnlSocket, name: str) -> RawLink | None:
    """The link called ``name``, or None if there is none."""
    msg = _link_message(sock, name)
    return None if msg is None else parse_link(msg, 0, len(msg))


def link_address(sock: RtnlSocket, name: str) -> tuple[int, bytes] | None:
    """(ifindex, IFLA_ADDRESS) of the link called ``name``, or None if there is none."""
    msg = _link_message(sock, name)
    if msg is None:
        return None
    index = IFINFO.unpack_from(msg, HDR.size)[2]
    for kind, start, end in walk(msg, HDR.size + IFINFO.size, len(msg)):
        if kind == IFLA_ADDRESS:
            return index, bytes(msg[start:end])
    return index, b""


def dump_addrs(sock: RtnlSocket, index: int) -> list[tuple[str, int]]:
    """(address text, prefix length) of every address on ``index`` (IFA_LOCAL, else
    IFA_ADDRESS, as ``ip addr`` shows them). Strict checking makes the kernel filter
    by index: a host with 1,000 endpoint veths has 1,000 other link-local addresses."""
    out: list[tuple[str, int]] = []

    def consume(buf: bytes) -> bool:
        for pos, length, mtype, _seq in messages(buf):
            if mtype == RTM_NEWADDR:
                _fam, plen, _fl, _sc, idx = IFADDR.unpack_from(buf, pos + HDR.size)
                if idx != index:
                    continue
                local = address = b""
                for kind, s, e in walk(buf, pos + HDR.size + IFADDR.size, pos + length):
                    if kind == IFA_LOCAL:
                        local = bytes(buf[s:e])
                    elif kind == IFA_ADDRESS:
                        address = bytes(buf[s:e])
                raw = local or address
                if len(raw) in (4, 16):
                    out.append((addr_text(raw), plen))
            elif end_of_dump(buf, pos, mtype):
                return True
        return False

    body = IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, index)
    sock.dump(RTM_GETADDR, body, consume)
    return out


# -- FDB and neighbours --------------------------------------------------------------------


def fdb_dump_body(ifindex: int) -> bytes:
    """Strict FDB dump request: ndm_ifindex selects the bridge port / device."""
    return NDMSG.pack(AF_BRIDGE, ifindex, 0, 0, 0)


def neigh_dump_body(ifindex: int) -> bytes:
    return NDMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(NDA_IFINDEX, U32.pack(ifindex))


_LLADDR_HDR = ATTR.pack(10, NDA_LLADDR)
_DST4_HDR = ATTR.pack(8, NDA_DST)
_DST6_HDR = ATTR.pack(20, NDA_DST)
_CACHEINFO_HDR = ATTR.pack(20, 3)  # NDA_CACHEINFO: struct nda_cacheinfo, 16 bytes
_FDB_EXTRA = (NDA_PORT, NDA_VNI, NDA_IFINDEX, NDA_SRC_VNI)

# Fixed layouts of the common messages (vxlan_fdb_info / neigh_fill_info emit the
# attributes in this order). A dump is mostly a run of equal-sized messages, which
# ``struct.iter_unpack`` decodes in C at ~0.4 µs per entry; anything else falls back
# to the attribute walk. Fields: len, type, state, flags, then attribute headers
# (checked, so a layout change can only make us slower, never wrong) and values.
_FDB4_FAST = struct.Struct("=IH10x8xHBx4s6s2x4s4s4s16x")  # 68 bytes
_FDB6_FAST = struct.Struct("=IH10x8xHBx4s6s2x4s16s4s16x")  # 80 bytes
_NEIGH4_FAST = struct.Struct("=IH10x8xHBx4s4s4s6s2x8x4s16x")  # 76 bytes (+PROBES)
_NEIGH6_FAST = struct.Struct("=IH10x8xHBx4s16s4s6s2x8x4s16x")  # 88 bytes
_FDB_FAST = {_FDB4_FAST.size: _FDB4_FAST, _FDB6_FAST.size: _FDB6_FAST}
_NEIGH_FAST = {_NEIGH4_FAST.size: _NEIGH4_FAST, _NEIGH6_FAST.size: _NEIGH6_FAST}


# raw address -> text. Addresses repeat from one resync to the next (and VTEPs within
# a dump), and a dict hit is ~5x cheaper than inet_ntop. Bounded: cleared when full.
# The texts are ``model.canonical_ip``'s (and ``mac_text``'s ``canonical_mac``'s)
# memoised objects, the ones ``compile`` uses, and link names are interned like
# ``naming``'s: ``plan`` then compares 20,000 read rows with the desired ones by
# identity (a tuple compare checks ``is`` first), ~4 ms -> ~0.6 ms.
_TEXT: dict[bytes, str] = {}
_TEXT_MAX = 1 << 18


def addr_text(raw: bytes) -> str:
    text = _TEXT.get(raw)
    if text is None:
        if len(_TEXT) >= _TEXT_MAX:
            _TEXT.clear()
        family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
        text = _TEXT[raw] = canonical_ip(socket.inet_ntop(family, raw))
    return text


_MACS: dict[bytes, str] = {}


def mac_text(raw: bytes) -> str:
    """``addr_text`` for a 6-byte MAC."""
    text = _MACS.get(raw)
    if text is None:
        if len(_MACS) >= _TEXT_MAX:
            _MACS.clear()
        text = _MACS[raw] = canonical_mac(raw.hex(":"))
    return text


def _fdb_run(
    buf: bytes,
    pos: int,
    st: struct.Struct,
    fdb: dict[tuple[str, str], str],
    flood: dict[tuple[str, str], bool],
    device: str,
) -> int:
    """Decode the run of ``st``-shaped FDB messages at ``pos``; return where it stopped."""
    size = st.size
    dst_hdr = _DST4_HDR if size == _FDB4_FAST.size else _DST6_HDR
    text, macs = _TEXT, _MACS
    count = (len(buf) - pos) // size
    for ln, mtype, state, flags, llh, mac, dh, dst, cih in st.iter_unpack(
        memoryview(buf)[pos : pos + count * size]
    ):
        if ln != size or mtype != RTM_NEWNEIGH or llh != _LLADDR_HDR or dh != dst_hdr:
            break
        if cih != _CACHEINFO_HDR:
            break
        if flags & NTF_SELF and state & NUD_PERMANENT:
            vtep = text.get(dst) or addr_text(dst)
            if mac == _ZERO6:
                flood[(device, vtep)] = True
            else:
                fdb[(device, macs.get(mac) or mac_text(mac))] = vtep
        pos += size
    return pos


_ZERO6 = bytes(6)


def _fdb_one(
    buf: bytes,
    pos: int,
    length: int,
    fdb: dict[tuple[str, str], str],
    flood: dict[tuple[str, str], bool],
    device: str,
) -> None:
    _fam, _idx, state, flags, _t = NDMSG.unpack_from(buf, pos + NDM_AT)
    if not (flags & NTF_SELF and state & NUD_PERMANENT):
        return
    mac = dst = ""
    extra = False
    for kind, s, e in walk(buf, pos + ATTRS_AT, pos + length):
        if kind == NDA_LLADDR and e - s == 6:
            mac = buf[s:e].hex(":")
        elif kind == NDA_DST and e - s in (4, 16):
            dst = socket.inet_ntop(socket.AF_INET if e - s == 4 else socket.AF_INET6, buf[s:e])
        elif kind in _FDB_EXTRA:
            extra = True
    if mac and dst:
        if extra:
            dst += "%attrs"
        if mac == "00:00:00:00:00:00":
            flood[(device, dst)] = True
        else:
            fdb[(device, mac)] = dst


def parse_fdb(
    buf: bytes,
    fdb: dict[tuple[str, str], str],
    flood: dict[tuple[str, str], bool],
    device: str,
) -> bool:
    """Add the permanent NTF_SELF rows of an FDB dump buffer to the two maps.

    Rows that carry a per-entry port, VNI or outgoing ifindex get a value that can
    never equal a plain VTEP (``addr%attrs``), so ``plan`` replaces them.
    Bridge (NTF_MASTER) and dynamic rows are not ours and are skipped.
    Returns True at the end of the dump (a ``RtnlSocket.dump`` consumer).
    """
    unpack_hdr = HDR.unpack_from
    pos, n = 0, len(buf)
    while pos + 16 <= n:
        length, mtype, _f, _s, _p = unpack_hdr(buf, pos)
        if length < 16 or pos + length > n:
            raise NetlinkError(_errno.EPROTO, "truncated netlink message")
        st = _FDB_FAST.get(length)
        if st is not None:
            new = _fdb_run(buf, pos, st, fdb, flood, device)
            if new != pos:
                pos = new
                continue
        if mtype == RTM_NEWNEIGH:
            _fdb_one(buf, pos, length, fdb, flood, device)
        elif end_of_dump(buf, pos, mtype):
            return True
        pos += (length + 3) & ~3
    return False


def _neigh_run(
    buf: bytes, pos: int, st: struct.Struct, into: dict[tuple[str, str], str], device: str
) -> int:
    size = st.size
    dst_hdr = _DST4_HDR if size == _NEIGH4_FAST.size else _DST6_HDR
    text, macs = _TEXT, _MACS
    count = (len(buf) - pos) // size
    for ln, mtype, state, _flags, dh, ip, llh, mac, cih in st.iter_unpack(
        memoryview(buf)[pos : pos + count * size]
    ):
        if ln != size or mtype != RTM_NEWNEIGH or dh != dst_hdr or llh != _LLADDR_HDR:
            break
        if cih != _CACHEINFO_HDR:
            break
        if state & NUD_PERMANENT:
            into[(device, text.get(ip) or addr_text(ip))] = macs.get(mac) or mac_text(mac)
        pos += size
    return pos


# What a fixed-layout row says, without what changes from one dump to the next: the
# header's sequence number (32-bit word 2) and the struct nda_cacheinfo (ages: the
# last four words). Zeroed in a copy by strided memoryview writes, all in C.
_FAST_SIZES = frozenset((*_FDB_FAST, *_NEIGH_FAST))
_ZEROS: dict[int, memoryview] = {}


def stable_signature(buf: bytes) -> bytes | None:
    """``buf`` with the sequence numbers and cacheinfo of its rows zeroed, if it can be
    one run of fixed-layout rows (else None). Two buffers with equal signatures, of which
    one decoded as a uniform run (``fdb_run_all``/``neigh_run_all``), say the same."""
    if len(buf) < 16:
        return None
    size = HDR.unpack_from(buf, 0)[0]
    if size not in _FAST_SIZES or len(buf) % size:
        return None
    rows, words = len(buf) // size, size // 4
    zeros = _ZEROS.get(rows)
    if zeros is None:
        zeros = _ZEROS[rows] = memoryview(bytes(4 * rows)).cast("I")
    out = bytearray(buf)
    with memoryview(out) as raw, raw.cast("I") as view:
        view[2::words] = zeros
        for k in range(words - 4, words):
            view[k::words] = zeros
    return bytes(out)


def fdb_run_all(
    buf: bytes,
    fdb: dict[tuple[str, str], str],
    flood: dict[tuple[str, str], bool],
    device: str,
) -> bool:
    """Decode ``buf`` as one run of fixed-layout FDB rows; False if it is not one (then
    a prefix may have been added: decode the whole buffer with ``parse_fdb``)."""
    st = _FDB_FAST.get(HDR.unpack_from(buf, 0)[0]) if len(buf) >= 16 else None
    return st is not None and _fdb_run(buf, 0, st, fdb, flood, device) == len(buf)


def neigh_run_all(buf: bytes, into: dict[tuple[str, str], str], device: str) -> bool:
    """``fdb_run_all`` for a neighbour dump buffer."""
    st = _NEIGH_FAST.get(HDR.unpack_from(buf, 0)[0]) if len(buf) >= 16 else None
    return st is not None and _neigh_run(buf, 0, st, into, device) == len(buf)


def parse_neigh(buf: bytes, into: dict[tuple[str, str], str], device: str) -> bool:
    """Add the PERMANENT neighbours of a neighbour dump buffer to ``into``.

    Returns True at the end of the dump (a ``RtnlSocket.dump`` consumer).
    """
    unpack_hdr = HDR.unpack_from
    pos, n = 0, len(buf)
    while pos + 16 <= n:
        length, mtype, _f, _s, _p = unpack_hdr(buf, pos)
        if length < 16 or pos + length > n:
            raise NetlinkError(_errno.EPROTO, "truncated netlink message")
        st = _NEIGH_FAST.get(length)
        if st is not None:
            new = _neigh_run(buf, pos, st, into, device)
            if new != pos:
                pos = new
                continue
        if mtype == RTM_NEWNEIGH:
            _fam, _idx, state, _flags, _t = NDMSG.unpack_from(buf, pos + NDM_AT)
            if state & NUD_PERMANENT:
                ip = mac = ""
                for kind, s, e in walk(buf, pos + ATTRS_AT, pos + length):
                    if kind == NDA_DST and e - s in (4, 16):
                        fam = socket.AF_INET if e - s == 4 else socket.AF_INET6
                        ip = socket.inet_ntop(fam, buf[s:e])
                    elif kind == NDA_LLADDR:
                        mac = buf[s:e].hex(":")
                if ip and mac:
                    into[(device, ip)] = mac
        elif end_of_dump(buf, pos, mtype):
            return True
        pos += (length + 3) & ~3
    return False
