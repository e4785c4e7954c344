"""Gossip keyring: AES-GCM seal/open in memberlist's encrypted-payload format.

Owns: the ordered key list (index 0 = primary, the only key used to encrypt), and
memberlist's versioned AES-GCM blob layout. Does not: decide *when* to encrypt
(``gossip/wire/encryption.py``) or which AAD to use (``gossip/wire/codec.py``), or
where keys come from (the agent).

Layout (memberlist ``security.go``):
- version 1 (memberlist protocol >= 2, what serf sends): ``[1][nonce 12][ct || tag 16]``.
- version 0 (protocol 1, accepted on input only): ``[0][nonce 12][GCM(PKCS#7(pt)) || tag 16]``.
Decryption tries every key, primary first. Randomness comes from an injected
``nonce_source`` so the simulator can be deterministic (no ``os``/``secrets`` here).
Reference: memberlist 0.2.2 ``security.go`` (encryptPayload, decryptPayload); docs/wire.md.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION_PADDED = 0
VERSION_NO_PADDING = 1
NONCE_SIZE = 12
TAG_SIZE = 16
BLOCK_SIZE = 16
KEY_SIZES = (16, 24, 32)
# version byte + nonce + tag; v0 adds at least one block of padding.
OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
MIN_V0_SIZE = OVERHEAD + BLOCK_SIZE


class DecryptError(ValueError):
    """An encrypted blob that is malformed or that no installed key opens."""


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)):
        raise ValueError(f"key must be bytes, not {type(key).__name__}")
    if len(key) not in KEY_SIZES:
        raise ValueError(f"key size must be 16, 24 or 32 bytes (got {len(key)})")
    return bytes(key)


def encode_key(key: bytes) -> str:
    """Base64 text form of a key, as given to ``serf agent -encrypt``."""
    return base64.b64encode(_check_key(key)).decode("ascii")


def decode_key(text: str) -> bytes:
    """Parse a base64 key; :class:`ValueError` with a clear message if it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"encryption key is not valid base64: {e}") from None
    if len(raw) not in KEY_SIZES:
        raise ValueError(
            f"encryption key must decode to 16, 24 or 32 bytes (got {len(raw)})"
        )
    return raw


def _cipher(key: bytes) -> AESGCM:
    # Imported on first use: an agent without gossip encryption never pays the
    # ~7 MB that loading cryptography's OpenSSL bindings costs.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


class Keyring:
    """Ordered AES keys; ``keys[0]`` is the primary (encrypting) key."""

    __slots__ = ("_ciphers", "_keys", "_nonce_source")

    def __init__(self, keys: Sequence[bytes], nonce_source: Callable[[int], bytes]) -> None:
        self._keys: list[bytes] = []
        self._ciphers: list[AESGCM] = []
        self._nonce_source = nonce_source
        for key in keys:
            k = _check_key(key)
            if k not in self._keys:
                self._keys.append(k)
                self._ciphers.append(_cipher(k))

    @property
    def keys(self) -> tuple[bytes, ...]:
        return tuple(self._keys)

    @property
    def primary(self) -> bytes | None:
        return self._keys[0] if self._keys else None

    def install(self, key: bytes) -> None:
        """Add a key for decryption; it becomes primary only if the ring was empty."""
        k = _check_key(key)
        if k in self._keys:
            return
        self._keys.append(k)
        self._ciphers.append(_cipher(k))

    def use(self, key: bytes) -> None:
        """Make an installed key the primary."""
        k = _check_key(key)
        try:
            i = self._keys.index(k)
        except ValueError:
            raise ValueError("key is not installed in the keyring") from None
        self._keys.insert(0, self._keys.pop(i))
        self._ciphers.insert(0, self._ciphers.pop(i))

    def remove(self, key: bytes) -> None:
        """Remove a non-primary key."""
        k = _check_key(key)
        try:
            i = self._keys.index(k)
        except ValueError:
            raise ValueError("key is not installed in the keyring") from None
        if i == 0:
            raise ValueError("the primary key cannot be removed; use another key first")
        del self._keys[i]
        del self._ciphers[i]

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt with the primary key: ``[1][nonce][ciphertext || tag]``."""
        if not self._ciphers:
            raise ValueError("keyring has no primary key")
        nonce = self._nonce_source(NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise ValueError("nonce_source returned the wrong number of bytes")
        return b"\x01" + nonce + self._ciphers[0].encrypt(nonce, plaintext, aad or None)

    def open(self, blob: bytes, aad: bytes = b"") -> bytes:
        """Decrypt a version-0 or version-1 blob with any installed key."""
        if len(blob) < OVERHEAD:
            raise DecryptError("encrypted payload too short")
        version = blob[0]
        if version > VERSION_NO_PADDING:
            raise DecryptError(f"unsupported encryption version {version}")
        if version == VERSION_PADDED and len(blob) < MIN_V0_SIZE:
            raise DecryptError("encrypted payload too short")
        if not self._ciphers:
            raise DecryptError("no keys installed")
        from cryptography.exceptions import InvalidTag

        nonce = bytes(blob[1 : 1 + NONCE_SIZE])
        body = bytes(blob[1 + NONCE_SIZE :])
        ad = aad or None
        for cipher in self._ciphers:
            try:
                plain = cipher.decrypt(nonce, body, ad)
            except InvalidTag:
                continue
            if version == VERSION_PADDED:
                return _pkcs7_strip(plain)
            return plain
        raise DecryptError("no installed key could decrypt the message")


def _pkcs7_strip(buf: bytes) -> bytes:
    # memberlist always pads 1..16 bytes; anything else means a broken sender.
    if not buf:
        raise DecryptError("empty padded plaintext")
    pad = buf[-1]
    if pad < 1 or pad > BLOCK_SIZE or pad > len(buf):
        raise DecryptError("bad PKCS#7 padding")
    return buf[:-pad]
