"""The encryption roll-out state machine (gossip/wire/encryption.py)."""

from __future__ import annotations

import random

import pytest

from crypto.keyring import Keyring
from gossip.wire.encryption import COMMANDS, EncryptionMode, GossipEncryption

KEY = bytes(16)
PLAINTEXT, ACCEPT, ENCRYPT, REQUIRE = (
    EncryptionMode.PLAINTEXT, EncryptionMode.ACCEPT, EncryptionMode.ENCRYPT, EncryptionMode.REQUIRE,
)


def _ring(*keys: bytes) -> Keyring:
    return Keyring(list(keys), nonce_source=random.Random(0).randbytes)


def _in(mode: EncryptionMode) -> GossipEncryption:
    enc = GossipEncryption(_ring(KEY))
    if mode is ACCEPT:
        enc.enable(enc.keyring)  # type: ignore[arg-type]
    elif mode is ENCRYPT:
        enc.command("allow-plaintext")
    assert enc.mode is mode
    return enc


@pytest.mark.parametrize("keyring", [None, "empty"])
def test_without_a_key_it_is_plaintext_both_ways(keyring: str | None) -> None:
    enc = GossipEncryption(_ring() if keyring else None)
    assert enc.mode is PLAINTEXT and not enc.enabled
    assert enc.incoming() is None and enc.outgoing() is None


def test_a_node_started_with_a_key_requires_encryption() -> None:
    enc = GossipEncryption(_ring(KEY))
    assert enc.mode is REQUIRE and enc.require_encryption and enc.encrypt_outgoing
    assert enc.incoming() is enc.keyring and enc.outgoing() is enc.keyring


def test_the_first_key_starts_the_roll_out_window() -> None:
    ring = _ring()
    enc = GossipEncryption(ring)
    ring.install(KEY)
    enc.enable(ring)
    assert enc.mode is ACCEPT
    assert enc.incoming() is ring and enc.outgoing() is None  # accepts both, sends plaintext
    assert not enc.require_encryption and not enc.encrypt_outgoing


def test_enable_needs_a_key() -> None:
    with pytest.raises(ValueError):
        GossipEncryption(None).enable(_ring())


@pytest.mark.parametrize(
    ("start", "command", "end"),
    [
        (ACCEPT, "encrypt", ENCRYPT),
        (ENCRYPT, "encrypt", ENCRYPT),
        (REQUIRE, "encrypt", REQUIRE),
        (ACCEPT, "require", REQUIRE),
        (ENCRYPT, "require", REQUIRE),
        (REQUIRE, "require", REQUIRE),
        (ACCEPT, "allow-plaintext", ACCEPT),
        (ENCRYPT, "allow-plaintext", ENCRYPT),
        (REQUIRE, "allow-plaintext", ENCRYPT),
    ],
)
def test_commands(start: EncryptionMode, command: str, end: EncryptionMode) -> None:
    enc = _in(start)
    enc.command(command)
    assert enc.mode is end
    assert (enc.outgoing() is not None) == (end is not ACCEPT)
    assert enc.require_encryption == (end is REQUIRE)


def test_every_command_is_known_and_others_are_refused() -> None:
    assert COMMANDS == ("encrypt", "require", "allow-plaintext")
    with pytest.raises(ValueError, match="unknown encryption command"):
        _in(REQUIRE).command("off")


def test_the_configured_mode_is_kept_and_reported_without_a_key() -> None:
    enc = GossipEncryption(_ring())
    enc.configure(require=False)
    assert enc.mode is PLAINTEXT and not enc.require_encryption and enc.encrypt_outgoing
    enc.configure(require=True)
    assert enc.require_encryption
