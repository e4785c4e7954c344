"""The kernel side of the gateway/egress target: bridge MACs and addresses (pyroute2),
our nft tables (the ``nft`` tool, JSON read-back), forwarding sysctls (/proc/sys).

Owns: ``NftKernel.read`` (the desired bridges' MAC and addresses, our tables' shapes,
the sysctls) and ``apply`` (each op in order; a refused one becomes an ``NftError``,
the rest still run). ``netns`` (a name under /run/netns) runs everything in that
namespace (tests); None, the agent, is the current one. Thread-confined like
``LinuxKernel``: the pyroute2 socket is opened by, and used from, the reconciler's
worker thread.
Does not: decide anything (``compile``, ``plan``).

Why the ``nft`` tool rather than raw NFNETLINK: rules are compiled to expressions by
libnftables; hand-building them would duplicate that for every rule shape we use. A
read of the tables is one ``nft -j list table`` per family (~5 ms each on a host, a
second or more on a slow CPU); ``read`` takes the shapes from the caller when it
knows them (``NftTarget`` keeps them between passes, see there).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dataplane import rtnl
from dataplane.model import canonical_ip, canonical_mac
from dataplane.nft.model import (
    FAMILIES,
    TABLE,
    AddAddress,
    BridgeSeen,
    DeleteAddress,
    DeleteTable,
    LoadTable,
    NftActual,
    NftDesired,
    NftOp,
    SetMac,
    SetSysctl,
    TableShape,
)
from dataplane.nft.rules import delete_script, replace_script, shape_of_json

IFA_F_NODAD = 0x02
NFT_TIMEOUT = 20.0


class NftError(Exception):
    """An operation the kernel or nft refused; ``str()`` says which and why."""


@dataclass(slots=True)
class NftOutcome:
    applied: int = 0
    errors: list[NftError] = field(default_factory=list)
    lost: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors


class NftKernel:
    def __init__(self, netns: str | None = None, nft: str = "nft") -> None:
        self.netns = netns
        self.nft = nft
        self._ipr: Any = None
        self._sock: rtnl.RtnlSocket | None = None

    # -- plumbing -----------------------------------------------------------------------------
    def _wrap(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    def _run(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(self._wrap(argv), input=stdin, capture_output=True, text=True,
                                  timeout=NFT_TIMEOUT, check=False)
        except FileNotFoundError:
            raise NftError(f"{argv[0]} not found (install Debian's nftables package)") from None
        except subprocess.TimeoutExpired:
            raise NftError(f"{' '.join(argv)} timed out after {NFT_TIMEOUT:g}s") from None

    def _ip(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- read ---------------------------------------------------------------------------------
    def read(self, desired: NftDesired, tables: Mapping[str, TableShape] | None = None) -> NftActual:
        """The kernel as ``desired`` is compared with. ``tables``: our tables' shapes as the
        caller already knows them (``NftTarget``'s cache): no ``nft`` process then."""
        bridges: dict[str, BridgeSeen] = {}
        for b in desired.bridges:
            seen = self._bridge(b.bridge)
            if seen is not None:
                bridges[b.bridge] = seen
        if tables is None:
            tables = self.read_tables()
        sysctls = {p: self._sysctl(p) for p in desired.sysctls}
        return NftActual(bridges, dict(tables), sysctls)

    def read_tables(self) -> dict[str, TableShape]:
        """Our table in each family, as ``nft -j list table`` shows it (one process each)."""
        tables: dict[str, TableShape] = {}
        for family in FAMILIES:
            got = self._table(family)
            if got is not None:
                tables[family] = got
        return tables

    def _bridge(self, name: str) -> BridgeSeen | None:
        # Raw rtnetlink (one request, one index-filtered dump): pyroute2's get_addr dumps
        # every address of the host and filters in Python, and at 1,000 endpoints the
        # host-side veths' link-local addresses made that most of a pass.
        sock = self._rtnl()
        found = rtnl.link_address(sock, name)
        if found is None:
            return None
        index, raw_mac = found
        mac = canonical_mac(raw_mac.hex(":") if len(raw_mac) == 6 else "00:00:00:00:00:00")
        addrs = {f"{canonical_ip(ip)}/{plen}" for ip, plen in rtnl.dump_addrs(sock, index)}
        return BridgeSeen(mac, frozenset(addrs))

    def _rtnl(self) -> rtnl.RtnlSocket:
        if self._sock is None:
            self._sock = rtnl.RtnlSocket(self.netns)
        return self._sock

    def _table(self, family: str) -> TableShape | None:
        r = self._run([self.nft, "-j", "list", "table", family, TABLE])
        if r.returncode != 0:
            if "No such file or directory" in r.stderr:
                return None
            raise NftError(f"nft list table {family} {TABLE}: {r.stderr.strip() or r.returncode}")
        try:
            return shape_of_json(r.stdout)
        except ValueError as e:
            raise NftError(f"nft list table {family} {TABLE}: {e}") from None

    def _sysctl(self, path: str) -> str:
        if self.netns is None:
            try:
                with open(os.path.join("/proc/sys", path)) as f:
                    return f.read().strip()
            except OSError as e:
                return f"? ({e.strerror})"
        r = self._run(["cat", os.path.join("/proc/sys", path)])
        return r.stdout.strip() if r.returncode == 0 else f"? ({r.stderr.strip()})"

    # -- apply --------------------------------------------------------------------------------
    def apply(self, ops: Sequence[NftOp]) -> NftOutcome:
        out = NftOutcome()
        for op in ops:
            out.applied += 1
            try:
                self._one(op)
            except NftError as e:
                out.errors.append(e)
            except OSError as e:
                out.errors.append(NftError(f"{_describe(op)}: {os.strerror(e.errno or 0) or e}"))
        return out

    def _one(self, op: NftOp) -> None:
        if isinstance(op, LoadTable | DeleteTable):
            script = replace_script(op.table) if isinstance(op, LoadTable) else delete_script(op.family, op.name)
            r = self._run([self.nft, "-f", "-"], stdin=script)
            if r.returncode != 0:
                raise NftError(f"{_describe(op)}: {r.stderr.strip().splitlines()[0] if r.stderr.strip() else r.returncode}")
        elif isinstance(op, SetSysctl):
            self._write_sysctl(op.path, op.value)
        else:
            self._address_op(op)

    def _address_op(self, op: SetMac | AddAddress | DeleteAddress) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        ipr = self._ip()
        found = ipr.link_lookup(ifname=op.bridge)
        if not found:
            raise NftError(f"{_describe(op)}: no such device")
        index = found[0]
        try:
            if isinstance(op, SetMac):
                ipr.link("set", index=index, address=op.mac)
                return
            ip, plen = op.address.split("/")
            if isinstance(op, AddAddress):
                flags = IFA_F_NODAD if ":" in ip else 0
                ipr.addr("add", index=index, address=ip, prefixlen=int(plen), flags=flags)
            else:
                ipr.addr("del", index=index, address=ip, prefixlen=int(plen))
        except NetlinkError as e:
            if (e.code == errno.EEXIST and isinstance(op, AddAddress)) or (
                    e.code in (errno.EADDRNOTAVAIL, errno.ENOENT) and isinstance(op, DeleteAddress)):
                return
            raise NftError(f"{_describe(op)}: {os.strerror(e.code)}") from None

    def _write_sysctl(self, path: str, value: str) -> None:
        full = os.path.join("/proc/sys", path)
        if self.netns is None:
            try:
                with open(full, "w") as f:
                    f.write(value)
            except OSError as e:
                raise NftError(f"sysctl {path} = {value}: {e.strerror}") from None
            return
        r = self._run(["sh", "-c", f"echo {value} > {full}"])
        if r.returncode != 0:
            raise NftError(f"sysctl {path} = {value}: {r.stderr.strip()}")


def _describe(op: NftOp) -> str:
    if isinstance(op, LoadTable):
        return f"load nft table {op.table.family} {op.table.name}"
    if isinstance(op, DeleteTable):
        return f"delete nft table {op.family} {op.name}"
    if isinstance(op, SetSysctl):
        return f"sysctl {op.path} = {op.value}"
    if isinstance(op, SetMac):
        return f"set {op.bridge} address {op.mac}"
    verb = "add" if isinstance(op, AddAddress) else "delete"
    return f"{verb} address {op.address} on {op.bridge}"
