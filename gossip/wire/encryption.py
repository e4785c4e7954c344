"""Gossip encryption of one node: its keyring and the roll-out mode, one state machine.

Owns: which keyring seals what this node sends and whether plaintext it receives is
accepted (memberlist's GossipVerifyOutgoing / GossipVerifyIncoming), as a mode:

- ``PLAINTEXT``: no key. Sends plaintext; an encrypted stream is refused.
- ``ACCEPT``: a key, and the roll-out has begun: sends plaintext, accepts both.
- ``ENCRYPT``: sends encrypted, still accepts plaintext.
- ``REQUIRE``: sends encrypted, refuses plaintext (the steady state with keys).

Transitions: the first key switches a plaintext node to ``ACCEPT`` (``enable``),
whether ``agentctl keys install --enable`` or a remote ``_serf_install-key`` brought
it, so that every member accepts encrypted traffic before anyone sends it; then the
commands ``encrypt`` (-> ``ENCRYPT``, never back from ``REQUIRE``), ``require``
(-> ``REQUIRE``) and ``allow-plaintext`` (``REQUIRE`` -> ``ENCRYPT``) move a keyed
node on, whether given locally (``agent/membership/keys.py``) or by our
``_overlay_keys-mode`` query (``gossip/serf/layer.py``). A node constructed with a
key starts in ``REQUIRE``. The mode a keyless node would take with a key (the
configured ``require_encryption``) is kept and reported, as it always was.
Does not: hold or change keys (``crypto/keyring.py``; key queries in
``gossip/serf/queries.py``), decide who may switch (the agent and the query check
that a key is installed first, each with its own message), or frame bytes
(``codec.py`` takes ``incoming()``/``outgoing()`` and ``require_encryption``).
"""

from __future__ import annotations

from enum import Enum

from crypto.keyring import Keyring


class EncryptionMode(Enum):
    PLAINTEXT = "plaintext"
    ACCEPT = "accept"
    ENCRYPT = "encrypt"
    REQUIRE = "require"


COMMANDS = ("encrypt", "require", "allow-plaintext")
"""The roll-out commands, as ``agentctl keys`` and the mode query name them."""

_AFTER: dict[tuple[str, EncryptionMode], EncryptionMode] = {
    ("encrypt", EncryptionMode.ACCEPT): EncryptionMode.ENCRYPT,
    ("encrypt", EncryptionMode.ENCRYPT): EncryptionMode.ENCRYPT,
    ("encrypt", EncryptionMode.REQUIRE): EncryptionMode.REQUIRE,
    ("require", EncryptionMode.ACCEPT): EncryptionMode.REQUIRE,
    ("require", EncryptionMode.ENCRYPT): EncryptionMode.REQUIRE,
    ("require", EncryptionMode.REQUIRE): EncryptionMode.REQUIRE,
    ("allow-plaintext", EncryptionMode.ACCEPT): EncryptionMode.ACCEPT,
    ("allow-plaintext", EncryptionMode.ENCRYPT): EncryptionMode.ENCRYPT,
    ("allow-plaintext", EncryptionMode.REQUIRE): EncryptionMode.ENCRYPT,
}
"""(command, keyed mode) -> the next keyed mode."""


class GossipEncryption:
    """The keyring (None or empty: plaintext) and the keyed mode; see the module docstring."""

    __slots__ = ("_keyed_mode", "keyring")

    def __init__(self, keyring: Keyring | None) -> None:
        self.keyring = keyring
        """Replaced by ``enable`` or directly (tests, the simulator); changed in place
        by key operations. Either way the keyed mode stays."""
        self._keyed_mode = EncryptionMode.REQUIRE
        """The mode while a primary key is installed (kept while there is none)."""

    @property
    def enabled(self) -> bool:
        """A primary key is installed."""
        ring = self.keyring
        return ring is not None and ring.primary is not None

    @property
    def mode(self) -> EncryptionMode:
        return self._keyed_mode if self.enabled else EncryptionMode.PLAINTEXT

    @property
    def require_encryption(self) -> bool:
        """Plaintext is refused (with a key); the configured value without one."""
        return self._keyed_mode is EncryptionMode.REQUIRE

    @property
    def encrypt_outgoing(self) -> bool:
        """What we send is sealed (with a key); the configured value without one."""
        return self._keyed_mode is not EncryptionMode.ACCEPT

    def incoming(self) -> Keyring | None:
        """The keyring that opens what we receive (None: plaintext only)."""
        ring = self.keyring
        return ring if ring is not None and ring.primary is not None else None

    def outgoing(self) -> Keyring | None:
        """The keyring that seals what we send (None: send plaintext)."""
        ring = self.keyring
        if ring is None or ring.primary is None or self._keyed_mode is EncryptionMode.ACCEPT:
            return None
        return ring

    def enable(self, keyring: Keyring) -> None:
        """Encryption was switched on at this plaintext node: ``keyring`` now holds its
        first key. The roll-out window starts (``ACCEPT``)."""
        if keyring.primary is None:
            raise ValueError("enable needs a keyring with a key")
        self.keyring = keyring
        self._keyed_mode = EncryptionMode.ACCEPT

    def command(self, name: str) -> None:
        """Apply a roll-out command (``COMMANDS``); ValueError for an unknown one."""
        if name not in COMMANDS:
            raise ValueError(f"unknown encryption command {name!r} (known: {', '.join(COMMANDS)})")
        self._keyed_mode = _AFTER[(name, self._keyed_mode)]

    def configure(self, *, require: bool) -> None:
        """The start-up setting (``require_encryption`` in the agent's config)."""
        self.command("require" if require else "allow-plaintext")
