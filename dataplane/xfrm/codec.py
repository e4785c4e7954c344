"""Byte-exact NETLINK_XFRM messages: packing requests and parsing dump replies. Pure.

Owns:
- the kernel's x86-64 struct layouts (``xfrm_selector`` 56, ``xfrm_usersa_info`` 224,
  ``xfrm_userpolicy_info`` 168, ``xfrm_user_tmpl`` 64, ...; the table with every
  offset is in docs/ipsec.md, "XFRM messages"), netlink framing and the message,
  attribute and flag numbers of include/uapi/linux/xfrm.h;
- ``Request`` (one netlink request with a label for errors) and its builders
  (``add_state``, ``delete_state``, ``add_policy``, ``delete_policy``, dumps);
- parsing dump replies back into ``model`` values plus counters, and ``nlmsgerr``
  into (errno, extended-ack text).
Does not: decide which requests to send (``plan``), or send them (``kernel``).
Sources: include/uapi/linux/xfrm.h, net/xfrm/xfrm_user.c (Linux), layouts checked
against the C headers (docs/ipsec.md).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from dataplane.xfrm.model import (
    IPPROTO_ESP,
    Direction,
    PolicyInfo,
    StateInfo,
    XfrmPolicy,
    XfrmState,
)

# ------------------------------------------------------------------ constants

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1

XFRM_MSG_NEWSA = 0x10
XFRM_MSG_DELSA = 0x11
XFRM_MSG_GETSA = 0x12
XFRM_MSG_NEWPOLICY = 0x13
XFRM_MSG_DELPOLICY = 0x14
XFRM_MSG_GETPOLICY = 0x15
XFRM_MSG_UPDPOLICY = 0x19
XFRM_MSG_UPDSA = 0x1A
XFRM_MSG_FLUSHSA = 0x1C

XFRMA_ALG_AUTH = 1
XFRMA_ALG_CRYPT = 2
XFRMA_TMPL = 5
XFRMA_SRCADDR = 13
XFRMA_ALG_AEAD = 18
XFRMA_MARK = 21
XFRMA_REPLAY_ESN_VAL = 23

XFRM_STATE_ESN = 128
XFRM_MODE_TRANSPORT = 0
XFRM_POLICY_ALLOW = 0
XFRMA_REPLAY_ESN_MAX = 4096  # bytes of bitmap the kernel accepts -> 32768 packets

INFINITY = (1 << 64) - 1  # XFRM_INF: no byte/packet limit

# struct sizes on x86-64 (kernel headers; 32-bit userland would differ: usersa_info is
# 220 bytes there, which is why the kernel has CONFIG_XFRM_USER_COMPAT; we always pack
# the 64-bit layout)
SELECTOR_SIZE = 56
USERSA_INFO_SIZE = 224
USERPOLICY_INFO_SIZE = 168
USER_TMPL_SIZE = 64
USERSA_ID_SIZE = 24
USERPOLICY_ID_SIZE = 64
ALGO_AEAD_HDR = 72
REPLAY_ESN_HDR = 24
NLMSGHDR = struct.Struct("=IHHII")

_SELECTOR_TAIL = struct.Struct("=HBBB3xiI")  # family, prefixlen_d/s, proto, pad, ifindex, user
_PORTS = struct.Struct(">HHHH")  # dport, dport_mask, sport, sport_mask (network order)
_LIFETIME_CFG = struct.Struct("=8Q")
_USERSA_TAIL = struct.Struct("=IIHBBB7x")  # seq, reqid, family, mode, replay_window, flags
_USERPOLICY_TAIL = struct.Struct("=IIBBBB4x")  # priority, index, dir, action, flags, share
_TMPL_TAIL = struct.Struct("=IBBBxIII")  # reqid, mode, share, optional, aalgos/ealgos/calgos
_ESN = struct.Struct("=6I")  # bmp_len, oseq, seq, oseq_hi, seq_hi, replay_window


@dataclass(frozen=True)
class Request:
    """One netlink request: message type, flags and payload, plus a label for errors."""

    type: int
    payload: bytes
    what: str
    flags: int = NLM_F_REQUEST | NLM_F_ACK


# ------------------------------------------------------------------ packing


def _family(addr: str) -> tuple[int, bytes]:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError as e:
        raise ValueError(f"not an IP address: {addr!r}") from e
    if isinstance(ip, ipaddress.IPv4Address):
        return socket.AF_INET, ip.packed + b"\0" * 12
    return socket.AF_INET6, ip.packed


def pack_address(addr: str) -> bytes:
    """``xfrm_address_t``: 16 bytes, IPv4 in the first four."""
    return _family(addr)[1]


def _pair_family(src: str, dst: str) -> int:
    fs, fd = _family(src)[0], _family(dst)[0]
    if fs != fd:
        raise ValueError(f"address families differ: {src} -> {dst}")
    return fs


def unpack_address(raw: bytes, family: int) -> str:
    if family == socket.AF_INET6:
        return str(ipaddress.IPv6Address(raw[:16]))
    return str(ipaddress.IPv4Address(raw[:4]))


def pack_selector(
    src: str | None = None,
    dst: str | None = None,
    proto: int = 0,
    dport: int = 0,
    family: int | None = None,
) -> bytes:
    """``xfrm_selector``: host selectors (/32, /128) or, with no addresses, a wildcard."""
    if src is None or dst is None:
        fam = family if family is not None else socket.AF_INET
        daddr = saddr = b"\0" * 16
        plen = 0
    else:
        fam = _pair_family(src, dst)
        daddr, saddr = pack_address(dst), pack_address(src)
        plen = 32 if fam == socket.AF_INET else 128
    ports = _PORTS.pack(dport, 0xFFFF if dport else 0, 0, 0)
    return daddr + saddr + ports + _SELECTOR_TAIL.pack(fam, plen, plen, proto, 0, 0)


def pack_lifetime_cfg() -> bytes:
    """``xfrm_lifetime_cfg``: no byte/packet limits, no timed expiry (rotation is ours)."""
    return _LIFETIME_CFG.pack(INFINITY, INFINITY, INFINITY, INFINITY, 0, 0, 0, 0)


def pack_id(dst: str, spi: int, proto: int = IPPROTO_ESP) -> bytes:
    """``xfrm_id``: daddr, SPI (network order), protocol."""
    return pack_address(dst) + struct.pack(">I", spi) + struct.pack("=B3x", proto)


def pack_attr(kind: int, body: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    return struct.pack("=HH", 4 + len(body), kind) + body + b"\0" * (-len(body) % 4)


def pack_usersa_info(state: XfrmState) -> bytes:
    fam = _pair_family(state.src, state.dst)
    flags = XFRM_STATE_ESN if state.esn else 0
    # With XFRMA_REPLAY_ESN_VAL the legacy 8-bit window must be 0 (verify_replay).
    legacy_window = 0 if state.esn else min(state.replay_window, 32)
    return (
        pack_selector(family=fam)
        + pack_id(state.dst, state.spi)
        + pack_address(state.src)
        + pack_lifetime_cfg()
        + bytes(32)  # xfrm_lifetime_cur
        + bytes(12)  # xfrm_stats
        + _USERSA_TAIL.pack(0, state.reqid, fam, XFRM_MODE_TRANSPORT, legacy_window, flags)
    )


def pack_algo_aead(name: str, key: bytes, icv_bits: int) -> bytes:
    """``xfrm_algo_aead``: name[64], key length in bits, ICV length in bits, key."""
    raw = name.encode()
    if len(raw) >= 64:
        raise ValueError(f"algorithm name too long: {name!r}")
    return struct.pack("=64sII", raw, len(key) * 8, icv_bits) + key


def pack_replay_esn(window: int, oseq: int = 0, seq: int = 0) -> bytes:
    """``xfrm_replay_state_esn`` with a zeroed bitmap of ceil(window / 32) words."""
    bmp_len = (window + 31) // 32
    if window <= 0 or bmp_len * 4 > XFRMA_REPLAY_ESN_MAX:
        raise ValueError(f"replay window must be 1..{XFRMA_REPLAY_ESN_MAX * 8}, got {window}")
    for n in (oseq, seq):
        if not 0 <= n < 1 << 64:
            raise ValueError(f"sequence number out of range: {n}")
    head = _ESN.pack(bmp_len, oseq & 0xFFFFFFFF, seq & 0xFFFFFFFF, oseq >> 32, seq >> 32, window)
    return head + bytes(4 * bmp_len)


def pack_user_tmpl(src: str, dst: str, spi: int, reqid: int) -> bytes:
    """``xfrm_user_tmpl``: ESP, transport; all algorithm masks set, as iproute2 does
    (a zero mask makes the template match no SA)."""
    fam = _pair_family(src, dst)
    return (
        pack_id(dst, spi)
        + struct.pack("=H2x", fam)
        + pack_address(src)
        + _TMPL_TAIL.pack(reqid, XFRM_MODE_TRANSPORT, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    )


def pack_userpolicy_info(policy: XfrmPolicy) -> bytes:
    return (
        pack_selector(policy.src, policy.dst, policy.proto, policy.dport)
        + pack_lifetime_cfg()
        + bytes(32)  # xfrm_lifetime_cur
        + _USERPOLICY_TAIL.pack(policy.priority, 0, policy.direction, XFRM_POLICY_ALLOW, 0, 0)
    )


def pack_userpolicy_id(policy: XfrmPolicy) -> bytes:
    sel = pack_selector(policy.src, policy.dst, policy.proto, policy.dport)
    return sel + struct.pack("=IB3x", 0, policy.direction)


def pack_usersa_id(dst: str, spi: int) -> bytes:
    fam, addr = _family(dst)
    return addr + struct.pack(">I", spi) + struct.pack("=HBx", fam, IPPROTO_ESP)


def pack_nlmsg(req: Request, seq: int) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(req.payload), req.type, req.flags, seq, 0) + (
        req.payload
    )


# ------------------------------------------------------------ request builders


def _check_spi(spi: int) -> None:
    if not 0 < spi <= 0xFFFFFFFF:
        raise ValueError(f"SPI must be 1..2^32-1, got {spi}")


def add_state(state: XfrmState, update: bool = False) -> Request:
    """NEWSA (fails EEXIST if (dst, SPI) exists) or UPDSA. Note: UPDSA cannot change
    the key of a live SA; re-key by DELSA + NEWSA under a new key."""
    _check_spi(state.spi)
    body = pack_usersa_info(state) + pack_attr(
        XFRMA_ALG_AEAD, pack_algo_aead(state.aead, state.key, state.icv_bits)
    )
    if state.esn:
        body += pack_attr(
            XFRMA_REPLAY_ESN_VAL, pack_replay_esn(state.replay_window, state.oseq, state.seq)
        )
    kind = XFRM_MSG_UPDSA if update else XFRM_MSG_NEWSA
    return Request(kind, body, f"{'update' if update else 'add'} SA {_sa_label(state)}")


def delete_state(dst: str, spi: int, src: str | None = None) -> Request:
    """DELSA by (dst, SPI, ESP); ESRCH if absent."""
    body = pack_usersa_id(dst, spi)
    if src is not None:
        body += pack_attr(XFRMA_SRCADDR, pack_address(src))
    return Request(XFRM_MSG_DELSA, body, f"delete SA spi 0x{spi:08x} dst {dst}")


def add_policy(policy: XfrmPolicy, update: bool = False) -> Request:
    """NEWPOLICY (EEXIST if the selector+direction exists) or UPDPOLICY (create or
    replace in place: the atomic way to point the OUT policy at a new SA)."""
    body = pack_userpolicy_info(policy) + pack_attr(
        XFRMA_TMPL, pack_user_tmpl(policy.src, policy.dst, policy.spi, policy.reqid)
    )
    kind = XFRM_MSG_UPDPOLICY if update else XFRM_MSG_NEWPOLICY
    return Request(kind, body, f"{'update' if update else 'add'} policy {_pol_label(policy)}")


def delete_policy(policy: XfrmPolicy) -> Request:
    """DELPOLICY by selector + direction; ENOENT if absent."""
    return Request(
        XFRM_MSG_DELPOLICY, pack_userpolicy_id(policy), f"delete policy {_pol_label(policy)}"
    )


def dump_states_request() -> Request:
    return Request(XFRM_MSG_GETSA, b"", "dump SAs", NLM_F_REQUEST | NLM_F_DUMP)


def dump_policies_request() -> Request:
    return Request(XFRM_MSG_GETPOLICY, b"", "dump policies", NLM_F_REQUEST | NLM_F_DUMP)


def _sa_label(s: XfrmState) -> str:
    return f"spi 0x{s.spi:08x} {s.src} -> {s.dst}"


def _pol_label(p: XfrmPolicy) -> str:
    return f"{p.direction.name.lower()} {p.src} -> {p.dst} proto {p.proto} dport {p.dport}"


# ------------------------------------------------------------------ parsing


def _attrs(data: bytes, start: int) -> Iterator[tuple[int, bytes]]:
    off = start
    while off + 4 <= len(data):
        alen, kind = struct.unpack_from("=HH", data, off)
        if alen < 4 or off + alen > len(data):
            return
        yield kind & 0x3FFF, data[off + 4 : off + alen]
        off += (alen + 3) & ~3


def parse_state(payload: bytes) -> StateInfo:
    """A NEWSA dump message body back into ``StateInfo``."""
    if len(payload) < USERSA_INFO_SIZE:
        raise ValueError("short xfrm_usersa_info")
    fam = struct.unpack_from("=H", payload, 212)[0]
    dst = unpack_address(payload[56:72], fam)
    spi = struct.unpack_from(">I", payload, 72)[0]
    src = unpack_address(payload[80:96], fam)
    nbytes, npackets, add_time, use_time = struct.unpack_from("=4Q", payload, 160)
    _window8, replay, integrity = struct.unpack_from("=3I", payload, 192)
    _seq, reqid, _fam, mode, window8, flags = _USERSA_TAIL.unpack_from(payload, 204)
    aead, key, icv = "", b"", 0
    window, oseq, seq = window8, 0, 0
    for kind, body in _attrs(payload, USERSA_INFO_SIZE):
        if kind == XFRMA_ALG_AEAD and len(body) >= ALGO_AEAD_HDR:
            name, key_bits, icv = struct.unpack_from("=64sII", body)
            aead = name.split(b"\0", 1)[0].decode(errors="replace")
            key = body[ALGO_AEAD_HDR : ALGO_AEAD_HDR + key_bits // 8]
        elif kind == XFRMA_REPLAY_ESN_VAL and len(body) >= REPLAY_ESN_HDR:
            _bmp, olo, slo, ohi, shi, window = _ESN.unpack_from(body)
            oseq, seq = (ohi << 32) | olo, (shi << 32) | slo
    state = XfrmState(
        src,
        dst,
        spi,
        key,
        reqid=reqid,
        aead=aead,
        icv_bits=icv,
        replay_window=window,
        esn=bool(flags & XFRM_STATE_ESN),
    )
    return StateInfo(
        state, nbytes, npackets, add_time, use_time, replay, integrity, oseq, seq, mode, flags
    )


def parse_policy(payload: bytes) -> PolicyInfo:
    """A NEWPOLICY dump message body back into ``PolicyInfo`` (first template only)."""
    if len(payload) < USERPOLICY_INFO_SIZE:
        raise ValueError("short xfrm_userpolicy_info")
    dport = struct.unpack_from(">H", payload, 32)[0]
    fam, plen_d, plen_s, proto, _ifi, _user = _SELECTOR_TAIL.unpack_from(payload, 40)
    dst = unpack_address(payload[0:16], fam)
    src = unpack_address(payload[16:32], fam)
    priority, index, direction, action, _fl, _sh = _USERPOLICY_TAIL.unpack_from(payload, 152)
    spi, reqid, ntmpl = 0, 0, 0
    for kind, body in _attrs(payload, USERPOLICY_INFO_SIZE):
        if kind == XFRMA_TMPL and len(body) >= USER_TMPL_SIZE:
            ntmpl = len(body) // USER_TMPL_SIZE
            spi = struct.unpack_from(">I", body, 16)[0]
            reqid = struct.unpack_from("=I", body, 44)[0]
    pol = XfrmPolicy(src, dst, Direction(direction), spi, reqid, proto, dport, priority)
    return PolicyInfo(pol, plen_s, plen_d, ntmpl, index, action)


def parse_error(body: bytes, flags: int) -> tuple[int, str]:
    """``nlmsgerr`` -> (positive errno or 0, extended-ack message)."""
    err = -struct.unpack_from("=i", body, 0)[0]
    detail = ""
    if flags & NLM_F_ACK_TLVS:
        inner_len = NLMSGHDR.unpack_from(body, 4)[0]
        start = 4 + (NLMSGHDR.size if flags & NLM_F_CAPPED else inner_len)
        for kind, value in _attrs(body, (start + 3) & ~3):
            if kind == NLMSGERR_ATTR_MSG:
                detail = value.split(b"\0", 1)[0].decode(errors="replace")
    return err, detail
