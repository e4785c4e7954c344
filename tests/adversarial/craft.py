"""Crafted memberlist datagrams and streams for the adversarial tier (issue 18).

Owns: building hostile or malformed input as bytes: alive/suspect/dead about any name
with any incarnation, meta and address; compounds (well formed, truncated, empty
parts, too many parts, nested too deeply); LZW bombs; CRC frames (right or wrong);
push/pull streams and stream headers (huge node counts, huge user state); user
messages; the tables' user messages with deep or large msgpack; msgpack bombs;
encrypted frames under a foreign key. Does not: send anything (the tests do) or
decide what an agent should do with it.

The project's own encoders (``gossip.wire.codec``/``messagecodec``,
``gossip.tables.framing``) build whatever they can express, so the bytes are exactly
what a memberlist peer would send; where an encoder refuses (an incarnation of 2^32,
an empty compound part, a wrong CRC, a header that lies about its length) the bytes
are assembled by hand here. Everything is deterministic: uniqueness comes from an
explicit ``index``, never from randomness.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import msgpack

from crypto.keyring import Keyring
from gossip.tables import framing
from gossip.wire import codec, messagecodec
from gossip.wire.messages import (
    DEFAULT_VSN,
    Alive,
    Dead,
    MessageType,
    PushNodeState,
    Suspect,
    UserMsg,
)

U32 = 0xFFFFFFFF

T_ALIVE = int(MessageType.ALIVE)
T_SUSPECT = int(MessageType.SUSPECT)
T_DEAD = int(MessageType.DEAD)
T_PUSH_PULL = int(MessageType.PUSH_PULL)
T_USER = int(MessageType.USER)
T_COMPOUND = int(MessageType.COMPOUND)
T_COMPRESS = int(MessageType.COMPRESS)
T_CRC = int(MessageType.HAS_CRC)


def pack(obj: Any) -> bytes:
    """msgpack as memberlist writes it (byte strings as *str*)."""
    out = msgpack.packb(obj, use_bin_type=False)
    assert isinstance(out, bytes)
    return out


def ip(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


# -- leaf messages -----------------------------------------------------------------------------


def alive(name: str, incarnation: int, addr: str = "192.0.2.250", port: int = 7946, *,
          meta: bytes = b"", vsn: bytes = DEFAULT_VSN) -> bytes:
    """An alive message; by hand when the encoder refuses (incarnation > 2^32 - 1)."""
    try:
        return codec.encode(Alive(incarnation, name, ip(addr), port, meta, vsn))
    except ValueError:
        return bytes([T_ALIVE]) + pack({"Addr": ip(addr), "Incarnation": incarnation, "Meta": meta,
                                        "Node": name, "Port": port, "Vsn": vsn})


def suspect(name: str, incarnation: int, from_: str = "mallory") -> bytes:
    try:
        return codec.encode(Suspect(incarnation, name, from_))
    except ValueError:
        return bytes([T_SUSPECT]) + pack({"From": from_, "Incarnation": incarnation, "Node": name})


def dead(name: str, incarnation: int, from_: str = "mallory") -> bytes:
    try:
        return codec.encode(Dead(incarnation, name, from_))
    except ValueError:
        return bytes([T_DEAD]) + pack({"From": from_, "Incarnation": incarnation, "Node": name})


def user(payload: bytes) -> bytes:
    """A UDP user message ``[8] + payload``."""
    return codec.encode(UserMsg(payload))


# -- packet framing ----------------------------------------------------------------------------


def compound(parts: Sequence[bytes]) -> bytes:
    """A well-formed compound (the codec's encoder: 1-255 non-empty parts)."""
    return codec.encode_compound(parts)


def raw_compound(parts: Sequence[bytes], *, count: int | None = None,
                 lengths: Sequence[int] | None = None) -> bytes:
    """A compound whose part count and lengths may lie (``count`` and ``lengths``
    override what ``parts`` hold; empty parts allowed)."""
    n = len(parts) if count is None else count
    lens = [len(p) for p in parts] if lengths is None else list(lengths)
    return bytes([T_COMPOUND, n & 0xFF]) + b"".join(struct.pack(">H", x & 0xFFFF) for x in lens) + b"".join(parts)


def nested_compounds(leaf: bytes, depth: int) -> bytes:
    """``leaf`` wrapped in ``depth`` one-part compounds."""
    buf = leaf
    for _ in range(depth):
        buf = codec.encode_compound([buf])
    return buf


def compress(buf: bytes) -> bytes:
    """``[9]{Algo: 0, Buf: lzw(buf)}`` (the codec's encoder)."""
    return codec.encode_compress(buf)


def compress_raw(lzw_stream: bytes, algo: int = 0) -> bytes:
    """A compress message around an arbitrary (possibly hostile) LZW stream."""
    return bytes([T_COMPRESS]) + pack({"Algo": algo, "Buf": lzw_stream})


def crc(buf: bytes, *, wrong: bool = False) -> bytes:
    """A CRC frame around ``buf``; ``wrong`` flips the checksum."""
    if not wrong:
        return codec.encode_crc(buf)
    return bytes([T_CRC]) + ((zlib.crc32(buf) ^ 0xDEADBEEF) & U32).to_bytes(4, "big") + buf


def packet(parts: Sequence[bytes], *, compress: bool = False, crc: bool = False,
           keyring: Keyring | None = None) -> bytes:
    """A datagram as memberlist builds it (the codec's encoder)."""
    return codec.encode_packet(parts, compress=compress, crc=crc, keyring=keyring)


def sealed(buf: bytes, key: bytes) -> bytes:
    """``buf`` encrypted as a datagram (AAD empty) under ``key`` (a foreign key in tests)."""
    return Keyring([key], os.urandom).seal(buf, b"")


def sealed_stream(body: bytes, key: bytes) -> bytes:
    """A stream encrypted under ``key``: ``[10][u32 len][seal(body, aad=header)]``."""
    return codec.frame_stream(body, compress=False, keyring=Keyring([key], os.urandom))


# -- LZW bombs ---------------------------------------------------------------------------------


class _BitWriter:
    def __init__(self) -> None:
        self.out = bytearray()
        self.bits = 0
        self.nbits = 0

    def write(self, code: int, width: int) -> None:
        self.bits |= code << self.nbits
        self.nbits += width
        while self.nbits >= 8:
            self.out.append(self.bits & 0xFF)
            self.bits >>= 8
            self.nbits -= 8

    def finish(self) -> bytes:
        if self.nbits:
            self.out.append(self.bits & 0xFF)
        return bytes(self.out)


def lzw_bomb(size: int, byte: int = 0x61) -> bytes:
    """A Go LSB/8 LZW stream that inflates to exactly ``size`` copies of ``byte``.

    It builds the chain "a", "aa", "aaa", ... until the 12-bit table is full (the
    decoder then stops defining codes but keeps expanding them) and repeats the
    longest entry: about 2,500 bytes out per byte in (40 MiB from ~17 KiB), the
    shape of issue 18 item 5. Mirrors ``gossip.wire.lzw``'s decoder state exactly.
    """
    if size < 1:
        raise ValueError("size must be at least 1")
    w = _BitWriter()
    width, hi, overflow, last = 9, 257, 512, -1
    lengths = {byte: 1}
    emitted = 0

    def emit(code: int, length: int) -> None:
        nonlocal width, hi, overflow, last, emitted
        w.write(code, width)
        emitted += length
        if last >= 0:
            lengths[hi] = lengths[last] + 1  # the entry the decoder defines now
        last = code
        hi += 1
        if hi >= overflow:
            if width == 12:
                last, hi = -1, hi - 1
            else:
                width, overflow = width + 1, overflow << 1

    w.write(256, 9)  # a clear code first, as Go >= 1.17 encoders write
    emit(byte, 1)
    while emitted < size:
        left = size - emitted
        if last >= 0 and lengths[last] + 1 <= left:
            emit(hi, lengths[last] + 1)  # the code being defined (KwKwK): one longer
            continue
        # Table full (or nearly done): the longest defined entry that still fits.
        code = max((c for c, n in lengths.items() if n <= left), key=lambda c: lengths[c])
        emit(code, lengths[code])
    w.write(257, width)
    return w.finish()


def unique_user_bomb(index: int, parts: int = 16, part_size: int = 0xFFF0) -> bytes:
    """A small datagram (≤ 2 KiB for the defaults) that inflates to a compound of
    ``parts`` user messages of ``part_size`` bytes each, every one unique to
    ``index``: what issue 18 item 3 fed to the UDP decode cache (each datagram is a
    new cache key, and each keeps ~1 MiB of decoded messages alive).

    The user messages start with a private type byte (0x80) that no tables message
    uses, so a receiver decodes and then ignores them.
    """
    tag = struct.pack(">I", index)
    payloads = [b"\x80" + tag + bytes([k]) + b"\x00" * (part_size - 7) for k in range(parts)]
    inner = raw_compound([user(p) for p in payloads])
    return compress(inner)


# -- streams -----------------------------------------------------------------------------------


def push_pull(states: Sequence[PushNodeState] = (), user_state: bytes = b"", *, join: bool = False) -> bytes:
    """A whole push/pull stream body (the codec's encoder), uncompressed and plaintext."""
    return messagecodec.encode_push_pull_body(join, [codec.encode_node_state(s) for s in states], user_state)


def push_pull_head(*, nodes: int = 0, user_state_len: int = 0, join: bool = False) -> bytes:
    """Only the header of a push/pull stream, which may announce more than follows."""
    return bytes([T_PUSH_PULL]) + pack({"Join": join, "Nodes": nodes, "UserStateLen": user_state_len})


def user_stream_head(length: int) -> bytes:
    """The header of a TCP user message ``[8]{UserMsgLen}`` (the payload follows)."""
    return bytes([T_USER]) + pack({"UserMsgLen": length})


def user_stream(payload: bytes) -> bytes:
    return user_stream_head(len(payload)) + payload


def node_state(name: str, incarnation: int, addr: str = "192.0.2.250", *, state: int = 0,
               meta: bytes = b"") -> PushNodeState:
    from gossip.wire.messages import NodeState

    return PushNodeState(name, ip(addr), 7946, meta, incarnation, NodeState(state))


# -- msgpack bombs and the tables' messages ----------------------------------------------------------


def msgpack_bombs() -> list[bytes]:
    """msgpack bodies that announce far more than they hold, or nest absurdly deep."""
    return [
        b"\xdf\xff\xff\xff\xff",  # map32 of 4 G entries, nothing follows
        b"\xdd\xff\xff\xff\xff",  # array32 of 4 G items
        b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
        b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
        b"\xc9\xff\xff\xff\xff\x01",  # ext32 of 4 GiB
        b"\x91" * 100_000 + b"\xc0",  # 100,000 nested one-element arrays
        b"\x81\xa1k" * 30_000 + b"\xc0",  # 30,000 nested one-entry maps
        b"\xdc\xff\xff" + b"\xc0" * 10,  # array16 of 65,535 announced, 10 present
        b"\x8f" + b"\xc0" * 30,  # fixmap of 15 with nil keys
    ]


def message_with_body(t: int, body: bytes) -> bytes:
    """``[type] + body`` for any body (a msgpack bomb where a map belongs)."""
    return bytes([t]) + body


def tables_payloads(index: int = 0) -> list[bytes]:
    """Hostile user-message payloads of the replicated tables (``gossip.tables.framing``):
    deep and large msgpack under every tables type byte, plus well-formed headers
    around garbage rows."""
    out: list[bytes] = []
    for kind in (framing.EVENT, framing.NET_GOSSIP, framing.BULK_SYNC, framing.STATE, 0x95):
        for bomb in msgpack_bombs():
            out.append(bytes([kind]) + bomb)
    net = struct.pack(">I", index).hex() * 8  # a 32-byte network id nobody created
    out.append(framing.encode_net_gossip(net, [pack([[[[[[1]]]]]])] * 50))
    out.append(framing.encode_bulk_sync(net, "mallory", True, [pack(["x" * 1000])] * 40))
    out.append(framing.encode_state([pack([0, 1, "mallory", b"\x00" * 32, False, 0])] * 60))
    out.append(framing.encode_event(pack([0] * 60_000)))
    return out


def deep_json(depth: int) -> bytes:
    """``[[[...]]]`` nested ``depth`` levels (issue 18 item 2)."""
    return b"[" * depth + b"]" * depth
