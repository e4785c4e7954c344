"""KernelMirror: our links and entries as last read, kept current from netlink notifications.

Owns: a private RTNLGRP_LINK + RTNLGRP_NEIGH multicast socket, owned (like the rest of
``LinuxKernel``) by the kernel's one thread and drained only when the kernel reads; the
links that can matter to a read (bridges, VXLAN devices, our names, the ports of
bridges, the names the last read was asked about) by ifindex; the FDB, flood and
neighbour rows of our VXLAN devices, keyed exactly as ``State`` keys them.
Does not: decide what a read returns (``LinuxKernel.read`` assembles the ``State`` from
these maps with the same code whether they came from dumps or from events), or write.

Why: a level-triggered pass used to dump every link, port and entry of ours, however
little had changed. At 1,000 endpoints on one host the port dump alone (1,000 veths,
every attribute walked) was the largest CPU cost of an endpoint create, and it grew
with every endpoint. The kernel tells every subscriber about every change to links and
neighbours, synchronously with the request that made it (ours and everyone else's); a
read that first applies what was queued since the last read therefore sees what a dump
would. Correctness rests on never missing a notification silently, so the mirror is
*invalid* (the next read dumps everything and reloads it) after: a receive overflow
(ENOBUFS), a message it does not understand, a renamed bridge/VXLAN device, an operation the kernel refused, a big apply (below), and whenever the reconciler asks
for it (``LinuxKernel.forget``: its start, its periodic resync and its retries), so the
periodic full resync still repairs whatever this reasoning missed.

A big apply: the echo of 20,000 of our own writes would cost more to receive (one
``recv`` per notification) and decode (~5 µs each) than one dump of the result
(~1 µs a row), so ``LinuxKernel.apply`` leaves the groups around an apply of more than
``ECHO_LIMIT`` entry operations and invalidates the mirror instead.

One approximation, repaired by the full resync: a VXLAN FDB row with several
destinations (only ``bridge fdb append`` makes one; we never do) is kept as the last
destination announced; a dump would also show only one of them.
"""

from __future__ import annotations

import dataclasses
import errno
import socket
from collections.abc import Iterable

from dataplane import rtnl
from dataplane.naming import owned_kind

ECHO_LIMIT = 512
"""Entry operations above which an apply stops listening to its own echo (see above)."""

_Rows = dict[tuple[str, str], str]
_NETLINK_DROP_MEMBERSHIP = 2
_GROUPS = (rtnl.RTNLGRP_LINK, rtnl.RTNLGRP_NEIGH)


class KernelMirror:
    """See the module docstring. Create and use in the kernel's thread only."""

    def __init__(self, netns: str | None, prefix: str) -> None:
        self.prefix = prefix
        self._raw = rtnl.RtnlSocket(netns, groups=_GROUPS)
        self.valid = False
        self.links: dict[int, rtnl.RawLink] = {}
        self.fdb: _Rows = {}
        self.flood: dict[tuple[str, str], bool] = {}
        self.neigh: _Rows = {}
        self.hint_names: frozenset[str] = frozenset()
        self.events = 0
        """Notifications applied since creation (for tests and the benchmark)."""
        self.full_reads = 0
        self.received = 0
        self.version = 0
        """Moves whenever what the mirror holds may have changed: a read whose version
        and hint are the last read's may return the last read's State."""
        """Datagrams received while valid."""
        self._space = bytearray(1 << 16)

    def close(self) -> None:
        self._raw.close()

    # -- life cycle of one full read ------------------------------------------------------------
    def begin_full(self) -> None:
        """Before the dumps of a full read: what is queued is older than the dumps."""
        self._raw.drain()
        self.valid = False
        self.links = {}
        self.full_reads += 1

    def load(
        self,
        links: Iterable[rtnl.RawLink],
        fdb: _Rows,
        flood: dict[tuple[str, str], bool],
        neigh: _Rows,
    ) -> None:
        """After the dumps: they are the state (notifications of changes made meanwhile
        are still queued, and applying them again is harmless: each sets or removes)."""
        self.links = {lk.index: lk for lk in links}
        self.fdb, self.flood, self.neigh = dict(fdb), dict(flood), dict(neigh)
        self.valid = True
        self.version += 1

    def mute(self) -> None:
        """Stop listening (before a big apply of our own); the next read is a full one."""
        sock = self._raw.sock
        for group in _GROUPS:
            sock.setsockopt(rtnl.SOL_NETLINK, _NETLINK_DROP_MEMBERSHIP, group)
        self.valid = False

    def unmute(self) -> None:
        sock = self._raw.sock
        for group in _GROUPS:
            sock.setsockopt(rtnl.SOL_NETLINK, rtnl.NETLINK_ADD_MEMBERSHIP, group)
        self.valid = False

    # -- catching up ------------------------------------------------------------------------------
    def catch_up(self) -> bool:
        """Apply every queued notification; False if the mirror cannot be trusted."""
        recv_into, space = self._raw.sock.recv_into, self._space
        flags = socket.MSG_DONTWAIT | socket.MSG_TRUNC
        while True:
            try:
                # Into one reused buffer: a notification is one datagram of ~0.1-2 KB, and
                # recv(1 MiB) would allocate (and map) a megabyte for each.
                n = recv_into(space, len(space), flags)
            except BlockingIOError:
                return self.valid
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.valid = False  # some were lost: only a dump can tell what changed
                continue
            if n > len(space):
                self.valid = False  # truncated (MSG_TRUNC gives the real size)
            if self.valid:
                self.received += 1
                self._apply(bytes(space[:n]))

    def _apply(self, buf: bytes) -> None:
        for pos, length, mtype, _seq in rtnl.messages(buf):
            self.events += 1
            if mtype in (rtnl.RTM_NEWNEIGH, rtnl.RTM_DELNEIGH):
                self._neigh(buf, pos, length, mtype == rtnl.RTM_NEWNEIGH)
            elif mtype in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
                # AF_BRIDGE (port) and AF_INET6 (protinfo) link notifications carry only
                # part of a link: the AF_UNSPEC one that comes with every change is whole.
                if buf[pos + rtnl.HDR.size] != socket.AF_UNSPEC:
                    continue
                self._link(rtnl.parse_link(buf, pos, length), mtype == rtnl.RTM_NEWLINK)
            elif mtype == rtnl.RTM_GETNEIGH:
                continue  # a miss (an address the kernel wants resolved): no change
            else:
                self.valid = False
            if not self.valid:
                return

    def _relevant(self, lk: rtnl.RawLink) -> bool:
        if lk.kind in ("bridge", "vxlan") or lk.name in self.hint_names:
            return True
        if owned_kind(lk.name, self.prefix) is not None:
            return True
        master = self.links.get(lk.master) if lk.master else None
        return master is not None and master.kind == "bridge"

    def _link(self, lk: rtnl.RawLink, present: bool) -> None:
        old = self.links.get(lk.index)
        if old is not None and present and old.name != lk.name and old.kind in _DEVICES:
            # Entries are keyed by device name: rare enough (an operator's rename) to
            # read everything again.
            self.valid = False
            return
        if not present:
            gone = self.links.pop(lk.index, None)
            self.version += gone is not None
            if gone is not None and gone.kind in _DEVICES:
                self._device_gone(gone)
        elif old is not None or self._relevant(lk):
            self.links[lk.index] = lk
            self.version += 1

    def _device_gone(self, lk: rtnl.RawLink) -> None:
        """A bridge or VXLAN device was deleted: its rows went with it (the kernel
        announces the FDB rows' removal, not every neighbour's), its ports are free."""
        name = lk.name
        for table in (self.fdb, self.flood, self.neigh):
            for key in [k for k in table if k[0] == name]:
                del table[key]
        for i, port in list(self.links.items()):
            if port.master == lk.index:
                self.links[i] = dataclasses.replace(port, master=0)

    def _vxlan_name(self, index: int) -> str | None:
        lk = self.links.get(index)
        if lk is None or lk.kind != "vxlan":
            return None
        if owned_kind(lk.name, self.prefix) is None and lk.name not in self.hint_names:
            return None
        return lk.name

    def _neigh(self, buf: bytes, pos: int, length: int, new: bool) -> None:
        family, index, state, flags, _t = rtnl.NDMSG.unpack_from(buf, pos + rtnl.NDM_AT)
        device = self._vxlan_name(index)
        if device is None:
            return
        self.version += 1  # (perhaps)
        present = new and bool(state & rtnl.NUD_PERMANENT)
        if family == rtnl.AF_BRIDGE:
            if not flags & rtnl.NTF_SELF:
                return  # the bridge's own rows on the port: never ours (as in a dump)
            mac, dst, extra = _fdb_attrs(buf, pos, length)
            if not mac or not dst:
                return
            if extra:
                dst += "%attrs"  # as rtnl.parse_fdb spells it
            if mac == _ZERO_MAC:
                if present:
                    self.flood[(device, dst)] = True
                else:
                    self.flood.pop((device, dst), None)
            elif present:
                self.fdb[(device, mac)] = dst
            elif new:  # the row's state is the whole row's: no longer permanent
                self.fdb.pop((device, mac), None)
            elif self.fdb.get((device, mac)) == dst:
                # only the destination announced gone: another may remain (append)
                del self.fdb[(device, mac)]
        elif family in (socket.AF_INET, socket.AF_INET6):
            ip, mac = _neigh_attrs(buf, pos, length)
            if not ip:
                return
            if present and mac:
                self.neigh[(device, ip)] = mac
            else:
                self.neigh.pop((device, ip), None)


_ZERO_MAC = "00:00:00:00:00:00"
_DEVICES = ("bridge", "vxlan")
_FDB_EXTRA = (rtnl.NDA_PORT, rtnl.NDA_VNI, rtnl.NDA_IFINDEX, rtnl.NDA_SRC_VNI)


def _fdb_attrs(buf: bytes, pos: int, length: int) -> tuple[str, str, bool]:
    mac = dst = ""
    extra = False
    for kind, s, e in rtnl.walk(buf, pos + rtnl.ATTRS_AT, pos + length):
        if kind == rtnl.NDA_LLADDR and e - s == 6:
            mac = rtnl.mac_text(buf[s:e])
        elif kind == rtnl.NDA_DST and e - s in (4, 16):
            dst = rtnl.addr_text(buf[s:e])
        elif kind in _FDB_EXTRA:
            extra = True
    return mac, dst, extra


def _neigh_attrs(buf: bytes, pos: int, length: int) -> tuple[str, str]:
    ip = mac = ""
    for kind, s, e in rtnl.walk(buf, pos + rtnl.ATTRS_AT, pos + length):
        if kind == rtnl.NDA_DST and e - s in (4, 16):
            ip = rtnl.addr_text(buf[s:e])
        elif kind == rtnl.NDA_LLADDR:
            mac = rtnl.mac_text(buf[s:e]) if e - s == 6 else buf[s:e].hex(":")
    return ip, mac
