"""Keyring: AES-GCM seal/open in memberlist's layout, key management semantics."""

from __future__ import annotations

import base64
import random

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto.keyring import DecryptError, Keyring, decode_key, encode_key

K16, K24, K32 = bytes(range(16)), bytes(range(24)), bytes(range(32))
K16B = bytes(range(100, 116))


def seeded(seed: int = 1) -> Keyring:
    rng = random.Random(seed)
    return Keyring([K16], rng.randbytes)


def fixed_nonce(n: int) -> bytes:
    return b"\x07" * n


@pytest.mark.parametrize("key", [K16, K24, K32], ids=["aes128", "aes192", "aes256"])
def test_seal_open_all_key_sizes(key: bytes) -> None:
    kr = Keyring([key], fixed_nonce)
    blob = kr.seal(b"hello", b"")
    assert blob[0] == 1 and blob[1:13] == b"\x07" * 12
    assert len(blob) == 1 + 12 + 5 + 16
    # Independent check with AESGCM: layout is [1][nonce][ct||tag].
    assert AESGCM(key).decrypt(blob[1:13], blob[13:], None) == b"hello"
    assert kr.open(blob) == b"hello"


@pytest.mark.parametrize("size", [0, 15, 17, 20, 31, 33, 64])
def test_bad_key_sizes_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match="16, 24 or 32"):
        Keyring([bytes(size)], fixed_nonce)
    with pytest.raises(ValueError, match="16, 24 or 32"):
        Keyring([], fixed_nonce).install(bytes(size))


def test_wrong_key_fails() -> None:
    blob = Keyring([K16], fixed_nonce).seal(b"secret")
    with pytest.raises(DecryptError):
        Keyring([K16B], fixed_nonce).open(blob)


def test_aad_must_match() -> None:
    kr = Keyring([K16], fixed_nonce)
    blob = kr.seal(b"x", b"\x0a\x00\x00\x00\x1e")
    assert kr.open(blob, b"\x0a\x00\x00\x00\x1e") == b"x"
    with pytest.raises(DecryptError):
        kr.open(blob)


def test_all_keys_are_tried_primary_first() -> None:
    old = Keyring([K32], fixed_nonce).seal(b"from-old-key")
    kr = Keyring([K16, K24, K32], fixed_nonce)
    assert kr.primary == K16
    assert kr.open(old) == b"from-old-key"
    # Encryption uses the primary only.
    assert Keyring([K16], fixed_nonce).open(kr.seal(b"p")) == b"p"


def test_version0_padded_is_accepted() -> None:
    plain = b"sixteen-byte-msg"  # a full block still gets 16 bytes of padding
    pad = 16 - len(plain) % 16
    nonce = bytes(12)
    blob = b"\x00" + nonce + AESGCM(K16).encrypt(nonce, plain + bytes([pad]) * pad, None)
    assert Keyring([K16], fixed_nonce).open(blob) == plain
    short = b"abc"
    pad = 16 - len(short)
    blob = b"\x00" + nonce + AESGCM(K16).encrypt(nonce, short + bytes([pad]) * pad, None)
    assert Keyring([K16], fixed_nonce).open(blob) == short


def test_version0_bad_padding_is_decrypt_error() -> None:
    nonce = bytes(12)
    blob = b"\x00" + nonce + AESGCM(K16).encrypt(nonce, b"x" * 15 + b"\x11", None)
    with pytest.raises(DecryptError):
        Keyring([K16], fixed_nonce).open(blob)


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x01", b"\x01" + bytes(27), b"\x02" + bytes(40), b"\x00" + bytes(30), b"\xff" * 60],
)
def test_malformed_blobs_are_decrypt_errors(blob: bytes) -> None:
    with pytest.raises(DecryptError):
        Keyring([K16], fixed_nonce).open(blob)


def test_decrypt_error_is_value_error() -> None:
    assert issubclass(DecryptError, ValueError)


def test_empty_ring() -> None:
    kr = Keyring([], fixed_nonce)
    assert kr.primary is None and kr.keys == ()
    with pytest.raises(ValueError):
        kr.seal(b"x")
    with pytest.raises(DecryptError):
        kr.open(b"\x01" + bytes(40))


def test_install_appends_and_becomes_primary_only_if_empty() -> None:
    kr = Keyring([], fixed_nonce)
    kr.install(K16)
    assert kr.primary == K16
    kr.install(K24)
    assert kr.keys == (K16, K24) and kr.primary == K16
    kr.install(K24)  # idempotent
    assert kr.keys == (K16, K24)


def test_use_moves_key_to_front() -> None:
    kr = Keyring([K16, K24, K32], fixed_nonce)
    kr.use(K32)
    assert kr.keys == (K32, K16, K24)
    blob = kr.seal(b"z")
    assert Keyring([K32], fixed_nonce).open(blob) == b"z"
    with pytest.raises(ValueError, match="not installed"):
        kr.use(K16B)


def test_remove_semantics() -> None:
    kr = Keyring([K16, K24], fixed_nonce)
    with pytest.raises(ValueError, match="primary"):
        kr.remove(K16)
    with pytest.raises(ValueError, match="not installed"):
        kr.remove(K32)
    kr.remove(K24)
    assert kr.keys == (K16,)
    with pytest.raises(DecryptError):
        kr.open(Keyring([K24], fixed_nonce).seal(b"gone"))


def test_nonce_source_is_used_and_checked() -> None:
    a = seeded(5).seal(b"m")
    b = seeded(5).seal(b"m")
    assert a == b  # deterministic with a seeded source (simulator)
    assert seeded(6).seal(b"m") != a
    with pytest.raises(ValueError):
        Keyring([K16], lambda n: b"short").seal(b"m")


def test_key_text_roundtrip_and_errors() -> None:
    serf_key = "95wXk3AC1OzDpN7Xxh652tjDdunrR6WGklV+7aqUz3M="
    raw = decode_key(serf_key)
    assert len(raw) == 32 and encode_key(raw) == serf_key
    assert decode_key(" " + base64.b64encode(K16).decode() + "\n") == K16
    with pytest.raises(ValueError, match="base64"):
        decode_key("not base64!!")
    with pytest.raises(ValueError, match="16, 24 or 32"):
        decode_key(base64.b64encode(bytes(20)).decode())
    with pytest.raises(ValueError):
        encode_key(bytes(3))
