"""Raw netlink encoding/decoding (no kernel): batch messages, dump parsers, errors, monitor."""

from __future__ import annotations

import errno
import socket
import struct

from dataplane import rtnl
from dataplane.events import FdbEvent, LinkEvent, NeighEvent
from dataplane.monitor import NetlinkMonitor
from dataplane.netlink_batch import (
    FDB_DEL,
    FDB_DEL_ANY,
    FDB_SET,
    FLOOD_ADD,
    NEIGH_DEL,
    NEIGH_SET,
    Batcher,
    Entry,
)

MAC = "02:42:0a:00:00:03"
MACB = bytes.fromhex("02420a000003")


def attr(kind: int, payload: bytes) -> bytes:
    return rtnl.attr(kind, payload)


def msg(mtype: int, body: bytes, seq: int = 1, flags: int = 0) -> bytes:
    return rtnl.HDR.pack(16 + len(body), mtype, flags, seq, 0) + body


def fdb_msg(
    mac: bytes, dst: bytes, *, state: int = 0xC0, flags: int = rtnl.NTF_SELF, extra: bytes = b""
) -> bytes:
    body = rtnl.NDMSG.pack(rtnl.AF_BRIDGE, 5, state, flags, 0)
    body += attr(rtnl.NDA_LLADDR, mac) + attr(rtnl.NDA_DST, dst) + extra + attr(3, bytes(16))
    return msg(rtnl.RTM_NEWNEIGH, body)


def neigh_msg(
    ip: bytes, mac: bytes, *, state: int = rtnl.NUD_PERMANENT, extra: bytes = b""
) -> bytes:
    fam = socket.AF_INET if len(ip) == 4 else socket.AF_INET6
    body = rtnl.NDMSG.pack(fam, 5, state, 0, 0)
    body += (
        attr(rtnl.NDA_DST, ip)
        + attr(rtnl.NDA_LLADDR, mac)
        + attr(4, bytes(4))
        + attr(3, bytes(16))
        + extra
    )
    return msg(rtnl.RTM_NEWNEIGH, body)


def test_batch_messages_have_the_documented_layout() -> None:
    b = Batcher(None)  # type: ignore[arg-type]  # encode needs no socket
    buf = b.encode([(FDB_SET, 7, MAC, "192.0.2.9")], 100)
    assert len(buf) == 48
    length, mtype, flags, seq, _pid = rtnl.HDR.unpack_from(buf)
    assert (length, mtype, seq) == (48, rtnl.RTM_NEWNEIGH, 100)
    assert flags == rtnl.NLM_F_REQUEST | rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE  # no ACK
    assert rtnl.NDMSG.unpack_from(buf, 16) == (rtnl.AF_BRIDGE, 7, 0xC0, rtnl.NTF_SELF, 0)
    assert list(rtnl.walk(buf, 28, 48)) == [(rtnl.NDA_LLADDR, 32, 38), (rtnl.NDA_DST, 44, 48)]
    assert buf[32:38] == MACB and buf[44:48] == socket.inet_aton("192.0.2.9")
    sizes = {
        FDB_SET: (48, 60),
        FDB_DEL: (48, 60),
        FLOOD_ADD: (48, 60),
        NEIGH_SET: (48, 60),
        NEIGH_DEL: (36, 48),
    }
    for kind, (v4, v6) in sizes.items():
        key4, val4 = (
            ("192.0.2.9", "")
            if kind == FLOOD_ADD
            else ("10.0.0.1", MAC)
            if kind in (NEIGH_SET, NEIGH_DEL)
            else (MAC, "192.0.2.9")
        )
        key6, val6 = (
            ("2001:db8::9", "")
            if kind == FLOOD_ADD
            else ("fd00::1", MAC)
            if kind in (NEIGH_SET, NEIGH_DEL)
            else (MAC, "2001:db8::9")
        )
        assert len(b.encode([(kind, 1, key4, val4)], 1)) == v4, kind
        assert len(b.encode([(kind, 1, key6, val6)], 1)) == v6, kind
    flood = b.encode([(FLOOD_ADD, 1, "192.0.2.9", "")], 1)
    assert rtnl.HDR.unpack_from(flood)[2] & rtnl.NLM_F_APPEND and flood[32:38] == bytes(6)
    anydel = b.encode([(FDB_DEL_ANY, 1, MAC, "")], 1)
    assert len(anydel) == 40 and [k for k, _, _ in rtnl.walk(anydel, 28, 40)] == [rtnl.NDA_LLADDR]


class StubSocket:
    """Plays the kernel: refuses entries whose MAC/IP is in ``refuse`` with ``code``."""

    def __init__(self, refuse: set[bytes], code: int) -> None:
        self.refuse = refuse
        self.code = code
        self.replies: list[bytes] = []
        self.sent: list[bytes] = []

    def send(self, buf: bytes) -> int:
        self.sent.append(bytes(buf))
        for pos, length, _mtype, seq in rtnl.messages(bytes(buf)):
            m = bytes(buf[pos : pos + length])
            if any(r in m[28:] for r in self.refuse):
                err = struct.pack("=i", -self.code) + m[:16]
                text = attr(rtnl.NLMSGERR_ATTR_MSG, b"refused\0")
                self.replies.append(msg(rtnl.NLMSG_ERROR, err + text, seq, flags=0x100 | 0x200))
        return len(buf)

    def recv(self, _size: int, _flags: int = 0) -> bytes:
        while self.replies:
            r = self.replies.pop(0)
            if r:
                return r
        raise BlockingIOError


class StubRtnl:
    def __init__(self, sock: StubSocket) -> None:
        self.sock = sock
        self._seq = 0

    def next_seq(self, count: int = 1) -> int:
        first = self._seq + 1
        self._seq += count
        return first


def test_batch_reports_errors_per_entry_across_chunks() -> None:
    bad_mac = bytes.fromhex("02420a0000ff")
    stub = StubSocket({bad_mac, socket.inet_aton("10.0.0.77")}, errno.EINVAL)
    batch = Batcher(StubRtnl(stub), chunk=4)  # type: ignore[arg-type]
    entries: list[Entry] = [(FDB_SET, 3, f"02:42:0a:00:00:{i:02x}", "192.0.2.1") for i in range(10)]
    entries[6] = (FDB_SET, 3, "02:42:0a:00:00:ff", "192.0.2.1")
    entries.append((NEIGH_SET, 3, "10.0.0.77", MAC))
    entries.append((NEIGH_SET, 3, "not-an-ip", MAC))
    result = batch.run(entries)
    assert len(stub.sent) == 3 and result.sent == 12
    assert sorted((i, e) for i, e, _ in result.errors) == [
        (6, errno.EINVAL),
        (10, errno.EINVAL),
        (11, errno.EINVAL),
    ]
    assert "refused" in dict((i, t) for i, _, t in result.errors)[6]
    assert "cannot encode" in dict((i, t) for i, _, t in result.errors)[11]
    assert not result.lost


def test_batch_groups_by_columns_span_chunks_and_map_errors() -> None:
    """Groups long enough for the column encoder, chunks that span groups, a group
    that falls back to entry-by-entry packing (both families): every message is sent
    once, in order, and each refusal is reported at its entry's index."""
    bad_mac = bytes.fromhex("02420a0000ff")
    stub = StubSocket({bad_mac}, errno.EEXIST)
    batch = Batcher(StubRtnl(stub), chunk=16)  # type: ignore[arg-type]
    macs = [f"02:42:0a:00:01:{i:02x}" for i in range(40)]
    macs[21] = "02:42:0a:00:00:ff"
    ips = [f"10.0.1.{i}" for i in range(40)]
    mixed = [f"10.0.2.{i}" if i % 2 else f"fd00::{i:x}" for i in range(20)]
    result = batch.run_groups(
        [
            (FDB_SET, 3, macs, ["192.0.2.1"] * 40),
            (NEIGH_SET, 3, ips, macs),
            (NEIGH_SET, 4, mixed, [MAC] * 20),
        ]
    )
    assert result.sent == 100 and not result.lost
    assert len(stub.sent) == 7  # ceil(100 / 16)
    sent = b"".join(stub.sent)
    seqs = [seq for _, _, _, seq in rtnl.messages(sent)]
    assert len(seqs) == 100 and seqs == list(range(seqs[0], seqs[0] + 100))
    # 21: the refused MAC's FDB row; 40 + 21: its neighbour.
    assert sorted(i for i, _, _ in result.errors) == [21, 61]
    entries: list[Entry] = [(FDB_SET, 3, m, "192.0.2.1") for m in macs]
    entries += [(NEIGH_SET, 3, ip, m) for ip, m in zip(ips, macs, strict=True)]
    entries += [(NEIGH_SET, 4, ip, MAC) for ip in mixed]
    assert sent == bytes(batch.encode(entries, seqs[0]))


def test_fdb_dump_parser_fast_and_slow_paths_agree() -> None:
    dst4 = socket.inet_aton("192.0.2.7")
    dst6 = socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    parts = [
        fdb_msg(MACB, dst4, flags=rtnl.NTF_MASTER),  # bridge row: not ours
        *[fdb_msg(bytes([2, 0, 0, 0, 0, i]), dst4) for i in range(5)],
        fdb_msg(bytes(6), dst4),  # flood row
        fdb_msg(bytes([2, 0, 0, 0, 1, 0]), dst4, extra=attr(rtnl.NDA_PORT, b"\x12\xb5")),
        fdb_msg(bytes([2, 0, 0, 0, 2, 0]), dst6),
        fdb_msg(bytes([2, 0, 0, 0, 3, 0]), dst4, state=0x02),  # dynamic: not ours
        msg(rtnl.NLMSG_DONE, b"\0\0\0\0"),
    ]
    fdb: dict[tuple[str, str], str] = {}
    flood: dict[tuple[str, str], bool] = {}
    rtnl.parse_fdb(b"".join(parts), fdb, flood, "vx")
    expected = {("vx", f"02:00:00:00:00:{i:02x}"): "192.0.2.7" for i in range(5)}
    expected[("vx", "02:00:00:00:01:00")] = "192.0.2.7%attrs"
    expected[("vx", "02:00:00:00:02:00")] = "2001:db8::7"
    assert fdb == expected
    assert flood == {("vx", "192.0.2.7"): True}
    # Message by message (slow path for the odd ones) gives the same answer.
    fdb2: dict[tuple[str, str], str] = {}
    flood2: dict[tuple[str, str], bool] = {}
    for p in parts:
        rtnl.parse_fdb(p, fdb2, flood2, "vx")
    assert fdb2 == fdb and flood2 == flood


def test_neigh_dump_parser_keeps_only_permanent_entries() -> None:
    parts = [
        neigh_msg(socket.inet_aton("10.0.0.3"), MACB),
        neigh_msg(socket.inet_aton("10.0.0.4"), MACB, state=0x02),
        neigh_msg(socket.inet_pton(socket.AF_INET6, "fd00::3"), MACB),
        neigh_msg(socket.inet_aton("10.0.0.5"), MACB, extra=attr(12, b"\x03")),  # NDA_PROTOCOL
    ]
    into: dict[tuple[str, str], str] = {}
    rtnl.parse_neigh(b"".join(parts), into, "vx")
    assert into == {("vx", "10.0.0.3"): MAC, ("vx", "fd00::3"): MAC, ("vx", "10.0.0.5"): MAC}


def test_error_messages_carry_errno_seq_and_text() -> None:
    err = struct.pack("=i", -errno.ENOENT) + rtnl.HDR.pack(48, rtnl.RTM_DELNEIGH, 1, 77, 0)
    m = msg(
        rtnl.NLMSG_ERROR, err + attr(rtnl.NLMSGERR_ATTR_MSG, b"no such entry\0"), 77, flags=0x300
    )
    assert rtnl.parse_error(m) == (errno.ENOENT, 77, "no such entry")


def link_msg(
    index: int, name: str, *, kind: str = "", master: int = 0, mtu: int = 1450, up: bool = True
) -> bytes:
    body = rtnl.IFINFO.pack(0, 1, index, rtnl.IFF_UP if up else 0, 0)
    body += attr(rtnl.IFLA_IFNAME, name.encode() + b"\0") + attr(
        rtnl.IFLA_MTU, struct.pack("=I", mtu)
    )
    if master:
        body += attr(rtnl.IFLA_MASTER, struct.pack("=I", master))
    if kind:
        body += rtnl.nested(rtnl.IFLA_LINKINFO, attr(rtnl.IFLA_INFO_KIND, kind.encode() + b"\0"))
    return msg(rtnl.RTM_NEWLINK, body)


def test_monitor_decodes_events_on_our_devices_only() -> None:
    mon = object.__new__(NetlinkMonitor)
    mon.prefix = "ov-"
    mon._names = {5: "ov-vx-100", 6: "opvx0"}
    fdb = fdb_msg(MACB, socket.inet_aton("192.0.2.7"))
    foreign = fdb.replace(struct.pack("=i", 5), struct.pack("=i", 6), 1)
    deleted = bytearray(neigh_msg(socket.inet_aton("10.0.0.3"), MACB))
    struct.pack_into("=H", deleted, 4, rtnl.RTM_DELNEIGH)
    events = mon.decode(
        link_msg(9, "veth9", master=4)
        + link_msg(4, "ov-br-100", kind="bridge")
        + fdb
        + foreign
        + bytes(deleted)
    )
    port, bridge = events[0], events[1]
    assert isinstance(port, LinkEvent) and isinstance(bridge, LinkEvent)
    assert port.name == "veth9" and port.link is not None
    assert port.link.master == "#4"  # master unknown when the port event came first
    assert bridge.name == "ov-br-100" and bridge.link is not None and bridge.link.kind == "bridge"
    assert events[2:] == [
        FdbEvent("ov-vx-100", MAC, "192.0.2.7", True),
        NeighEvent("ov-vx-100", "10.0.0.3", None),
    ]
