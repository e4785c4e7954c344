"""Go-compatible LZW (compress/lzw, LSB, literal width 8, leading clear code).

Every test runs twice: through the pure-Python reference and through the native
accelerator (skipped if not built; test_lzw_native.py compares the two directly).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator

import pytest

from gossip.errors import DecodeError
from gossip.wire import lzw


@pytest.fixture(autouse=True, params=["pure", "native"])
def codec(request: pytest.FixtureRequest) -> Iterator[str]:
    native = request.param == "native"
    if native and not lzw.native_available():
        pytest.skip("gossip.wire._lzw not built (no C compiler at install time?)")
    assert lzw.use_native(native) is native
    try:
        yield request.param
    finally:
        lzw.use_native(True)


# Captured from serf 0.9.4 (docs/wire.md, "Sources"): the compressed TCP ack.
SERF_BUF = bytes.fromhex("0005083a05254c1e366fc29001566a4a99384ede140808")
SERF_PLAIN = b"\x02\x82\xa7Payload\xc0\xa5SeqNo\x05"


def test_serf_vector_decompresses() -> None:
    assert lzw.decompress(SERF_BUF) == SERF_PLAIN


def test_serf_vector_compresses_byte_exact() -> None:
    assert lzw.compress(SERF_PLAIN) == SERF_BUF


def test_leading_clear_code() -> None:
    out = lzw.compress(b"abc")
    assert out[0] == 0x00 and out[1] & 1 == 1  # 9-bit code 256 first


def test_empty_input() -> None:
    # Go's Close on an empty stream writes clear then EOF: 256 | 257 << 9.
    assert lzw.compress(b"") == (256 | 257 << 9).to_bytes(3, "little")
    assert lzw.decompress(lzw.compress(b"")) == b""


def test_stream_without_leading_clear_is_accepted() -> None:
    # Go < 1.17 encoders did not emit the clear code: 'a' then EOF at 9 bits.
    old = (ord("a") | 257 << 9).to_bytes(3, "little")
    assert lzw.decompress(old) == b"a"


@pytest.mark.parametrize("size", [1, 2, 3, 257, 511, 512, 513, 4000, 20000, 70000])
@pytest.mark.parametrize("alphabet", [1, 3, 256])
def test_roundtrip_across_width_changes_and_table_resets(size: int, alphabet: int) -> None:
    rng = random.Random(size * 1000 + alphabet)
    data = bytes(rng.randrange(alphabet) for _ in range(size))
    assert lzw.decompress(lzw.compress(data)) == data


def test_missing_eof_is_error() -> None:
    with pytest.raises(DecodeError, match="EOF"):
        lzw.decompress(SERF_BUF[:-2])
    with pytest.raises(DecodeError):
        lzw.decompress(b"")


def test_invalid_code_is_error() -> None:
    # After a clear, code 300 is undefined.
    bad = (256 | 300 << 9).to_bytes(3, "little")
    with pytest.raises(DecodeError, match="invalid code"):
        lzw.decompress(bad)


def test_trailing_bytes_after_eof_are_ignored() -> None:
    assert lzw.decompress(SERF_BUF + b"garbage") == SERF_PLAIN


def test_output_limit() -> None:
    data = b"\x00" * 100_000
    packed = lzw.compress(data)
    assert lzw.decompress(packed, limit=100_000) == data
    with pytest.raises(DecodeError, match="exceeds"):
        lzw.decompress(packed, limit=99_999)


def test_compression_actually_compresses() -> None:
    data = b"alive sb001 192.0.2.2 " * 50
    assert len(lzw.compress(data)) < len(data) // 4


def test_decompress_of_random_bytes_only_raises_decode_error() -> None:
    rng = random.Random(7)
    for _ in range(300):
        blob = rng.randbytes(rng.randrange(0, 64))
        with contextlib.suppress(DecodeError):
            lzw.decompress(blob, limit=1 << 20)


# Go 1.19 (the toolchain serf 0.9.4 was built with) compress/lzw output for
# bytes(random.Random(seed).randrange(alphabet) for _ in range(size)):
# (seed, size, alphabet, compressed length, sha256 of compressed bytes).
# Sizes cover width changes, table-full clears at code 4095 and long runs.
GO_VECTORS: list[tuple[int, int, int, int, str]] = [
    (0, 0, 1, 3, "ca175b7b97e4180ff4b1dc13271f897a7d711d6da53ddd112d60bf4ac100e23e"),
    (1, 1, 1, 4, "1429eeb1fc89869dd14be020da2544d3a81212ef699b813320281683be8a1ba7"),
    (2, 2, 2, 5, "dc636265747a0128c44ae7f8bcfbf51d155b456bc6c401faefcf94d8c94d1e3a"),
    (3, 100, 256, 115, "bf163be133ee2cdc478e01e4d358a5feb46cd16c8451c82ce2ad3ae44c66ca3c"),
    (4, 4094, 256, 5551, "4d7bce604b743b87a20607bc566c01c0d34c49bc98d2b179ef05943838e0a51a"),
    (5, 4095, 256, 5557, "9dd03e91e5a607269704563512b34f60fe2ed54786af933a15236d83a53bb334"),
    (6, 4096, 256, 5579, "55f77d371a29329ace6c99d96da62aadac238ef6a59a1133448de8f286880700"),
    (7, 5000, 256, 6729, "96f590b0700d61dc2a0423cd23a1882fc9e3f4592db8476ffedda1dfe4d37779"),
    (8, 20000, 256, 27374, "c4eee31da74541d0737f089e81903db8984c6d2acfda7f0f71108360dc85798b"),
    (9, 50000, 256, 68408, "ae7a1238590170356928c227861a15d1e1b24733b1952e27f95c9a55ef6bd26f"),
    (10, 70000, 3, 16672, "10fd1dba3ed6af64a56cbc3254c6081e5511ca80c9c4b99594d81225e2f6c133"),
    (11, 100000, 1, 530, "7a2b74e419500a3be5ff7cda6b8829a1eb730ccfee1d9e062be7a8ef00a0f6bf"),
    (12, 100000, 2, 15372, "5ba31ebf0073d7fcc7646753122a78ac509675e35eca53e9e474c1fa240ca8d6"),
    (13, 30000, 16, 18869, "3b9d3c3a18a0dd203075e8fc7e7f54e199a73871d7f51d6b2f7e56f7a4a2c1dc"),
    (14, 65536, 40, 56593, "e4b0c1bb9e3659a43b7b81eac22d04bb7760cba754388c205295e2a189bf0db3"),
    (15, 12345, 7, 5228, "3178598b2be031af71f848b2ddc0ce85b264cc01dbfc95b93834051e66ce5205"),
    (16, 9000, 200, 12069, "09da8b4df9c8902d730517d7ec02ff9ab420d119e4daffb63e079345c69fd0d0"),
    (17, 300000, 4, 89386, "3c7e377c0b25c74948c3e2bf9d2a7b90169f53ec75c3180b71f13e59e88d6f74"),
    (18, 8191, 256, 11133, "2a67019ebf81c8ec3ff4a65f18fdc21e55377c07a99f8c28ca7f92b56066f0d0"),
    (19, 16384, 64, 17172, "2f6a66f32d89a8cfddcb6b4ebba4d78bceb730f5ee6132287f6a79f3f8ec0fa6"),
]


@pytest.mark.parametrize(("seed", "size", "alphabet", "length", "digest"), GO_VECTORS)
def test_compress_matches_go_1_19_output(
    seed: int, size: int, alphabet: int, length: int, digest: str
) -> None:
    rng = random.Random(seed)
    data = bytes(rng.randrange(alphabet) for _ in range(size))
    out = lzw.compress(data)
    assert (len(out), hashlib.sha256(out).hexdigest()) == (length, digest)
    assert lzw.decompress(out) == data
