"""NftMonitor: address, link and nftables notifications as events for the gateway target.

Owns: two multicast netlink sockets in the kernel adapter's namespace — rtnetlink
(RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR) and NETLINK_NETFILTER
(NFNLGRP_NFTABLES) — read under trio, the ifindex -> name map, and cheap decoding:
``AddrEvent`` (an address on one of our bridges appeared or went), ``MacEvent`` (one
of our bridges appeared or changed; None when deleted), ``NftEvent`` (anything in a
table with our name). Does not decide relevance (``target.diverges``) or write.

An apply of ours replaces a table, which the kernel reports like an operator's edit:
the pass that follows finds nothing to do and writes nothing, so that is one extra
pass per change of rules, never a loop.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from dataplane import rtnl
from dataplane.model import canonical_ip
from dataplane.naming import owned_kind
from dataplane.nft.model import TABLE

RTM_NEWADDR = 20
RTM_DELADDR = 21
RTNLGRP_IPV4_IFADDR = 5
RTNLGRP_IPV6_IFADDR = 9
IFLA_ADDRESS = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFADDRMSG = struct.Struct("=BBBBI")
NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFGENMSG_SIZE = 4
NFT_TABLE_ATTR = 1
"""NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE: all type 1."""
NFPROTO = {1: "inet", 7: "bridge", 2: "ip", 10: "ip6", 3: "arp", 5: "netdev"}


@dataclass(frozen=True, slots=True)
class AddrEvent:
    device: str
    address: str
    """``address/prefixlen``."""
    present: bool


@dataclass(frozen=True, slots=True)
class MacEvent:
    device: str
    mac: str | None
    """The bridge's MAC now; None when it was deleted."""


@dataclass(frozen=True, slots=True)
class NftEvent:
    family: str
    table: str


NftKernelEvent = AddrEvent | MacEvent | NftEvent


class NftMonitor:
    """Create in any thread (blocking); use from the trio thread."""

    def __init__(self, netns: str | None, prefix: str, on_lost: Callable[[], None] | None = None) -> None:
        self.prefix = prefix
        self.on_lost = on_lost
        """Called when events were lost (ENOBUFS), before ``next_events`` returns None."""
        self._rt = rtnl.RtnlSocket(netns, groups=(rtnl.RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR))
        try:
            if netns is None:
                nf = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            else:
                from pyroute2.netns import create_socket

                nf = create_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER, flags=0)
            try:
                nf.bind((0, 0))
                nf.setsockopt(rtnl.SOL_NETLINK, rtnl.NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
            except BaseException:
                nf.close()
                raise
            self._nf = nf
            seed = rtnl.RtnlSocket(netns)
            try:
                self._names = {lk.index: lk.name for lk in rtnl.dump_links(seed)}
            finally:
                seed.close()
        except BaseException:
            self._rt.close()
            raise
        self._rt.sock.setblocking(False)
        self._nf.setblocking(False)

    def close(self) -> None:
        self._rt.close()
        self._nf.close()

    async def next_events(self) -> Sequence[NftKernelEvent] | None:
        while True:
            out: list[NftKernelEvent] = []
            for sock, decode in ((self._rt.sock, self.decode_rtnl), (self._nf, self.decode_nft)):
                while True:
                    try:
                        buf = sock.recv(1 << 20)
                    except BlockingIOError:
                        break
                    except OSError as e:
                        if e.errno == errno.ENOBUFS:
                            if self.on_lost is not None:
                                self.on_lost()
                            return None
                        raise
                    out.extend(decode(buf))
            if out:
                return out
            await self._readable()

    async def _readable(self) -> None:
        async with trio.open_nursery() as nursery:
            for sock in (self._rt.sock, self._nf):
                nursery.start_soon(self._wait, sock, nursery.cancel_scope)

    @staticmethod
    async def _wait(sock: socket.socket, scope: trio.CancelScope) -> None:
        await trio.lowlevel.wait_readable(sock)
        scope.cancel()

    def decode_rtnl(self, buf: bytes) -> list[NftKernelEvent]:
        out: list[NftKernelEvent] = []
        for pos, length, mtype, _seq in rtnl.messages(buf):
            if mtype in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
                raw = rtnl.parse_link(buf, pos, length)
                if mtype == rtnl.RTM_DELLINK:
                    self._names.pop(raw.index, None)
                else:
                    self._names[raw.index] = raw.name
                if owned_kind(raw.name, self.prefix) != "bridge":
                    continue
                mac: str | None = None
                if mtype == rtnl.RTM_NEWLINK:
                    for kind, s, e in rtnl.walk(buf, pos + 32, pos + length):
                        if kind == IFLA_ADDRESS and e - s == 6:
                            mac = buf[s:e].hex(":")
                    if mac is None:
                        continue
                out.append(MacEvent(raw.name, mac))
            elif mtype in (RTM_NEWADDR, RTM_DELADDR):
                _family, plen, _flags, _scope, index = IFADDRMSG.unpack_from(buf, pos + 16)
                device = self._names.get(index)
                if device is None or owned_kind(device, self.prefix) != "bridge":
                    continue
                addr = ""
                for kind, s, e in rtnl.walk(buf, pos + 16 + IFADDRMSG.size, pos + length):
                    if kind in (IFA_ADDRESS, IFA_LOCAL) and e - s in (4, 16):
                        fam = socket.AF_INET if e - s == 4 else socket.AF_INET6
                        addr = canonical_ip(socket.inet_ntop(fam, buf[s:e]))
                        if kind == IFA_LOCAL:
                            break
                if addr:
                    out.append(AddrEvent(device, f"{addr}/{plen}", mtype == RTM_NEWADDR))
        return out

    @staticmethod
    def decode_nft(buf: bytes) -> list[NftKernelEvent]:
        out: list[NftKernelEvent] = []
        for pos, length, mtype, _seq in rtnl.messages(buf):
            if mtype >> 8 != NFNL_SUBSYS_NFTABLES:
                continue
            family = NFPROTO.get(buf[pos + 16], str(buf[pos + 16]))
            for kind, s, e in rtnl.walk(buf, pos + 16 + NFGENMSG_SIZE, pos + length):
                if kind == NFT_TABLE_ATTR:
                    table = bytes(buf[s:e]).rstrip(b"\0").decode(errors="replace")
                    if table == TABLE:
                        out.append(NftEvent(family, table))
                    break
        return out
