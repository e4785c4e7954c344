"""NetlinkMonitor: RTNLGRP_LINK + RTNLGRP_NEIGH notifications as ``events`` values, under trio.

Owns: a raw multicast netlink socket (in the kernel adapter's namespace), the
ifindex -> name map needed to name neighbour events, and cheap decoding of the
notifications. Does not decide what is relevant (``events.diverges``) and never
writes to the kernel.

Facts it relies on (docs/dataplane.md, "Kernel facts"): our own writes and other
people's writes/deletes both arrive as RTM_NEWNEIGH/RTM_DELNEIGH (an ``ip neigh
del`` is preceded by a NEWNEIGH in NUD_FAILED); a burst of 10,000 changes overflows
the default receive buffer, so the buffer is raised (SO_RCVBUFFORCE as root) and
ENOBUFS is reported as "lost" (the reconciler then resyncs). Only events on devices
whose names are ours are decoded; bridge (NTF_MASTER) FDB rows and miss
notifications (RTM_GETNEIGH) are skipped on header fields alone.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

import trio

from dataplane import rtnl
from dataplane.events import FdbEvent, KernelEvent, LinkEvent, NeighEvent
from dataplane.model import ZERO_MAC
from dataplane.naming import owned_kind


class NetlinkMonitor:
    """Create in any thread (blocking, ~10 ms in a named netns); use from the trio thread."""

    def __init__(self, netns: str | None, prefix: str) -> None:
        self.prefix = prefix
        self._raw = rtnl.RtnlSocket(netns, groups=(rtnl.RTNLGRP_LINK, rtnl.RTNLGRP_NEIGH))
        # Subscribe first, then seed names: a link created in between is seen twice, not lost.
        seed = rtnl.RtnlSocket(netns)
        try:
            self._names = {lk.index: lk.name for lk in rtnl.dump_links(seed)}
        finally:
            seed.close()
        self._sock: trio.socket.SocketType | None = None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._raw.close()

    async def next_events(self) -> Sequence[KernelEvent] | None:
        if self._sock is None:
            self._sock = trio.socket.from_stdlib_socket(self._raw.sock)
        while True:
            try:
                buf = await self._sock.recv(1 << 20)
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    return None
                raise
            events = self.decode(buf)
            if events:
                return events

    def decode(self, buf: bytes) -> list[KernelEvent]:
        out: list[KernelEvent] = []
        names = self._names
        prefix = self.prefix
        for pos, length, mtype, _seq in rtnl.messages(buf):
            if mtype in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
                raw = rtnl.parse_link(buf, pos, length)
                if mtype == rtnl.RTM_DELLINK:
                    names.pop(raw.index, None)
                    out.append(LinkEvent(raw.name, None))
                else:
                    names[raw.index] = raw.name
                    out.append(LinkEvent(raw.name, raw.to_link(names)))
            elif mtype in (rtnl.RTM_NEWNEIGH, rtnl.RTM_DELNEIGH):
                family, index, state, flags, _t = rtnl.NDMSG.unpack_from(buf, pos + rtnl.NDM_AT)
                device = names.get(index)
                if device is None or owned_kind(device, prefix) != "vxlan":
                    continue
                present = mtype == rtnl.RTM_NEWNEIGH and bool(state & rtnl.NUD_PERMANENT)
                if family == rtnl.AF_BRIDGE:
                    if flags & rtnl.NTF_SELF:
                        ev = _fdb_event(buf, pos, length, device, present)
                        if ev is not None:
                            out.append(ev)
                elif family in (socket.AF_INET, socket.AF_INET6):
                    nev = _neigh_event(buf, pos, length, device, present)
                    if nev is not None:
                        out.append(nev)
        return out


def _fdb_event(buf: bytes, pos: int, length: int, device: str, present: bool) -> FdbEvent | None:
    mac = dst = ""
    for kind, s, e in rtnl.walk(buf, pos + rtnl.ATTRS_AT, pos + length):
        if kind == rtnl.NDA_LLADDR and e - s == 6:
            mac = buf[s:e].hex(":")
        elif kind == rtnl.NDA_DST and e - s in (4, 16):
            dst = socket.inet_ntop(socket.AF_INET if e - s == 4 else socket.AF_INET6, buf[s:e])
    if not mac:
        return None
    if mac == ZERO_MAC and not dst:
        return None
    return FdbEvent(device, mac, dst, present)


def _neigh_event(
    buf: bytes, pos: int, length: int, device: str, present: bool
) -> NeighEvent | None:
    ip = mac = ""
    for kind, s, e in rtnl.walk(buf, pos + rtnl.ATTRS_AT, pos + length):
        if kind == rtnl.NDA_DST and e - s in (4, 16):
            ip = socket.inet_ntop(socket.AF_INET if e - s == 4 else socket.AF_INET6, buf[s:e])
        elif kind == rtnl.NDA_LLADDR:
            mac = buf[s:e].hex(":")
    if not ip:
        return None
    return NeighEvent(device, ip, mac if present and mac else None)
