"""What the agent keeps across restarts: node identity, incarnation and the gossip keyring.

Owns: the meaning and format of those records and the start-up decisions made
from them:
- ``node`` record: a random node id created on first start, plus the name (a
  rename is logged, not refused);
- ``incarnation`` record: a restart announces itself with the persisted
  incarnation + 1, so peers that still hold our previous incarnation accept the
  new ``alive`` at once instead of waiting for a refutation round;
- keyring file: serf's format (a JSON array of base64 keys, primary first,
  mode 0600), so a serf keyring file can be copied over. Once it exists it
  wins over ``encrypt_keys`` from the configuration (it holds changes made by
  ``agentctl keys`` or ``serf keys``), as in serf and Consul.
``Persister`` serialises the writes made while running (in a worker thread, so
fsync never stalls the event loop). Does not: implement atomic files
(``agent.store.files``) or decide when the keyring changes (``agent.membership.keys``, the core).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any

import trio

from agent import limits
from agent.config import AgentConfig
from agent.store.files import StateStore, atomic_write
from crypto.keyring import decode_key, encode_key

NODE_RECORD = "node"
INCARNATION_RECORD = "incarnation"
MAX_INCARNATION = 0xFFFFFFFF
"""memberlist incarnations are uint32."""


class PersistError(RuntimeError):
    """Persisted state the agent must not guess about (an unreadable keyring file)."""


@dataclass
class Startup:
    node_id: str
    incarnation: int
    keys: tuple[bytes, ...]
    keyring_source: str
    """``file`` (the persisted keyring), ``config`` (encrypt_keys) or ``none``."""
    notes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(event, fields) to log once logging is set up."""


# -- keyring file --------------------------------------------------------------------------


def read_keyring_file(path: str) -> list[bytes] | None:
    """The keys in a keyring file, primary first; None if there is no file. Raises PersistError."""
    try:
        with open(path, "rb") as f:
            data = f.read(limits.KEYRING_FILE_MAX + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PersistError(f"keyring file {path}: {exc.strerror or exc}") from None
    try:
        items = limits.loads(data, max_bytes=limits.KEYRING_FILE_MAX, what="it")
    except limits.JSONLimitError as exc:
        raise PersistError(f"keyring file {path}: {exc} (expected an array of base64 keys)") from None
    if not isinstance(items, list) or not items or not all(isinstance(k, str) for k in items):
        raise PersistError(f"keyring file {path}: expected a non-empty JSON array of base64 keys")
    keys: list[bytes] = []
    for i, text in enumerate(items):
        try:
            key = decode_key(text)
        except ValueError as exc:
            raise PersistError(f"keyring file {path}: key #{i + 1}: {exc}") from None
        if key not in keys:
            keys.append(key)
    return keys


def keyring_file_bytes(keys: tuple[bytes, ...] | list[bytes]) -> bytes:
    return (json.dumps([encode_key(k) for k in keys], indent=1) + "\n").encode()


def write_keyring_file(path: str, keys: tuple[bytes, ...] | list[bytes]) -> None:
    """Atomically, mode 0600. Raises OSError."""
    atomic_write(path, keyring_file_bytes(keys), 0o600)


def _loose_permissions(path: str) -> bool:
    try:
        return bool(stat.S_IMODE(os.stat(path).st_mode) & 0o077)
    except OSError:
        return False


# -- start-up ---------------------------------------------------------------------------------


def _identity(store: StateStore, name: str, notes: list[tuple[str, dict[str, Any]]]) -> str:
    record = store.load_json(NODE_RECORD)
    node_id = record.get("id") if isinstance(record, dict) else None
    if not (isinstance(node_id, str) and len(node_id) == 32 and all(c in "0123456789abcdef" for c in node_id)):
        if record is not None:
            notes.append(("state-record-replaced", {"record": NODE_RECORD, "reason": "malformed"}))
        node_id = os.urandom(16).hex()
    elif isinstance(record, dict) and record.get("name") != name:
        notes.append(("node-renamed", {"old": record.get("name"), "new": name, "id": node_id}))
    if record != {"id": node_id, "name": name}:
        store.save_json(NODE_RECORD, {"id": node_id, "name": name})
    return node_id


def _incarnation(store: StateStore, notes: list[tuple[str, dict[str, Any]]]) -> int:
    record = store.load_json(INCARNATION_RECORD)
    last = record.get("incarnation") if isinstance(record, dict) else None
    if isinstance(last, bool) or not isinstance(last, int) or not 0 <= last <= MAX_INCARNATION:
        if record is not None:
            notes.append(("state-record-replaced", {"record": INCARNATION_RECORD, "reason": "malformed"}))
        last = 0
    # memberlist ignores an alive about a new node at incarnation 0 (its own nodes
    # start at 1), so the first start announces 1.
    # Wrapping to 0 would be older than what peers hold; memberlist would never get there.
    incarnation = min(last + 1, MAX_INCARNATION)
    # Persisted before anything is announced: a crash right after start still moves on.
    save_incarnation(store, incarnation)
    return incarnation


def save_incarnation(store: StateStore, incarnation: int) -> None:
    store.save_json(INCARNATION_RECORD, {"incarnation": incarnation})


def load_startup(store: StateStore | None, config: AgentConfig) -> Startup:
    """Identity, incarnation and keys to start with; persists what start-up decides.

    Raises PersistError (keyring file unreadable) or OSError (state dir not writable).
    """
    notes: list[tuple[str, dict[str, Any]]] = []
    node_id = os.urandom(16).hex()
    incarnation = 1
    if store is not None:
        node_id = _identity(store, config.node, notes)
        incarnation = _incarnation(store, notes)
    keys: tuple[bytes, ...] = config.encrypt_keys
    source = "config" if keys else "none"
    path = config.keyring_path
    if path is not None:
        persisted = read_keyring_file(path)
        if persisted is not None:
            if config.encrypt_keys and set(config.encrypt_keys) - set(persisted):
                notes.append(("encrypt-keys-ignored", {
                    "keyring_file": path,
                    "reason": "the keyring file exists and takes precedence; "
                              "use agentctl keys to change keys",
                }))
            if _loose_permissions(path):
                notes.append(("keyring-file-permissions", {"file": path, "advice": "chmod 600"}))
            keys, source = tuple(persisted), "file"
        elif keys:
            write_keyring_file(path, keys)  # from now on changes persist here
    return Startup(node_id=node_id, incarnation=incarnation, keys=keys, keyring_source=source, notes=notes)


# -- while running ------------------------------------------------------------------------------


class Persister:
    """Serialised writes from the event loop; each one runs in a worker thread."""

    def __init__(self, store: StateStore | None, keyring_path: str | None) -> None:
        self.store = store
        self.keyring_path = keyring_path
        self.saved_incarnation: int | None = None
        self.errors = 0
        self.last_error: str | None = None
        self.failing = False
        """The last write failed (cleared by the next one that succeeds)."""
        self._lock = trio.Lock()

    async def _write(self, fn: Any, *args: Any) -> bool:
        async with self._lock:
            try:
                await trio.to_thread.run_sync(fn, *args)
            except OSError as exc:
                self.errors += 1
                self.failing = True
                self.last_error = f"{exc.strerror or exc}"
                return False
        self.failing = False
        return True

    async def save_incarnation(self, incarnation: int) -> bool:
        if self.store is None or incarnation == self.saved_incarnation:
            return True
        ok = await self._write(save_incarnation, self.store, incarnation)
        if ok:
            self.saved_incarnation = incarnation
        return ok

    async def save_keyring(self, keys: tuple[bytes, ...]) -> bool:
        """False when there is nowhere to persist or the write failed (see ``last_error``)."""
        if self.keyring_path is None or not keys:
            return False
        return await self._write(write_keyring_file, self.keyring_path, keys)

    async def save_json(self, name: str, obj: Any) -> bool:
        """A generic record in the state dir (e.g. local endpoints). False without a state dir."""
        if self.store is None:
            return False
        # Encoded in the worker thread: a non-JSON value raises TypeError out of here.
        return await self._write(self.store.save_json, name, obj)
