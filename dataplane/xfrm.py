"""XFRM (IPsec SAs and policies) over NETLINK_XFRM: message encoding, batched apply, read-back.

Owns:
- value types for what we program: ``XfrmState`` (ESP, transport mode,
  rfc4106(gcm(aes)) with a 128-bit ICV, extended sequence numbers and an anti-replay
  window carried in XFRMA_REPLAY_ESN_VAL) and ``XfrmPolicy`` (host-to-host selector on
  UDP to the VXLAN port, one ESP transport template);
- byte-exact packing of the kernel's x86-64 structs (``xfrm_selector`` 56,
  ``xfrm_usersa_info`` 224, ``xfrm_userpolicy_info`` 168, ``xfrm_user_tmpl`` 64, ...)
  and parsing of dump replies back into the same value types plus counters;
- ``XfrmSocket``: a NETLINK_XFRM socket (optionally opened inside a named netns) that
  sends many requests per ``sendmsg`` and returns one result per request, with the
  kernel's extended-ack text in errors;
- ``desired_xfrm`` (crypto/ipsec.py's per-peer SAs -> states and policies) and
  ``sync_requests``, the pure diff from what the kernel holds to what should exist, in
  make-before-break order: add SAs, then add/update policies, then delete stale
  policies, then stale SAs;
- ``kernel_support_problem()``: probes a scratch network namespace for ESP + GCM and
  says in plain words what the kernel lacks.
Does not: decide which SAs should exist (crypto/ipsec.py, the compile step), or run in
trio (callers use ``trio.to_thread.run_sync``; a socket is single-threaded).

Ownership: every SA and policy template we create carries ``REQID``; dumps return
everything and callers keep only objects with that reqid. Identity: an SA is
(dst, SPI, ESP); a policy is (selector, direction). No FWD policy is needed: VXLAN in
transport mode terminates on the host, so inbound packets meet the IN policy.
References: shared/reference/dataplane.md §4.6 (types, attributes, layouts, error codes),
include/uapi/linux/xfrm.h, net/xfrm/xfrm_user.c, docs/ipsec.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from crypto.ipsec import PairSAs, SaParams

# ------------------------------------------------------------------ constants

NETLINK_XFRM = 6
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # errors do not echo the whole request back
NETLINK_EXT_ACK = 11  # errors carry the kernel's explanation

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

IPPROTO_ESP = 50
IPPROTO_UDP = 17
VXLAN_PORT = 4789
INFINITY = (1 << 64) - 1  # XFRM_INF: no byte/packet limit

AEAD_NAME = "rfc4106(gcm(aes))"
ICV_BITS = 128
REPLAY_WINDOW = 1024
# Ownership label on our SAs and policy templates ("OVE"); other IPsec users keep theirs.
REQID = 0x4F5645

# struct sizes on x86-64 (kernel headers; 32-bit userland would differ, see §4.6)
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


class Direction(IntEnum):
    IN = 0
    OUT = 1
    FWD = 2


class XfrmError(OSError):
    """A request the kernel refused; ``str()`` names the request and the reason."""

    def __init__(self, err: int, what: str, detail: str = "") -> None:
        reason = os.strerror(err) + (f": {detail}" if detail else "")
        super().__init__(err, f"{what}: {reason}")
        self.what = what
        self.detail = detail


# --------------------------------------------------------------- value types


@dataclass(frozen=True)
class XfrmState:
    """One ESP transport-mode SA. ``key`` is AES key || 4-byte salt; never log it.

    ``oseq``/``seq`` (64-bit, split into ESN halves on the wire) only matter on
    creation and are not part of equality.
    """

    src: str
    dst: str
    spi: int
    key: bytes = field(repr=False)
    reqid: int = REQID
    aead: str = AEAD_NAME
    icv_bits: int = ICV_BITS
    replay_window: int = REPLAY_WINDOW
    esn: bool = True
    oseq: int = field(default=0, compare=False)
    seq: int = field(default=0, compare=False)


@dataclass(frozen=True)
class StateInfo:
    """An SA read back from the kernel, with its counters."""

    state: XfrmState
    bytes: int
    packets: int
    add_time: int  # seconds since the epoch, kernel clock
    use_time: int
    replay_failures: int
    integrity_failures: int
    oseq: int  # 64-bit sequence numbers (ESN)
    seq: int
    mode: int
    flags: int


@dataclass(frozen=True)
class XfrmPolicy:
    """Require ESP for ``proto``/``dport`` traffic from ``src`` to ``dst`` (host /32 or /128).

    The template names the SA: ``spi`` 0 accepts any SA with our reqid (IN), a fixed
    SPI pins the outbound SA, which makes switching epochs one atomic UPDPOLICY (OUT).
    """

    src: str
    dst: str
    direction: Direction
    spi: int = 0
    reqid: int = REQID
    proto: int = IPPROTO_UDP
    dport: int = VXLAN_PORT
    priority: int = 0


@dataclass(frozen=True)
class PolicyInfo:
    """A policy read back from the kernel (ours or not: check ``policy.reqid``)."""

    policy: XfrmPolicy
    prefixlen_s: int
    prefixlen_d: int
    templates: int
    index: int
    action: int


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


def _unpack_address(raw: bytes, family: int) -> str:
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


def peer_policies(local: str, peer: str, send_spi: int, reqid: int = REQID) -> list[XfrmPolicy]:
    """OUT (VXLAN to the peer must use the SA ``send_spi``) and IN (VXLAN from the peer
    must have arrived in ESP with one of its SAs, so cleartext from it is dropped)."""
    return [
        XfrmPolicy(local, peer, Direction.OUT, spi=send_spi, reqid=reqid),
        XfrmPolicy(peer, local, Direction.IN, spi=0, reqid=reqid),
    ]


def state_from_sa(
    sa: SaParams, reqid: int = REQID, replay_window: int = REPLAY_WINDOW
) -> XfrmState:
    return XfrmState(sa.src, sa.dst, sa.spi, sa.key, reqid=reqid, replay_window=replay_window)


def desired_xfrm(
    me: str, pairs: Iterable[PairSAs], reqid: int = REQID, replay_window: int = REPLAY_WINDOW
) -> tuple[list[XfrmState], list[XfrmPolicy]]:
    """Kernel objects for every peer we share an encrypted network with.

    A peer with no usable epoch still gets both policies (the OUT template then names
    SPI 0 with no SA to match, so VXLAN to it is dropped, never sent in clear).
    """
    states: list[XfrmState] = []
    policies: list[XfrmPolicy] = []
    for pair in pairs:
        for sa in (*pair.inbound, *pair.outbound):
            states.append(state_from_sa(sa, reqid, replay_window))
        send_spi = pair.send.spi if pair.send is not None else 0
        policies.extend(peer_policies(me, pair.peer, send_spi, reqid))
    return states, policies


def _policy_key(p: XfrmPolicy) -> tuple[str, str, int, int, int]:
    return (p.src, p.dst, int(p.direction), p.proto, p.dport)


def ours(policy: PolicyInfo, reqid: int = REQID) -> bool:
    """A policy we manage: our reqid in its single template, host-to-host selector."""
    full = 32 if ":" not in policy.policy.src else 128
    return (
        policy.templates == 1
        and policy.policy.reqid == reqid
        and policy.prefixlen_s == policy.prefixlen_d == full
    )


def sync_requests(
    want_states: Iterable[XfrmState],
    want_policies: Iterable[XfrmPolicy],
    have_states: Iterable[StateInfo],
    have_policies: Iterable[PolicyInfo],
    reqid: int = REQID,
) -> list[Request]:
    """Requests that turn what the kernel has into what we want, touching only ours.

    Order is make-before-break: new SAs first (an SA whose key or parameters changed
    is deleted and re-added right there), then policies (UPDPOLICY: create or switch
    in place), then stale policies, then stale SAs.
    """
    have_sa = {(s.state.dst, s.state.spi): s.state for s in have_states if s.state.reqid == reqid}
    want_sa: dict[tuple[str, int], XfrmState] = {}
    for st in want_states:
        want_sa[(st.dst, st.spi)] = st
    have_pol = {_policy_key(p.policy): p.policy for p in have_policies if ours(p, reqid)}
    want_pol: dict[tuple[str, str, int, int, int], XfrmPolicy] = {}
    for pol in want_policies:
        want_pol[_policy_key(pol)] = pol

    reqs: list[Request] = []
    for key, st in want_sa.items():
        cur = have_sa.get(key)
        if cur == st:
            continue
        if cur is not None:
            reqs.append(delete_state(cur.dst, cur.spi, cur.src))
        reqs.append(add_state(st))
    for pkey, pol in want_pol.items():
        if have_pol.get(pkey) != pol:
            reqs.append(add_policy(pol, update=True))
    for pkey, pol in have_pol.items():
        if pkey not in want_pol:
            reqs.append(delete_policy(pol))
    for key, st in have_sa.items():
        if key not in want_sa:
            reqs.append(delete_state(st.dst, st.spi, st.src))
    return reqs


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
    dst = _unpack_address(payload[56:72], fam)
    spi = struct.unpack_from(">I", payload, 72)[0]
    src = _unpack_address(payload[80:96], fam)
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
    dst = _unpack_address(payload[0:16], fam)
    src = _unpack_address(payload[16:32], fam)
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


# ------------------------------------------------------------------- socket

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@contextlib.contextmanager
def _netns(name: str | None) -> Iterator[None]:
    """This thread inside /run/netns/NAME (or an absolute path) for the body."""
    if name is None:
        yield
        return
    path = name if name.startswith("/") else f"/run/netns/{name}"
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


class XfrmSocket:
    """A NETLINK_XFRM socket. Not thread-safe; one per worker thread or task.

    A socket stays bound to the namespace it was opened in, so ``open(netns=...)``
    programs that namespace while the thread itself goes back home.
    """

    CHUNK = 60 * 1024  # bytes of requests per sendmsg
    TIMEOUT = 30.0  # seconds to wait for an answer (TimeoutError, an OSError)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0

    @classmethod
    def open(cls, netns: str | None = None) -> XfrmSocket:
        with _netns(netns):
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
            except OSError as e:
                raise XfrmError(
                    e.errno or errno.EPROTONOSUPPORT,
                    "open NETLINK_XFRM socket",
                    "kernel has no XFRM netlink interface (CONFIG_XFRM_USER, module xfrm_user)",
                ) from e
        try:
            sock.bind((0, 0))
            sock.settimeout(cls.TIMEOUT)  # a kernel that never answers must not hang us
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
                with contextlib.suppress(OSError):  # older kernels: plain errors
                    sock.setsockopt(SOL_NETLINK, opt, 1)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> XfrmSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        return self._seq

    def apply(self, requests: Sequence[Request]) -> list[XfrmError | None]:
        """Send ``requests`` batched (many per sendmsg); one result per request, in order.

        A failed request does not stop the others: the kernel handles each message of
        a batch on its own, and each one gets its own ack.
        """
        results: list[XfrmError | None] = [None] * len(requests)
        i = 0
        while i < len(requests):
            chunk: dict[int, int] = {}  # seq -> index in requests
            buf = bytearray()
            while i < len(requests) and (not buf or len(buf) < self.CHUNK):
                seq = self._next_seq()
                chunk[seq] = i
                buf += pack_nlmsg(requests[i], seq)
                i += 1
            self._sock.send(bytes(buf))
            while chunk:
                for hdr_type, flags, seq, body in self._recv():
                    if hdr_type != NLMSG_ERROR or seq not in chunk:
                        continue
                    idx = chunk.pop(seq)
                    err, detail = parse_error(body, flags)
                    if err:
                        results[idx] = XfrmError(err, requests[idx].what, detail)
        return results

    def request(self, req: Request) -> None:
        """One request; raises ``XfrmError`` if the kernel refuses it."""
        res = self.apply([req])[0]
        if res is not None:
            raise res

    def _recv(self) -> Iterator[tuple[int, int, int, bytes]]:
        data = self._sock.recv(1 << 20)
        off = 0
        while off + NLMSGHDR.size <= len(data):
            length, kind, flags, seq, _pid = NLMSGHDR.unpack_from(data, off)
            if length < NLMSGHDR.size:
                break
            yield kind, flags, seq, data[off + NLMSGHDR.size : off + length]
            off += (length + 3) & ~3

    def _dump(self, req: Request, reply_type: int) -> list[bytes]:
        seq = self._next_seq()
        self._sock.send(pack_nlmsg(req, seq))
        out: list[bytes] = []
        while True:
            for kind, flags, rseq, body in self._recv():
                if rseq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    err, detail = parse_error(body, flags)
                    if err:
                        raise XfrmError(err, req.what, detail)
                    return out
                if kind == reply_type:
                    out.append(body)

    def dump_states(self) -> list[StateInfo]:
        return [parse_state(b) for b in self._dump(dump_states_request(), XFRM_MSG_NEWSA)]

    def dump_policies(self) -> list[PolicyInfo]:
        return [parse_policy(b) for b in self._dump(dump_policies_request(), XFRM_MSG_NEWPOLICY)]


# ------------------------------------------------------------ kernel probe

_PROBE_SRC, _PROBE_DST = "192.0.2.1", "192.0.2.2"


def _probe_in_scratch_netns() -> list[tuple[str, int, str]]:
    """Add probe SAs inside a brand-new netns owned by a throwaway thread.

    The netns disappears with the thread, so the agent's namespace never sees a probe.
    Returns (probe name, errno or 0, ext-ack text) for each probe.
    """
    results: list[tuple[str, int, str]] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"unshare(CLONE_NEWNET): {os.strerror(e)}")
            with XfrmSocket.open() as xs:
                gcm = XfrmState(_PROBE_SRC, _PROBE_DST, 0x100, bytes(20), reqid=1)
                res = xs.apply([add_state(gcm)])[0]
                results.append(("esp+gcm", *_outcome(res)))
                if res is not None:
                    # ESP with null algorithms tells "no ESP" apart from "no GCM".
                    results.append(("esp+null", *_outcome(xs.apply([_null_esp_request(0x101)])[0])))
        except BaseException as e:  # reported to the caller's thread
            failure.append(e)

    t = threading.Thread(target=run, name="xfrm-probe", daemon=True)
    t.start()
    t.join()
    if failure:
        raise failure[0]
    return results


def _outcome(res: XfrmError | None) -> tuple[int, str]:
    return (0, "") if res is None else (res.errno or errno.EIO, res.detail)


def _null_esp_request(spi: int) -> Request:
    state = XfrmState(_PROBE_SRC, _PROBE_DST, spi, b"", reqid=1, esn=False)
    body = (
        pack_usersa_info(state)
        + pack_attr(XFRMA_ALG_CRYPT, struct.pack("=64sI", b"ecb(cipher_null)", 0))
        + pack_attr(XFRMA_ALG_AUTH, struct.pack("=64sI", b"digest_null", 0))
    )
    return Request(XFRM_MSG_NEWSA, body, "probe ESP with null algorithms")


def kernel_support_problem() -> str | None:
    """None if this kernel can run ESP with rfc4106(gcm(aes)); otherwise what it lacks.

    Probes by adding SAs in a scratch network namespace (needs CAP_SYS_ADMIN and
    CAP_NET_ADMIN, like the agent itself).
    """
    try:
        results = _probe_in_scratch_netns()
    except XfrmError as e:
        return f"IPsec unavailable: {e}"
    except OSError as e:
        return f"IPsec unavailable: cannot probe the kernel ({e})"
    status = {name: (err, detail) for name, err, detail in results}
    err, detail = status["esp+gcm"]
    if err == 0:
        return None
    null_err = status.get("esp+null", (0, ""))[0]
    missing: list[str] = []
    if err == errno.EPROTONOSUPPORT or null_err == errno.EPROTONOSUPPORT:
        missing.append("ESP (CONFIG_INET_ESP / module esp4; esp6 for IPv6 underlays)")
    if err == errno.ENOSYS:
        missing.append(
            f"the AEAD algorithm {AEAD_NAME} (CONFIG_CRYPTO_GCM / modules gcm, aes, ghash)"
        )
    if err == errno.ENOENT or "cryptographic" in detail:
        missing.append(
            "a working crypto setup for ESP: the default RNG stdrng "
            "(modules drbg, jitterentropy_rng, sha512_generic) or the seqiv IV generator"
        )
    why = f"{os.strerror(err)}" + (f": {detail}" if detail else "")
    if not missing:
        return f"IPsec unavailable: adding an ESP {AEAD_NAME} SA failed ({why})"
    return f"IPsec unavailable: this kernel lacks {' and '.join(missing)} (probe: {why})"
