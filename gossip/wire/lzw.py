"""Go ``compress/lzw`` (LSB order, literal width 8) in pure Python.

Owns: the byte-exact LZW codec memberlist uses inside ``compress`` messages
(type 9, ``Algo: 0``). Does not: know about msgpack or message framing
(``messagecodec.py``, ``codec.py``).

Byte-exact with Go >= 1.17 (serf 0.9.4 was built with Go 1.19): the encoder emits a
leading clear code, codes start 9 bits wide, grow to at most 12 bits, and the encoder
emits a clear code and resets its table when the next code would be 4095.
The decoder accepts streams with or without the leading clear code, requires the
end-of-data code (like Go, which returns ErrUnexpectedEOF otherwise) and enforces an
output size limit (memberlist 0.2.2 has none; newer memberlist caps it at 40 MiB).
Reference: Go ``compress/lzw``; memberlist 0.2.2 ``util.go`` (compressPayload); docs/wire.md.

Native accelerator: when the optional C extension ``gossip.wire._lzw`` (gossip/wire/_lzw.c,
built by ``pip install -e .`` where a compiler is present) imports, ``compress`` and
``decompress`` use it: the same algorithm, byte-identical output and the same errors
(tests/unit/test_lzw_native.py), 30-40x faster. The pure-Python ``_compress`` and
``_decompress`` below stay the reference and the fallback; ``use_native(False)``
forces them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

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
            out = _compress_impl(data)
            _recent_big[bytes(data)] = out
            if len(_recent_big) > _RECENT_BIG:
                del _recent_big[next(iter(_recent_big))]
        return out
    return _compress_impl(data)


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
    return _decompress_impl(data, limit)


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


# ------------------------------------------------------------ native accelerator

_native_compress: Callable[[bytes], bytes] | None
_native_decompress: Callable[[bytes, int], bytes] | None
try:
    from gossip.wire import _lzw
except ImportError:  # not built (no compiler at install time): pure Python only
    _native_compress = _native_decompress = None
else:
    _native_compress = _lzw.compress
    _native_decompress = _lzw.decompress


def _decompress_native(data: bytes, limit: int) -> bytes:
    # The extension raises ValueError with lzw.py's messages; the codec's contract is
    # DecodeError. The limit is clamped to what C's Py_ssize_t holds (no output can
    # reach it anyway).
    assert _native_decompress is not None
    try:
        return _native_decompress(data, min(limit, sys.maxsize))
    except ValueError as exc:
        raise DecodeError(str(exc)) from None


_compress_impl: Callable[[bytes], bytes] = _compress
_decompress_impl: Callable[[bytes, int], bytes] = _decompress


def native_available() -> bool:
    """True if the C extension ``gossip.wire._lzw`` was built and imports."""
    return _native_compress is not None


def use_native(enabled: bool) -> bool:
    """Use the C extension (if available) or force the pure-Python codec; returns
    whether the native codec is now in use. It is on by default when available."""
    global _compress_impl, _decompress_impl
    _recent_big.clear()  # so a test of one codec never sees the other's output
    if enabled and _native_compress is not None:
        _compress_impl = _native_compress
        _decompress_impl = _decompress_native
        return True
    _compress_impl = _compress
    _decompress_impl = _decompress
    return False


def native_in_use() -> bool:
    """True if ``compress`` / ``decompress`` currently run the C extension."""
    return _compress_impl is not _compress


use_native(True)
