"""dataplane/xfrm/: byte-level encoding against the kernel's x86-64 struct layouts
(codec), parsing of dump replies, the sync diff (compile, plan), batching (kernel);
plus (marker ``netns``) a round trip of policies through this machine's kernel and the
ESP/GCM probe.

Layouts: include/uapi/linux/xfrm.h (x86-64 offsets, listed in docs/ipsec.md).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from typing import cast

import pytest

from crypto import ipsec
from dataplane.xfrm import codec
from dataplane.xfrm.compile import desired_xfrm
from dataplane.xfrm.kernel import XfrmSocket
from dataplane.xfrm.model import AEAD_NAME, REQID, Direction, XfrmError, XfrmPolicy, XfrmState
from dataplane.xfrm.plan import ours, sync_requests
from dataplane.xfrm.probe import kernel_support_problem

SRC, DST = "192.0.2.1", "198.51.100.2"
KEY = bytes(range(1, 21))
INF8 = b"\xff" * 8


def state(**kw: object) -> XfrmState:
    args: dict[str, object] = {"src": SRC, "dst": DST, "spi": 0x11223344, "key": KEY}
    args.update(kw)
    return XfrmState(**args)  # type: ignore[arg-type]


# ------------------------------------------------------------- struct layouts


def test_selector_layout() -> None:
    sel = codec.pack_selector(SRC, DST, proto=17, dport=4789)
    assert len(sel) == codec.SELECTOR_SIZE == 56
    assert sel[0:4] == socket.inet_aton(DST) and sel[4:16] == bytes(12)  # daddr
    assert sel[16:20] == socket.inet_aton(SRC) and sel[20:32] == bytes(12)  # saddr
    assert sel[32:34] == b"\x12\xb5" and sel[34:36] == b"\xff\xff"  # dport 4789, mask (BE)
    assert sel[36:40] == bytes(4)  # sport, sport_mask
    assert struct.unpack_from("=H", sel, 40)[0] == socket.AF_INET
    assert (sel[42], sel[43], sel[44]) == (32, 32, 17)  # prefixlen_d, prefixlen_s, proto
    assert sel[45:56] == bytes(11)  # pad, ifindex, user
    wild = codec.pack_selector(family=socket.AF_INET6)
    assert wild[:40] == bytes(40) and struct.unpack_from("=H", wild, 40)[0] == socket.AF_INET6


def test_ipv6_selector_uses_full_prefix() -> None:
    sel = codec.pack_selector("2001:db8::1", "2001:db8::2", 17, 4789)
    assert sel[0:16] == socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    assert (sel[42], sel[43]) == (128, 128)
    with pytest.raises(ValueError, match="families differ"):
        codec.pack_selector("192.0.2.1", "2001:db8::2")


def test_usersa_info_layout() -> None:
    info = codec.pack_usersa_info(state(reqid=0x55667788))
    assert len(info) == codec.USERSA_INFO_SIZE == 224
    assert info[0:56] == codec.pack_selector(family=socket.AF_INET)  # wildcard selector
    assert info[56:60] == socket.inet_aton(DST)  # id.daddr
    assert info[72:76] == b"\x11\x22\x33\x44"  # id.spi, network order
    assert info[76] == 50 and info[77:80] == bytes(3)  # id.proto ESP
    assert info[80:84] == socket.inet_aton(SRC)  # saddr
    assert info[96:128] == INF8 * 4 and info[128:160] == bytes(32)  # lft: no limits
    assert info[160:204] == bytes(44)  # curlft + stats
    assert struct.unpack_from("=IIH", info, 204) == (0, 0x55667788, socket.AF_INET)
    assert (info[214], info[215], info[216]) == (0, 0, codec.XFRM_STATE_ESN)  # transport
    assert info[217:224] == bytes(7)


def test_usersa_info_without_esn_uses_legacy_window() -> None:
    info = codec.pack_usersa_info(state(esn=False, replay_window=64))
    assert (info[215], info[216]) == (32, 0)


def test_algo_aead_and_replay_esn_layouts() -> None:
    aead = codec.pack_algo_aead("rfc4106(gcm(aes))", KEY, 128)
    assert len(aead) == codec.ALGO_AEAD_HDR + 20
    assert aead[:17] == b"rfc4106(gcm(aes))" and aead[17:64] == bytes(47)
    assert struct.unpack_from("=II", aead, 64) == (160, 128) and aead[72:] == KEY
    esn = codec.pack_replay_esn(1024, oseq=(5 << 32) | 7, seq=(1 << 32) | 2)
    assert len(esn) == codec.REPLAY_ESN_HDR + 32 * 4
    assert struct.unpack_from("=6I", esn) == (32, 7, 2, 5, 1, 1024)
    assert esn[24:] == bytes(128)
    assert struct.unpack_from("=I", codec.pack_replay_esn(33))[0] == 2  # ceil(33 / 32)
    for bad in (0, 32769):
        with pytest.raises(ValueError):
            codec.pack_replay_esn(bad)


def test_user_tmpl_layout() -> None:
    tmpl = codec.pack_user_tmpl(SRC, DST, 0xABCD, 0x4F5645)
    assert len(tmpl) == codec.USER_TMPL_SIZE == 64
    assert tmpl[0:4] == socket.inet_aton(DST) and tmpl[16:20] == b"\x00\x00\xab\xcd"
    assert tmpl[20] == 50  # id.proto
    assert struct.unpack_from("=H", tmpl, 24)[0] == socket.AF_INET
    assert tmpl[28:32] == socket.inet_aton(SRC)
    assert struct.unpack_from("=I", tmpl, 44)[0] == 0x4F5645
    assert (tmpl[48], tmpl[49], tmpl[50]) == (0, 0, 0)  # transport, share, optional
    assert tmpl[52:64] == b"\xff" * 12  # aalgos, ealgos, calgos: any


def test_userpolicy_info_and_id_layouts() -> None:
    pol = XfrmPolicy(SRC, DST, Direction.OUT, spi=0x1234, priority=7)
    info = codec.pack_userpolicy_info(pol)
    assert len(info) == codec.USERPOLICY_INFO_SIZE == 168
    assert info[0:56] == codec.pack_selector(SRC, DST, 17, 4789)
    assert info[56:88] == INF8 * 4 and info[88:152] == bytes(64)
    assert struct.unpack_from("=II", info, 152) == (7, 0)  # priority, index
    assert (info[160], info[161], info[162], info[163]) == (1, 0, 0, 0)  # dir out, allow
    pid = codec.pack_userpolicy_id(XfrmPolicy(DST, SRC, Direction.IN))
    assert len(pid) == codec.USERPOLICY_ID_SIZE == 64
    assert pid[0:56] == codec.pack_selector(DST, SRC, 17, 4789) and pid[60] == 0
    sid = codec.pack_usersa_id(DST, 0x01020304)
    assert len(sid) == codec.USERSA_ID_SIZE == 24
    assert sid[16:20] == b"\x01\x02\x03\x04"
    assert struct.unpack_from("=HB", sid, 20) == (socket.AF_INET, 50)


def test_full_newsa_message() -> None:
    req = codec.add_state(state())
    msg = codec.pack_nlmsg(req, seq=9)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq, pid) == (len(msg), 0x10, 0x5, 9, 0)
    body = msg[16:]
    assert body[:224] == codec.pack_usersa_info(state())
    # XFRMA_ALG_AEAD (18): 4 + 72 + 20 = 96 bytes, already aligned
    assert struct.unpack_from("=HH", body, 224) == (96, 18)
    assert body[228:320] == codec.pack_algo_aead(AEAD_NAME, KEY, 128)
    # XFRMA_REPLAY_ESN_VAL (23): 4 + 24 + 128
    assert struct.unpack_from("=HH", body, 320) == (156, 23)
    assert body[324:] == codec.pack_replay_esn(1024)
    assert codec.add_state(state(), update=True).type == codec.XFRM_MSG_UPDSA


def test_full_newpolicy_and_delete_messages() -> None:
    pol = XfrmPolicy(SRC, DST, Direction.OUT, spi=0x42)
    body = codec.add_policy(pol).payload
    assert body[:168] == codec.pack_userpolicy_info(pol)
    assert struct.unpack_from("=HH", body, 168) == (68, 5)  # XFRMA_TMPL
    assert body[172:] == codec.pack_user_tmpl(SRC, DST, 0x42, REQID)
    assert codec.add_policy(pol, update=True).type == codec.XFRM_MSG_UPDPOLICY
    assert codec.delete_policy(pol).payload == codec.pack_userpolicy_id(pol)
    d = codec.delete_state(DST, 0x42, SRC)
    assert d.type == codec.XFRM_MSG_DELSA and d.payload[:24] == codec.pack_usersa_id(DST, 0x42)
    assert struct.unpack_from("=HH", d.payload, 24) == (20, 13)  # XFRMA_SRCADDR
    with pytest.raises(ValueError):
        codec.add_state(state(spi=0))


def test_attr_padding() -> None:
    assert codec.pack_attr(1, b"abc") == b"\x07\x00\x01\x00abc\x00"


# ------------------------------------------------------------------- parsing


def dumped_state(st: XfrmState, packets: int = 0) -> bytes:
    """A NEWSA dump body as the kernel sends it (counters filled in)."""
    info = bytearray(codec.pack_usersa_info(st))
    struct.pack_into("=QQ", info, 160, packets * 100, packets)
    return (
        bytes(info)
        + codec.pack_attr(codec.XFRMA_ALG_AEAD, codec.pack_algo_aead(st.aead, st.key, st.icv_bits))
        + codec.pack_attr(15, bytes(8))  # XFRMA_LASTUSED: ignored
        + codec.pack_attr(codec.XFRMA_REPLAY_ESN_VAL, codec.pack_replay_esn(1024, oseq=(1 << 32) + 3))
    )


def test_parse_state_round_trip() -> None:
    st = state()
    info = codec.parse_state(dumped_state(st, packets=12))
    assert info.state == st and info.state.key == KEY
    assert (info.packets, info.bytes, info.oseq, info.mode) == (12, 1200, (1 << 32) + 3, 0)
    v6 = state(src="2001:db8::1", dst="2001:db8::2")
    assert codec.parse_state(dumped_state(v6)).state == v6
    with pytest.raises(ValueError):
        codec.parse_state(b"\0" * 100)


def test_parse_policy_round_trip() -> None:
    pol = XfrmPolicy(SRC, DST, Direction.IN, spi=0, priority=3)
    info = codec.parse_policy(codec.add_policy(pol).payload)
    assert info.policy == pol
    assert (info.prefixlen_s, info.prefixlen_d, info.templates) == (32, 32, 1)
    assert ours(info) and not ours(info, reqid=1)


def test_parse_error_with_extended_ack() -> None:
    inner = struct.pack("=IHHII", 500, 0x10, 5, 3, 0)
    msg = b"Requested AEAD algorithm not found\0"
    body = struct.pack("=i", -38) + inner + codec.pack_attr(codec.NLMSGERR_ATTR_MSG, msg)
    flags = codec.NLM_F_CAPPED | codec.NLM_F_ACK_TLVS
    assert codec.parse_error(body, flags) == (38, "Requested AEAD algorithm not found")
    assert codec.parse_error(struct.pack("=i", 0) + inner, 0) == (0, "")


# ------------------------------------------------------------- desired + diff


def pairs_for(now: float = 105.0) -> tuple[list[ipsec.PairSAs], ipsec.SpiTable]:
    import random

    pol = ipsec.RotationPolicy(interval=10, grace=2)
    keys = {
        h: {e: ipsec.EpochKey.generate(e, random.Random(i * 10 + e).randbytes) for e in (10, 11)}
        for i, h in enumerate(("192.0.2.1", "192.0.2.2", "192.0.2.3"))
    }
    table = ipsec.SpiTable(list(keys))
    me = "192.0.2.1"
    out = [
        ipsec.pair_sas(me, keys[me], p, {e: k.public for e, k in keys[p].items()}, now, pol, table)
        for p in ("192.0.2.2", "192.0.2.3")
    ]
    return out, table


def test_desired_xfrm_states_and_policies() -> None:
    pairs, _ = pairs_for()
    states, policies = desired_xfrm("192.0.2.1", pairs)
    assert len(states) == 8 and len({(s.dst, s.spi) for s in states}) == 8
    outs = [p for p in policies if p.direction == Direction.OUT]
    assert [(p.dst, p.spi) for p in outs] == [(pr.peer, pr.send.spi) for pr in pairs if pr.send]
    ins = [p for p in policies if p.direction == Direction.IN]
    assert all(p.spi == 0 and p.dst == "192.0.2.1" for p in ins) and len(ins) == 2
    dead = ipsec.PairSAs("192.0.2.9", (), (), None)
    _, pols = desired_xfrm("192.0.2.1", [dead])
    assert [p.spi for p in pols] == [0, 0]  # policies stay: fail closed, never clear text


def as_dump(states: list[XfrmState], policies: list[XfrmPolicy]) -> tuple[list, list]:  # type: ignore[type-arg]
    return (
        [codec.parse_state(dumped_state(s)) for s in states],
        [codec.parse_policy(codec.add_policy(p).payload) for p in policies],
    )


def test_sync_requests_converges_and_orders_make_before_break() -> None:
    pairs, _ = pairs_for(105.0)
    want_s, want_p = desired_xfrm("192.0.2.1", pairs)
    have_s, have_p = as_dump(want_s, want_p)
    assert sync_requests(want_s, want_p, have_s, have_p) == []
    # next epoch: new SAs, switched out policies, no deletions yet (grace)
    later, _ = pairs_for(110.5)
    new_s, new_p = desired_xfrm("192.0.2.1", later)
    reqs = sync_requests(new_s, new_p, have_s, have_p)
    kinds = [r.type for r in reqs]
    assert kinds == sorted(kinds, key=[codec.XFRM_MSG_NEWSA, codec.XFRM_MSG_UPDPOLICY].index)
    assert kinds.count(codec.XFRM_MSG_UPDPOLICY) == 2  # only the out policies change
    # removal: everything goes, policies before SAs
    gone = sync_requests([], [], have_s, have_p)
    kinds = [r.type for r in gone]
    assert kinds == [codec.XFRM_MSG_DELPOLICY] * 4 + [codec.XFRM_MSG_DELSA] * 8


def test_sync_requests_rekeys_and_leaves_foreign_objects_alone() -> None:
    mine = state()
    foreign = state(spi=0x999, reqid=7)
    other_pol = XfrmPolicy(SRC, DST, Direction.OUT, spi=5, reqid=7)
    have_s, have_p = as_dump([mine, foreign], [other_pol])
    rekeyed = state(key=b"\x01" * 20)
    reqs = sync_requests([rekeyed], [], have_s, have_p)
    assert [r.type for r in reqs] == [codec.XFRM_MSG_DELSA, codec.XFRM_MSG_NEWSA]
    assert reqs[1].payload == codec.add_state(rekeyed).payload


# ---------------------------------------------------------------- batching


class FakeKernel:
    """Answers each request in a sendmsg with an ack; SPIs listed in ``fail`` get EEXIST."""

    def __init__(self, fail: set[int]) -> None:
        self.fail = fail
        self.sends: list[int] = []
        self.replies: list[bytes] = []

    def send(self, data: bytes) -> int:
        off, count = 0, 0
        while off < len(data):
            length, kind, _fl, seq, _pid = struct.unpack_from("=IHHII", data, off)
            body = data[off + 16 : off + length]
            spi = struct.unpack_from(">I", body, 72)[0] if kind == codec.XFRM_MSG_NEWSA else 0
            err = -17 if spi in self.fail else 0
            ack = struct.pack("=i", err) + data[off : off + 16]
            self.replies.append(struct.pack("=IHHII", 16 + len(ack), 2, 0x100, seq, 0) + ack)
            off += (length + 3) & ~3
            count += 1
        self.sends.append(count)
        return len(data)

    def recv(self, _n: int) -> bytes:
        # deliver acks in two datagrams, out of order, to exercise matching by seq
        out, self.replies = self.replies[::-1], []
        return b"".join(out)

    def close(self) -> None:
        pass


def test_apply_batches_and_reports_per_request() -> None:
    fake = FakeKernel(fail={0x105})
    xs = XfrmSocket(cast(socket.socket, fake))
    reqs = [codec.add_state(state(spi=0x100 + i)) for i in range(300)]
    results = xs.apply(reqs)
    assert len(fake.sends) > 1 and sum(fake.sends) == 300  # several sendmsg, all sent
    assert [i for i, r in enumerate(results) if r is not None] == [5]
    err = results[5]
    assert err is not None and err.errno == 17 and "spi 0x00000105" in str(err)
    with pytest.raises(XfrmError):
        xs.request(reqs[5])


# ------------------------------------------------------ against this kernel


def netns_skip() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "iproute2 not installed"
    return None


@pytest.fixture
def scratch_ns() -> Iterator[str]:
    reason = netns_skip()
    if reason:
        pytest.skip(reason)
    name = f"oa-xfrmtest-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


@pytest.mark.netns
def test_policies_round_trip_through_the_kernel(scratch_ns: str) -> None:
    out = XfrmPolicy(SRC, DST, Direction.OUT, spi=0x1001)
    inn = XfrmPolicy(DST, SRC, Direction.IN)
    with XfrmSocket.open(scratch_ns) as xs:
        assert xs.apply([codec.add_policy(out), codec.add_policy(inn)]) == [None, None]
        dup = xs.apply([codec.add_policy(out)])[0]
        assert dup is not None and dup.errno == 17
        text = subprocess.run(
            ["ip", "-n", scratch_ns, "xfrm", "policy"], capture_output=True, text=True, check=True
        ).stdout
        assert f"src {SRC}/32 dst {DST}/32 proto udp dport 4789" in text
        assert "dir out" in text and "dir in" in text
        assert "spi 0x00001001 reqid 5199429 mode transport" in text
        got = {(p.policy.direction, p.policy.spi) for p in xs.dump_policies()}
        assert got == {(Direction.OUT, 0x1001), (Direction.IN, 0)}
        assert all(ours(p) for p in xs.dump_policies())
        # UPDPOLICY switches the pinned SA in place
        xs.request(codec.add_policy(XfrmPolicy(SRC, DST, Direction.OUT, spi=0x2002), update=True))
        assert {p.policy.spi for p in xs.dump_policies()} == {0x2002, 0}
        assert xs.apply([codec.delete_policy(out), codec.delete_policy(inn)]) == [None, None]
        missing = xs.apply([codec.delete_policy(out)])[0]
        assert missing is not None and missing.errno == 2
        assert xs.dump_policies() == []
        gone = xs.apply([codec.delete_state(DST, 0x4242)])[0]
        assert gone is not None and gone.errno == 3  # ESRCH


@pytest.mark.netns
def test_kernel_probe_says_what_is_missing(scratch_ns: str) -> None:
    problem = kernel_support_problem()
    with XfrmSocket.open(scratch_ns) as xs:
        res = xs.apply([codec.add_state(state())])[0]
        if problem is None:  # a kernel with ESP + GCM: the SA really is there
            assert res is None
            (info,) = xs.dump_states()
            assert info.state == state() and info.state.esn and info.state.replay_window == 1024
        else:
            assert res is not None
            assert problem.startswith("IPsec unavailable: this kernel lacks")
            assert "ESP" in problem or AEAD_NAME in problem
            assert xs.dump_states() == []
    # the probe ran in its own namespace: nothing leaked into ours
    assert (
        "192.0.2.2"
        not in subprocess.run(
            ["ip", "xfrm", "state"], capture_output=True, text=True, check=False
        ).stdout
    )
