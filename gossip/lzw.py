"""Go ``compress/lzw`` (LSB order, literal width 8) in pure Python.

Owns: the byte-exact LZW codec memberlist uses inside ``compress`` messages
(type 9, ``Algo: 0``). Does not: know about msgpack or message framing (see
``wire.py``).

Byte-exact with Go >= 1.17 (serf 0.9.4 was built with Go 1.19): the encoder emits a
leading clear code, codes start 9 bits wide, grow to at most 12 bits, and the encoder
emits a clear code and resets its table when the next code would be 4095.
The decoder accepts streams with or without the leading clear code, requires the
end-of-data code (like Go, which returns ErrUnexpectedEOF otherwise) and enforces an
output size limit (memberlist 0.2.2 has none; newer memberlist caps it at 40 MiB).
Reference: shared/reference/memberlist.md §1.8.
"""

from __future__ import annotations

from gossip.errors import DecodeError

_CLEAR = 256
_EOF = 257
_MAX_CODE = 4095  # 1<<12 - 1
_MAX_WIDTH = 12

DEFAULT_LIMIT = 40 * 1024 * 1024

# Decoder table start: the 256 literals, then placeholders for clear and end-of-data.
_BASE: list[bytes] = [bytes((i,)) for i in range(256)] + [b"", b""]


def compress(data: bytes) -> bytes:
    """Compress like Go's ``lzw.NewWriter(w, lzw.LSB, 8)`` + one ``Write`` + ``Close``.

    The output for a few recent large inputs is memoised by content: a node sends
    the same full push/pull state to several peers while its table does not change
    (and a simulator's converged nodes send identical states)."""
    if len(data) >= _BIG_INPUT:
        out = _recent_big.get(data)
        if out is None:
            out = _compress(data)
            _recent_big[bytes(data)] = out
            if len(_recent_big) > _RECENT_BIG:
                del _recent_big[next(iter(_recent_big))]
    else:
        out = _compress(data)
    if _memo_entries:
        _remember(out, data)
    return out


_BIG_INPUT = 16 * 1024
_RECENT_BIG = 8
_recent_big: dict[bytes, bytes] = {}


def _compress(data: bytes) -> bytes:
    out = bytearray()
    bits = 0  # pending output bits, LSB first
    nbits = 0
    width = 9
    hi = _EOF  # last assigned code
    overflow = 512
    # (prefix code << 8 | next byte) -> code << 8. Codes are kept shifted left by 8
    # so the per-byte step is one OR and one dict lookup: this loop is the hot path
    # of every compressed gossip packet (~0.1 µs per input byte in CPython).
    table: dict[int, int] = {}

    # Leading clear code (Go >= 1.17 emits it unconditionally).
    bits |= _CLEAR << nbits
    nbits += width
    if not data:
        # Go's Close on an empty stream: clear (already written) then EOF.
        bits |= _EOF << nbits
        nbits += width
        while nbits > 0:
            out.append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
        return bytes(out)

    it = iter(data)
    code = next(it) << 8
    get = table.get
    for literal in it:
        key = code | literal
        nxt = get(key)
        if nxt is not None:
            code = nxt
            continue
        # Emit the current code at the current width.
        bits |= (code >> 8) << nbits
        nbits += width
        while nbits >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
        code = literal << 8
        # incHi: grow the width when the counter reaches 2**width; at 4095 send a
        # clear code (at the current, 12-bit width) and reset the table.
        hi += 1
        if hi == overflow:
            width += 1
            overflow <<= 1
        if hi == _MAX_CODE:
            bits |= _CLEAR << nbits
            nbits += width
            while nbits >= 8:
                out.append(bits & 0xFF)
                bits >>= 8
                nbits -= 8
            width = 9
            hi = _EOF
            overflow = 512
            table.clear()
            continue
        table[key] = hi << 8

    # Close: flush the saved code, bump hi (may widen or clear), then EOF.
    bits |= (code >> 8) << nbits
    nbits += width
    hi += 1
    if hi == overflow:
        width += 1
        overflow <<= 1
    if hi == _MAX_CODE:
        bits |= _CLEAR << nbits
        nbits += width
        width = 9
    bits |= _EOF << nbits
    nbits += width
    while nbits > 0:
        out.append(bits & 0xFF)
        bits >>= 8
        nbits -= 8
    return bytes(out)


def decompress(data: bytes, limit: int = DEFAULT_LIMIT) -> bytes:
    """Decompress a Go LSB/8 LZW stream; :class:`DecodeError` if corrupt or > ``limit``.

    Trailing bytes after the end-of-data code are ignored (as Go's reader does).
    """
    if _memo_entries:
        plain = _memo.get(bytes(data))
        if plain is not None and len(plain) <= limit:
            return plain
    return _decompress(data, limit)


def _decompress(data: bytes, limit: int) -> bytes:
    # table[code] is the expansion of code; 256/257 are placeholders.
    table = _BASE[:]
    out: list[bytes] = []
    append = out.append
    total = 0
    width = 9
    mask = 511
    hi = _EOF
    overflow = 512
    last = -1  # -1 = no previous code (after a clear, or table full)
    bits = 0
    nbits = 0
    pos = 0
    n = len(data)
    while True:
        while nbits < width:
            if pos >= n:
                raise DecodeError("lzw: unexpected end of data (no EOF code)")
            bits |= data[pos] << nbits
            pos += 1
            nbits += 8
        code = bits & mask
        bits >>= width
        nbits -= width

        if _EOF < code < hi:
            # The common case: a defined code (while last >= 0, len(table) == hi).
            entry = table[code]
        elif code < _CLEAR:
            entry = table[code]
        elif code == _CLEAR:
            width = 9
            mask = 511
            hi = _EOF
            overflow = 512
            last = -1
            del table[258:]
            continue
        elif code == _EOF:
            break
        elif code <= hi:
            if code == hi and last >= 0:
                # KwKwK case: the code being defined right now.
                prev = table[last]
                entry = prev + prev[:1]
            elif code < len(table):
                entry = table[code]
            else:
                raise DecodeError("lzw: invalid code")
        else:
            raise DecodeError("lzw: invalid code")

        total += len(entry)
        if total > limit:
            raise DecodeError(f"lzw: decompressed data exceeds {limit} bytes")
        append(entry)
        if last >= 0:
            table.append(table[last] + entry[:1])
        last = code
        hi += 1
        if hi >= overflow:
            if width == _MAX_WIDTH:
                # Table full: stop defining codes until the next clear (Go semantics).
                last = -1
                hi -= 1
            else:
                width += 1
                mask = (1 << width) - 1
                overflow <<= 1
    return b"".join(out)


# ------------------------------------------------------------------ memo (opt-in)
#
# A simulator runs every node in one process: each compressed datagram or stream is
# decompressed by a receiver moments after a sender compressed it. With the memo on,
# ``decompress`` returns the remembered input for bytes that ``compress`` produced
# (LZW is lossless, so this is exactly what decoding them yields) instead of
# decoding them again. Off by default: an agent never receives its own packets.

_memo: dict[bytes, bytes] = {}
_memo_entries = 0
_memo_max_bytes = 0
_memo_bytes = 0


def set_memo(entries: int, max_bytes: int = 64 * 1024 * 1024) -> None:
    """Remember the last ``entries`` compressions (at most ``max_bytes`` of input and
    output together) so decompressing their output is a lookup; 0 turns it off."""
    global _memo_entries, _memo_max_bytes, _memo_bytes
    if entries < 0 or max_bytes < 0:
        raise ValueError("memo sizes must be >= 0")
    _memo_entries = entries
    _memo_max_bytes = max_bytes
    _memo.clear()
    _memo_bytes = 0


def _remember(packed: bytes, plain: bytes) -> None:
    global _memo_bytes
    size = len(packed) + len(plain)
    if size > _memo_max_bytes:
        return
    if packed in _memo:
        _memo[packed] = _memo.pop(packed)  # used again: now the newest
        return
    _memo[packed] = plain
    _memo_bytes += size
    while len(_memo) > _memo_entries or _memo_bytes > _memo_max_bytes:
        oldest = next(iter(_memo))  # insertion order: first in, first out
        _memo_bytes -= len(oldest) + len(_memo.pop(oldest))
