"""The native LZW accelerator (gossip/wire/_lzw.c) against the pure-Python reference.

gossip/wire/lzw.py's ``_compress`` / ``_decompress`` are the reference (checked against Go in
test_lzw.py); the extension must give the same bytes and the same errors on any input.
Skipped when the extension is not built, except ``test_native_extension_is_required``,
which fails then if ``OVERLAY_REQUIRE_NATIVE=1`` (set by ``make test``).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.errors import DecodeError
from gossip.wire import lzw
from tests.unit.test_lzw import GO_VECTORS, SERF_BUF, SERF_PLAIN

needs_native = pytest.mark.skipif(
    not lzw.native_available(),
    reason="gossip.wire._lzw not built (no C compiler at install time?): pure Python only",
)

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_native_extension_is_required() -> None:
    if os.environ.get("OVERLAY_REQUIRE_NATIVE") != "1":
        pytest.skip("OVERLAY_REQUIRE_NATIVE=1 not set (make test sets it)")
    assert lzw.native_available(), (
        "OVERLAY_REQUIRE_NATIVE=1 but gossip.wire._lzw does not import: "
        "rebuild with `pip install -e .` (needs gcc and Python headers)"
    )
    assert lzw.native_in_use()


@pytest.fixture
def restore_default() -> Iterator[None]:
    try:
        yield
    finally:
        lzw.use_native(True)


@needs_native
def test_use_native_switches_the_public_functions(restore_default: None) -> None:
    assert lzw.native_in_use()
    assert lzw.use_native(False) is False and not lzw.native_in_use()
    assert lzw.compress(SERF_PLAIN) == SERF_BUF
    assert lzw.use_native(True) is True and lzw.native_in_use()
    assert lzw.compress(SERF_PLAIN) == SERF_BUF


def _native_compress(data: bytes) -> bytes:
    assert lzw._native_compress is not None
    return lzw._native_compress(data)


def _outcome(fn: object, data: bytes, limit: int) -> tuple[str, bytes | str]:
    assert callable(fn)
    try:
        return ("ok", fn(data, limit))
    except DecodeError as exc:
        return ("error", str(exc))


def _same_decode(data: bytes, limit: int = 1 << 20) -> tuple[str, bytes | str]:
    pure = _outcome(lzw._decompress, data, limit)
    native = _outcome(lzw._decompress_native, data, limit)
    assert native == pure
    return pure


# ------------------------------------------------------------------ inputs


def _runs(parts: list[tuple[int, int]]) -> bytes:
    return b"".join(bytes((b,)) * n for b, n in parts)


def _random(seed: int, size: int, alphabet: int) -> bytes:
    rng = random.Random(seed)
    if alphabet == 256:
        return rng.randbytes(size)
    return bytes(rng.choices(range(alphabet), k=size))


inputs = st.one_of(
    st.binary(max_size=3000),
    # Long enough to fill the 4096-code table (clear codes, width resets) many times.
    st.builds(
        _random,
        st.integers(0, 2**32),
        st.integers(0, 40_000),
        st.sampled_from([1, 2, 3, 16, 64, 256]),
    ),
    st.lists(st.tuples(st.integers(0, 255), st.integers(1, 5000)), max_size=20).map(_runs),
)


# ------------------------------------------------------------------ compress


@needs_native
@PROPS
@given(inputs)
def test_native_compress_equals_pure(data: bytes) -> None:
    assert _native_compress(data) == lzw._compress(data)


@needs_native
@pytest.mark.parametrize(("seed", "size", "alphabet", "length", "digest"), GO_VECTORS)
def test_native_compress_matches_go_1_19_output(
    seed: int, size: int, alphabet: int, length: int, digest: str
) -> None:
    rng = random.Random(seed)
    data = bytes(rng.randrange(alphabet) for _ in range(size))
    out = _native_compress(data)
    assert (len(out), hashlib.sha256(out).hexdigest()) == (length, digest)
    assert lzw._decompress_native(out, lzw.DEFAULT_LIMIT) == data


@needs_native
def test_native_serf_vector_and_empty_input() -> None:
    assert _native_compress(SERF_PLAIN) == SERF_BUF
    assert lzw._decompress_native(SERF_BUF, 100) == SERF_PLAIN
    assert _native_compress(b"") == (256 | 257 << 9).to_bytes(3, "little")
    assert lzw._decompress_native(_native_compress(b""), 0) == b""


@needs_native
def test_native_accepts_any_bytes_like() -> None:
    data = b"alive sb001 192.0.2.2 " * 300
    packed = lzw._compress(data)
    for form in (bytearray(data), memoryview(data)):
        assert _native_compress(form) == packed  # type: ignore[arg-type]
    assert lzw._decompress_native(memoryview(packed), 1 << 20) == data  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _native_compress("text")  # type: ignore[arg-type]


# ------------------------------------------------------------------ decompress


@needs_native
@PROPS
@given(inputs)
def test_native_decompress_inverts_pure_compress(data: bytes) -> None:
    packed = lzw._compress(data)
    assert lzw._decompress_native(packed, len(data)) == data
    if data:
        with pytest.raises(DecodeError, match=f"exceeds {len(data) - 1} bytes"):
            lzw._decompress_native(packed, len(data) - 1)


@needs_native
@PROPS
@given(st.binary(max_size=600), st.integers(-1, 5000))
def test_garbage_gives_the_same_outcome(data: bytes, limit: int) -> None:
    _same_decode(data, limit)


@needs_native
@PROPS
@given(
    st.binary(min_size=1, max_size=2000),
    st.lists(
        st.tuples(st.sampled_from(["flip", "insert", "delete", "cut"]), st.integers(0, 2**31)),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 3000),
)
def test_mutated_streams_give_the_same_outcome(
    data: bytes, edits: list[tuple[str, int]], limit: int
) -> None:
    buf = bytearray(lzw._compress(data))
    for op, where in edits:
        if not buf:
            break
        i = where % len(buf)
        if op == "flip":
            buf[i] ^= 1 << (where >> 20) % 8
        elif op == "insert":
            buf.insert(i, where >> 8 & 0xFF)
        elif op == "delete":
            del buf[i]
        else:
            del buf[i:]
    _same_decode(bytes(buf), limit)


@needs_native
def test_known_errors_have_the_same_messages() -> None:
    assert _same_decode(b"") == ("error", "lzw: unexpected end of data (no EOF code)")
    assert _same_decode((256 | 300 << 9).to_bytes(3, "little"))[0] == "error"
    assert _same_decode((256 | 300 << 9).to_bytes(3, "little"))[1] == "lzw: invalid code"
    assert _same_decode(lzw._compress(b"\x00" * 1000), 999) == (
        "error",
        "lzw: decompressed data exceeds 999 bytes",
    )
    old = (ord("a") | 257 << 9).to_bytes(3, "little")  # no leading clear (Go < 1.17)
    assert _same_decode(old) == ("ok", b"a")
    assert _same_decode(SERF_BUF + b"garbage") == ("ok", SERF_PLAIN)
    # A huge limit is clamped, not an OverflowError.
    assert lzw._decompress_native(SERF_BUF, 1 << 80) == SERF_PLAIN
