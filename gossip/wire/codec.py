"""memberlist wire codec: packets and streams <-> :mod:`gossip.wire.messages` values (pure).

Owns: the framing around messages: compound, the decision to LZW-compress, CRC
frames, the label header (accepted, never sent), the encryption layer of packets
and streams, the packet and stream pipelines and incremental TCP stream framing.
The bodies of single messages are :mod:`gossip.wire.messagecodec`'s; its
``encode``/``decode`` (and the few body encoders callers need) are re-exported
here, so a caller imports one module.
Does not: decide what to send or to whom (``gossip/swim.py``), choose a keyring or
whether plaintext is accepted (the caller passes both), do I/O, or hold
keys (``crypto/keyring.py``).

Packet pipeline (memberlist 0.2.2 ``net.go`` / ``util.go``): parts -> compound ->
LZW only if shorter -> CRC -> AES-GCM (AAD empty). Stream pipeline: message -> LZW
always when enabled -> ``[10][u32 len][seal(aad = first 5 bytes)]``. docs/wire.md
describes both, what we accept and where we are stricter than Go.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from collections.abc import Sequence
from itertools import accumulate

from crypto.keyring import OVERHEAD as CRYPTO_OVERHEAD
from crypto.keyring import DecryptError, Keyring
from gossip import limits
from gossip.errors import DecodeError
from gossip.wire.memo import ByteMemo
from gossip.wire.messagecodec import (
    STREAM_TYPES,
    decode_packet_part,
    decode_stream_body,
    decompress,
    stream_body,
    stream_head_end,
)
from gossip.wire.messagecodec import decode as decode
from gossip.wire.messagecodec import encode as encode
from gossip.wire.messagecodec import encode_accusation as encode_accusation
from gossip.wire.messagecodec import encode_compress as encode_compress
from gossip.wire.messagecodec import encode_err as encode_err
from gossip.wire.messagecodec import encode_node_state as encode_node_state
from gossip.wire.messagecodec import encode_push_pull_body as encode_push_pull_body
from gossip.wire.messagecodec import encode_push_pull_joined as encode_push_pull_joined
from gossip.wire.messages import Message, MessageType

COMPOUND_OVERHEAD = 2
"""Bytes a compound adds once: type byte + part count."""
COMPOUND_PART_OVERHEAD = 2
"""Bytes a compound adds per part: its u16 length."""
CRC_OVERHEAD = 5
"""Type byte + CRC32 of the hasCrc frame."""
ENCRYPT_OVERHEAD = CRYPTO_OVERHEAD
"""Bytes AES-GCM (version 1) adds to a packet: version + nonce + tag (29)."""
STREAM_ENCRYPT_OVERHEAD = 5 + CRYPTO_OVERHEAD
"""Bytes the encrypted stream frame adds: type + u32 length + version + nonce + tag."""

MAX_COMPOUND_PARTS = 255
SERF_SAFE_COMPOUND_PARTS = 127
"""memberlist 0.2.2 misreads the part count of a compound of 128 parts or more."""
MAX_PART_SIZE = 0xFFFF
MAX_ENCRYPTED_STREAM = 20 * 1024 * 1024
"""memberlist's maxPushStateBytes: the largest encrypted stream accepted."""
DECOMPRESS_LIMIT = 40 * 1024 * 1024
"""How many bytes a stream may inflate to (newer memberlist's cap; 0.2.2 has none)."""
UDP_DECOMPRESS_LIMIT = limits.UDP_DECOMPRESS_MAX
"""How many bytes all compress layers of one datagram may inflate to (gossip/limits.py)."""
MAX_NESTING = 8
"""How deep compound/compress may nest inside one packet (Go has no limit)."""

_U32 = 0xFFFFFFFF

_T_COMPOUND = int(MessageType.COMPOUND)
_T_COMPRESS = int(MessageType.COMPRESS)
_T_ENCRYPT = int(MessageType.ENCRYPT)
_T_CRC = int(MessageType.HAS_CRC)
_T_LABEL = int(MessageType.HAS_LABEL)

_NESTED = frozenset((_T_COMPOUND, _T_COMPRESS))
"""Packet layers ``_walk`` recurses into."""

ENCRYPTED_BUT_NOT_CONFIGURED = "Remote state is encrypted and encryption is not configured"
NOT_ENCRYPTED_BUT_REQUIRED = "Encryption is configured but remote state is not encrypted"

_PART_LENS = [struct.Struct(f">{n}H") for n in range(MAX_COMPOUND_PARTS + 1)]
"""A compound's u16 part lengths, by part count (precompiled: every packet uses one)."""


# ------------------------------------------------------------------ packet encoding


def encode_compound(parts: Sequence[bytes]) -> bytes:
    """``[7][n][n x u16 BE length][parts...]``.

    ValueError for 0 or > 255 parts, an empty part (crashes serf 0.9.4) or a part
    longer than 65535 bytes.
    """
    n = len(parts)
    if n == 0:
        raise ValueError("compound needs at least one part")
    if n > MAX_COMPOUND_PARTS:
        raise ValueError(f"compound of {n} parts (max {MAX_COMPOUND_PARTS})")
    lens = list(map(len, parts))
    if 0 in lens:
        raise ValueError("empty compound part (crashes serf 0.9.4)")
    if max(lens) > MAX_PART_SIZE:
        raise ValueError(f"compound part of {max(lens)} bytes (max {MAX_PART_SIZE})")
    return b"".join((bytes((_T_COMPOUND, n)), _PART_LENS[n].pack(*lens), *parts))


def encode_crc(buf: bytes) -> bytes:
    """``[12][crc32 BE][buf]``."""
    return b"\x0c" + (zlib.crc32(buf) & _U32).to_bytes(4, "big") + buf


def encode_packet(
    parts: Sequence[bytes], *, compress: bool, crc: bool, keyring: Keyring | None
) -> bytes:
    """One UDP datagram: one part bare, several as a compound; LZW only if shorter;
    CRC frame if ``crc``; sealed (AAD empty) if ``keyring`` has a primary key."""
    if not parts:
        raise ValueError("a packet needs at least one message")
    global _last_packet
    sealed = keyring is not None and keyring.primary is not None
    if not sealed:
        key = (tuple(parts), compress, crc)
        last = _last_packet
        if last is not None and last[0] == key:
            return last[1]
    if len(parts) == 1:
        buf = parts[0]
        if not buf:
            raise ValueError("empty message")
    else:
        buf = encode_compound(parts)
    inner = buf
    compressed = False
    if compress:
        c = encode_compress(buf)
        if len(c) < len(buf):
            buf = c
            compressed = True
    if crc:
        buf = encode_crc(buf)
    if sealed:
        assert keyring is not None
        return keyring.seal(buf, b"")
    _last_packet = (key, buf)
    if _preseed:
        _preseed_decode(buf, parts, len(inner) if compressed else 0)
    return buf


_last_packet: tuple[tuple[tuple[bytes, ...], bool, bool], bytes] | None = None
"""The last unencrypted datagram ``encode_packet`` built, with its arguments. A gossip
round sends the same news to ``gossip_nodes`` peers one after another, and when all
of a node's queued news fits in one packet (the usual case) the parts are the very
same: 41 % of the datagrams of a 3,000-node crash storm repeat the one before, and
each repeat would compress the same bytes again. (A sealed datagram has a fresh nonce
every time: never reused.)"""


# ------------------------------------------------------------------ packet decoding


def _strip_label(buf: bytes) -> tuple[bytes, bytes]:
    """``[244][len 1..255][label][rest]`` -> (rest, label). memberlist >= 0.3.0 only."""
    if len(buf) < 2:
        raise DecodeError("label header truncated")
    ln = buf[1]
    if ln == 0:
        raise DecodeError("label header cannot be empty when present")
    if len(buf) < 2 + ln:
        raise DecodeError("label header truncated")
    return buf[2 + ln :], buf[2 : 2 + ln]


_CACHE_MAX_BYTES = 2048  # only small buffers are memoised: bounds the part memo's memory
_MEMO_ENTRY_OVERHEAD = 128
"""Bytes counted per decoded message of a memoised datagram (the value objects)."""
_PART_CACHE_SIZE = 4096
"""Decoded parts kept by one process (≈ 1.5 MiB at most): an agent sees few repeats
beyond gossip of the same news, so a small memo is enough; ``set_part_cache_size``
lets a simulator of thousands of nodes in one process keep more."""

# The part memo: a dict (looked up by C-level passes over a packet's parts, one
# ``dict.get`` each; ``functools.lru_cache`` built a key tuple and relinked its list
# on every hit) and its keys in insertion order, the oldest forgotten first.
_parts: dict[bytes, Message] = {}
_parts_order: deque[bytes] = deque()
_parts_max = _PART_CACHE_SIZE


def set_part_cache_size(entries: int) -> None:
    """Resize the decoded-part memo (empties it). The simulator, which decodes every
    node's copy of a failure storm's suspects in one process, uses 16,384 (≈ 6 MiB)."""
    global _parts_max
    _parts_max = max(0, entries)
    _parts.clear()
    _parts_order.clear()


def part_cache_size() -> int:
    """How many decoded parts the memo keeps at most (``set_part_cache_size``)."""
    return _parts_max


def _decode_part_cached(buf: bytes) -> Message:
    """``decode_packet_part(buf)``, memoised (errors are not)."""
    m = _parts.get(buf)
    if m is None:
        m = decode_packet_part(buf)
        if _parts_max:
            if len(_parts_order) >= _parts_max:
                del _parts[_parts_order.popleft()]
            _parts[buf] = m
            _parts_order.append(buf)
    return m


def _part(buf: bytes) -> Message:
    if len(buf) <= _CACHE_MAX_BYTES:
        return _decode_part_cached(buf)
    return decode_packet_part(buf)


def _walk(
    buf: bytes, depth: int, budget: list[int], msgs: list[Message], errs: list[str]
) -> None:
    """Recursively split compound/compress; decode leaves. Part errors go to ``errs``
    (Go logs them and goes on with the other parts)."""
    t = buf[0]
    if t == _T_COMPOUND:
        if depth >= MAX_NESTING:
            errs.append("compound nested too deeply")
            return
        if len(buf) < 2:
            errs.append("compound truncated")
            return
        n = buf[1]
        if n == 0:
            errs.append("compound with no parts")
            return
        off = 2 + 2 * n
        if len(buf) < off:
            errs.append("compound truncated")
            return
        size = len(buf)
        lens = _PART_LENS[n].unpack_from(buf, 2)
        if off + sum(lens) <= size and 0 not in lens and max(lens) <= _CACHE_MAX_BYTES:
            # The usual compound (every gossip packet): all parts present, none empty,
            # all small. Sliced and decoded by C-level passes; any part that is not a
            # plain message (a nested compound/compress, a bad one) raises, and the
            # loop below then does it part by part, so the outcome is the same.
            bounds = list(accumulate(lens, initial=off))
            parts = list(map(buf.__getitem__, map(slice, bounds, bounds[1:])))
            got = list(map(_parts.get, parts))
            if all(got):  # every part memoised (messages are always true)
                msgs += got  # type: ignore[arg-type]
                return
            try:
                msgs += [m if m is not None else _decode_part_cached(p) for m, p in zip(got, parts, strict=True)]
                return
            except DecodeError:
                pass
        for ln in lens:
            if off + ln > size:
                errs.append("compound part truncated")
                return
            if ln == 0:
                errs.append("empty compound part")
                continue
            part = buf[off : off + ln]
            off += ln
            if part[0] in _NESTED:
                _walk(part, depth + 1, budget, msgs, errs)
                continue
            # A leaf, decoded here rather than by a recursive call (every gossip
            # packet is a compound of a dozen or so small messages).
            try:
                msgs.append(_decode_part_cached(part) if ln <= _CACHE_MAX_BYTES else decode_packet_part(part))
            except DecodeError as e:
                errs.append(str(e))
        return
    if t == _T_COMPRESS:
        if depth >= MAX_NESTING:
            errs.append("compress nested too deeply")
            return
        try:
            inner = decompress(buf, budget[0])
        except DecodeError as e:
            errs.append(str(e))
            return
        budget[0] -= len(inner)
        _walk(inner, depth + 1, budget, msgs, errs)
        return
    try:
        msgs.append(_part(buf))
    except DecodeError as e:
        errs.append(str(e))


_Decoded = tuple[tuple[Message, ...], tuple[str, ...]]


def _decode_plain(buf: bytes) -> tuple[tuple[Message, ...], tuple[str, ...], int]:
    """Decrypted packet -> (messages, part errors, bytes inflated). No messages means
    the packet failed."""
    if not buf:
        return (), ("empty packet",), 0
    if buf[0] == _T_CRC and len(buf) >= CRC_OVERHEAD:
        want = int.from_bytes(buf[1:5], "big")
        buf = buf[5:]
        if zlib.crc32(buf) & _U32 != want:
            return (), ("bad CRC",), 0
        if not buf:
            return (), ("empty payload inside CRC frame",), 0
    msgs: list[Message] = []
    errs: list[str] = []
    limit = UDP_DECOMPRESS_LIMIT
    budget = [limit]
    _walk(buf, 0, budget, msgs, errs)
    return tuple(msgs), tuple(errs), limit - budget[0]


_plain_memo: ByteMemo[_Decoded] = ByteMemo(limits.DECODE_MEMO_BYTES)
"""Decoded small datagrams, weighed by what their messages can hold (the datagram plus
everything it inflated to): one per process, so a simulator's thousands of cores share
the decode of one news item, and bounded in bytes (issue 18, item 3)."""


_preseed = False
"""Whether ``encode_packet`` files what its datagram decodes to in ``_plain_memo``
(``set_preseed_decodes``; the simulator only)."""


def set_preseed_decodes(enabled: bool) -> None:
    """Let ``encode_packet`` memoise the decode of each unencrypted datagram it builds,
    from the parts it was given, so the receiver's ``decode_packet`` is one memo hit.

    For the simulator, where the same process sends and receives every datagram (a
    gossip datagram's CRC check, LZW inflate and part slicing were ~7 % of a
    10,000-node crash storm). The entry is what ``_decode_plain`` of those bytes gives
    (the codec's round trip: tests/unit/test_hotpaths.py compares the two); any case
    that is not the plain one (a big or nested part, a part that does not decode, a
    label) is left to the receiver. Off by default: an agent never decodes what it
    sent, so it would only fill its memo.
    """
    global _preseed
    _preseed = enabled


def _preseed_decode(datagram: bytes, parts: Sequence[bytes], inflated: int) -> None:
    """File ``datagram`` (parts -> compound if several -> LZW if ``inflated`` -> CRC
    if framed so) with its decode, as ``decode_packet`` would have memoised it."""
    if len(datagram) > _CACHE_MAX_BYTES or datagram[0] == _T_LABEL or inflated > UDP_DECOMPRESS_LIMIT:
        return
    for p in parts:
        # Exactly the parts ``_walk`` decodes through the part memo, as leaves.
        if len(p) > _CACHE_MAX_BYTES or p[0] in _NESTED:
            return
    got = list(map(_parts.get, parts))
    try:
        msgs = tuple([m if m is not None else _decode_part_cached(p) for m, p in zip(got, parts, strict=True)])
    except DecodeError:
        return  # the receiver records the error as before
    _plain_memo.put(datagram, (msgs, ()), len(datagram) + inflated + _MEMO_ENTRY_OVERHEAD * (len(msgs) + 1))


def set_packet_memo_bytes(max_bytes: int) -> None:
    """Bound the decoded-datagram memo to ``max_bytes`` of weight (empties it).

    The default (``limits.DECODE_MEMO_BYTES``, 8 MiB) is for the simulator, where one
    node's datagram reaches many cores of the same process. An agent sees one copy of
    each datagram (pings carry fresh sequence numbers, gossip packets differ per
    sender): 2 hits in 203 lookups over 90 s in a 100-member cluster, while the memo
    fills towards its bound at ~2 entries a second, i.e. ~10 MiB of heap after a few
    hours. ``agent.__main__`` makes it small.
    """
    global _plain_memo
    _plain_memo = ByteMemo(max(0, max_bytes))


def clear_caches() -> None:
    """Forget memoised decodes (tests; long-running processes never need it)."""
    _parts.clear()
    _parts_order.clear()
    _plain_memo.clear()


def decode_packet(
    data: bytes,
    keyring: Keyring | None,
    *,
    require_encryption: bool = True,
    errors: list[DecodeError] | None = None,
) -> list[Message]:
    """One UDP datagram -> its messages, flattened in order.

    Label header (skipped; used as AAD) -> decrypt if ``keyring`` has keys (plaintext
    fallback only if not ``require_encryption``) -> CRC check -> compress/compound,
    recursively. Like Go, a bad part inside a compound is skipped and the others are
    returned (its error is appended to ``errors`` if given); if no message decodes
    at all, :class:`DecodeError` is raised. Identical small buffers are decoded once
    (bounded memo); the returned messages are immutable and shared.
    """
    buf = data if type(data) is bytes else bytes(data)
    if not buf:
        raise DecodeError("empty packet")
    label = b""
    if buf[0] == _T_LABEL:
        buf, label = _strip_label(buf)
    if keyring is not None and keyring.primary is not None:
        try:
            buf = keyring.open(buf, label)
        except DecryptError as e:
            if require_encryption:
                raise DecodeError(f"decrypt packet failed: {e}") from None
    if len(buf) <= _CACHE_MAX_BYTES:
        decoded = _plain_memo.get(buf)
        if decoded is None:
            msgs, errs, inflated = _decode_plain(buf)
            decoded = (msgs, errs)
            _plain_memo.put(buf, decoded, len(buf) + inflated + _MEMO_ENTRY_OVERHEAD * (len(msgs) + 1))
        msgs, errs = decoded
    else:
        msgs, errs, _ = _decode_plain(buf)
    if not msgs:
        raise DecodeError(errs[0] if errs else "no message in packet")
    if errs and errors is not None:
        errors.extend(DecodeError(e) for e in errs)
    return list(msgs)


# ------------------------------------------------------------------ streams


def encode_stream(msg: Message, *, compress: bool, keyring: Keyring | None) -> bytes:
    """A whole TCP stream message: PushPull, Ping, Ack, UserMsg (TCP form) or Err.

    Compression wraps always when enabled (like memberlist, even if longer); with a
    primary key the result is framed ``[10][u32 BE L][seal(plain, aad=first 5 bytes)]``.
    """
    return frame_stream(stream_body(msg), compress=compress, keyring=keyring)


def frame_stream(buf: bytes, *, compress: bool, keyring: Keyring | None) -> bytes:
    """The stream pipeline for an already encoded message body (e.g. from
    :func:`encode_push_pull_body`): compress if enabled, then encrypt if keyed."""
    if compress:
        buf = encode_compress(buf)
    if keyring is not None and keyring.primary is not None:
        header = b"\x0a" + (len(buf) + CRYPTO_OVERHEAD).to_bytes(4, "big")
        buf = header + keyring.seal(buf, header)
    return buf


def decode_stream(
    data: bytes, keyring: Keyring | None, *, require_encryption: bool = True
) -> Message:
    """One complete TCP stream message (label? -> encrypt? -> compress? -> body).

    Bytes after the message are ignored. A plaintext stream at a node with keys is
    refused when ``require_encryption`` (memberlist's GossipVerifyIncoming).
    """
    buf = data if type(data) is bytes else bytes(data)
    if not buf:
        raise DecodeError("empty stream")
    label = b""
    if buf[0] == _T_LABEL:
        buf, label = _strip_label(buf)
        if not buf:
            raise DecodeError("empty stream after label")
    encrypted_ok = keyring is not None and keyring.primary is not None
    if buf[0] == _T_ENCRYPT:
        if keyring is None or not encrypted_ok:
            raise DecodeError(ENCRYPTED_BUT_NOT_CONFIGURED)
        if len(buf) < 5:
            raise DecodeError("encrypted stream header truncated")
        size = int.from_bytes(buf[1:5], "big")
        if size > MAX_ENCRYPTED_STREAM:
            raise DecodeError(f"encrypted stream of {size} bytes exceeds the limit")
        if len(buf) < 5 + size:
            raise DecodeError("encrypted stream truncated")
        try:
            buf = keyring.open(buf[5 : 5 + size], buf[:5] + label)
        except DecryptError as e:
            raise DecodeError(f"decrypt stream failed: {e}") from None
        if not buf:
            raise DecodeError("empty decrypted stream")
    elif encrypted_ok and require_encryption:
        raise DecodeError(NOT_ENCRYPTED_BUT_REQUIRED)
    if buf[0] == _T_COMPRESS:
        buf = decompress(buf, DECOMPRESS_LIMIT)
    return decode_stream_body(buf)


def stream_message_size(buf: bytes) -> int | None:
    """Length of the first complete stream message at the start of ``buf``.

    None if more bytes are needed; :class:`DecodeError` if the bytes already cannot
    be a valid stream. Looks at the outer layer only (an encrypted stream's size
    comes from its length field; its content is checked by :func:`decode_stream`).
    """
    end = stream_message_end(buf)
    return end if end is not None and len(buf) >= end else None


def stream_message_end(buf: bytes | bytearray) -> int | None:
    """Where the first stream message starting at ``buf`` ends, as soon as that is known:
    from the length field of an encrypted stream, else once the message's head is
    complete (its raw tail, e.g. a push/pull's user state, need not be there yet). None
    if more bytes are needed to tell; :class:`DecodeError` as :func:`stream_message_size`.
    A reader that knows the end reads the rest without looking at the bytes again.
    """
    n = len(buf)
    if n == 0:
        return None
    off = 0
    t = buf[0]
    if t == _T_LABEL:
        if n < 2:
            return None
        if buf[1] == 0:
            raise DecodeError("label header cannot be empty when present")
        off = 2 + buf[1]
        if n <= off:
            return None
        t = buf[off]
    if t == _T_ENCRYPT:
        if n < off + 5:
            return None
        size = int.from_bytes(buf[off + 1 : off + 5], "big")
        if size > MAX_ENCRYPTED_STREAM:
            raise DecodeError(f"encrypted stream of {size} bytes exceeds the limit")
        if size < CRYPTO_OVERHEAD:
            raise DecodeError(f"encrypted stream of {size} bytes is too short")
        return off + 5 + size
    if t not in STREAM_TYPES and t != _T_COMPRESS:
        raise DecodeError(f"message type {t} does not start a stream")
    return stream_head_end(buf if type(buf) is bytes else bytes(buf), off + 1, t)
