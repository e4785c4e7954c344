"""A tiny pcap reader for the golden capture tests.

Owns: parsing classic libpcap files (micro/nanosecond, either byte order) with
Ethernet (incl. 802.1Q), Linux cooked v1/v2 or raw IPv4 link types, extracting IPv4
UDP datagrams and reassembling TCP byte streams per direction. Good enough for
captures of a few serf agents on a bridge; not a general packet library
(no IPv6, no IP fragment reassembly, no SACK games).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class Datagram:
    ts: float
    src: Endpoint
    dst: Endpoint
    payload: bytes


@dataclass
class TcpStream:
    """Bytes sent in one direction of one TCP connection, in sequence order."""

    ts: float
    src: Endpoint
    dst: Endpoint
    data: bytes = b""
    _isn: int | None = field(default=None, repr=False)
    _segments: dict[int, bytes] = field(default_factory=dict, repr=False)


def _frames(raw: bytes) -> tuple[int, list[tuple[float, bytes]]]:
    magic = raw[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        raise ValueError("not a classic pcap file")
    frac = 1e9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e6
    (linktype,) = struct.unpack_from(e + "I", raw, 20)
    out = []
    off = 24
    while off + 16 <= len(raw):
        sec, sub, incl, _orig = struct.unpack_from(e + "IIII", raw, off)
        off += 16
        out.append((sec + sub / frac, raw[off : off + incl]))
        off += incl
    return linktype, out


def _ipv4_payload(linktype: int, frame: bytes) -> bytes | None:
    if linktype == 1:  # Ethernet, possibly VLAN-tagged
        (et,) = struct.unpack_from("!H", frame, 12)
        off = 14
        while et == 0x8100:
            (et,) = struct.unpack_from("!H", frame, off + 2)
            off += 4
    elif linktype == 113:  # Linux cooked v1
        (et,) = struct.unpack_from("!H", frame, 14)
        off = 16
    elif linktype == 276:  # Linux cooked v2
        (et,) = struct.unpack_from("!H", frame, 0)
        off = 20
    elif linktype in (101, 228):  # raw IPv4
        et, off = 0x0800, 0
    else:
        raise ValueError(f"unsupported pcap link type {linktype}")
    return frame[off:] if et == 0x0800 else None


def _ip(b: bytes) -> str:
    return ".".join(str(x) for x in b)


def read(path: str | Path) -> tuple[list[Datagram], list[TcpStream]]:
    """All UDP datagrams (capture order) and TCP streams (by first segment time)."""
    linktype, frames = _frames(Path(path).read_bytes())
    datagrams: list[Datagram] = []
    streams: dict[tuple[Endpoint, Endpoint], TcpStream] = {}
    for ts, frame in frames:
        ip = _ipv4_payload(linktype, frame)
        if ip is None or len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 0x0F) * 4
        (total,) = struct.unpack_from("!H", ip, 2)
        proto = ip[9]
        src, dst = _ip(ip[12:16]), _ip(ip[16:20])
        l4 = ip[ihl:total]
        if proto == 17 and len(l4) >= 8:
            sport, dport, ulen = struct.unpack_from("!HHH", l4)
            datagrams.append(Datagram(ts, (src, sport), (dst, dport), l4[8:ulen]))
        elif proto == 6 and len(l4) >= 20:
            sport, dport, seq = struct.unpack_from("!HHI", l4)
            flags = l4[13]
            doff = (l4[12] >> 4) * 4
            key = ((src, sport), (dst, dport))
            st = streams.get(key)
            if st is None:
                st = streams[key] = TcpStream(ts, (src, sport), (dst, dport))
            if flags & 0x02:  # SYN: data starts at ISN + 1
                st._isn = (seq + 1) & 0xFFFFFFFF
            payload = l4[doff:]
            if payload:
                st._segments.setdefault(seq, payload)
    result = []
    for st in streams.values():
        if not st._segments:
            continue
        base = st._isn if st._isn is not None else min(st._segments)
        buf = bytearray()
        for seq, payload in sorted(
            st._segments.items(), key=lambda kv: (kv[0] - base) & 0xFFFFFFFF
        ):
            rel = (seq - base) & 0xFFFFFFFF
            if rel > len(buf):  # a hole: stop at what is contiguous
                break
            buf[rel : rel + len(payload)] = payload
        st.data = bytes(buf)
        result.append(st)
    result.sort(key=lambda s: s.ts)
    return datagrams, result
