"""Gossip key management: ``agentctl keys list|install|use|remove|encrypt|require|allow-plaintext``.

Owns: applying a key operation to this node's core keyring (inside the driver, so
it is atomic with respect to gossip), the rules and messages (the primary key
cannot be removed, a key must be installed before use, ...), the agent's side of
the encryption roll-out (``install --enable``, ``encrypt``, ``require``,
``allow-plaintext``: transitions of the core's one state machine,
``gossip/wire/encryption.py``) and the serf query that carries an action to the
other members (``query_for``).
``agent/control/ops.py`` ``keys_op`` applies the action here, then (unless ``--local``)
sends that query with ``Swim.send_query``: every member, serf agents included,
applies and answers it and relays it on, so it reaches the whole cluster; the
report says which members applied it (``gossip.serf.keyops.cluster_report``).
Members apply in ``gossip/serf/queries.py`` (``serf keys`` reaches our agents the
same way) and ``service`` persists on ``KeyringChanged``.
Does not: persist (``agent.store.records``), send or wait for answers (``ops``, ``queries``).
"""

from __future__ import annotations

import os
from typing import Any

from agent.control.protocol import ApiError
from crypto.keyring import Keyring, decode_key, encode_key
from gossip.members import Status
from gossip.serf import keyops
from gossip.serf import queries as serfquery
from gossip.serf.keyops import cluster_report, live_members, query_timeout
from gossip.swim import Swim
from gossip.wire.encryption import GossipEncryption

__all__ = ["ACTIONS", "MUTATING", "QUERIES", "apply", "cluster_report", "live_members", "parse_key",
           "query_for", "query_timeout", "view"]

ACTIONS = ("list", "install", "use", "remove", "encrypt", "require", "allow-plaintext")
MUTATING = ("install", "use", "remove", "encrypt", "require", "allow-plaintext")
QUERIES = keyops.KEY_QUERIES
"""Actions that serf members understand too (serf's internal key queries). The pure
parts of a cluster-wide change (rules, query, timeout, report) live in ``gossip.serf.keyops``,
shared with the simulator's key-rotation scenario."""


def parse_key(args: dict[str, Any]) -> bytes:
    text = args.get("key")
    if not isinstance(text, str) or not text.strip():
        raise ApiError("missing \"key\" (base64 of 16, 24 or 32 bytes)")
    try:
        return decode_key(text)
    except ValueError as exc:
        raise ApiError(str(exc)) from None


def view(swim: Swim) -> dict[str, Any]:
    enc = swim.encryption
    ring = enc.keyring
    keys = [encode_key(k) for k in ring.keys] if ring is not None else []
    others = [m for m in swim.members() if m.name != swim.name and m.status in (Status.ALIVE, Status.SUSPECT)]
    return {
        "node": swim.name,
        "encrypted": enc.enabled,
        "keys": keys,
        "primary": keys[0] if keys else None,
        "require_encryption": enc.require_encryption,
        "encrypt_outgoing": enc.encrypt_outgoing,
        "live_members": len(others) + 1,
    }


_NOT_ENABLED = {
    "use": "encryption is not enabled on this agent (no keyring)",
    "remove": "encryption is not enabled on this agent (no keyring)",
    "encrypt": "encryption is not enabled on this agent: install a key first",
    "require": "encryption is not enabled on this agent: install a key first",
    "allow-plaintext": "encryption is not enabled on this agent: plaintext is all it speaks",
}
"""Why an action other than install is refused while no key is installed."""


def apply(swim: Swim, action: str, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Run ``action`` on the core; returns (view, keyring changed). Raises ApiError."""
    if action not in ACTIONS:
        raise ApiError(f"unknown keys action {action!r} (known: {', '.join(ACTIONS)})")
    enc = swim.encryption
    key = parse_key(args) if action in ("install", "use", "remove") else b""
    changed = False
    if action == "list":
        pass
    elif action == "install" and not enc.enabled:
        changed = _enable(enc, key, args)
    elif not enc.enabled:
        raise ApiError(_NOT_ENABLED[action])
    elif action in ("install", "use", "remove"):
        assert enc.keyring is not None
        try:
            changed = keyops.apply_key(enc.keyring, action, key)
        except ValueError as exc:
            raise ApiError(str(exc)) from None
    else:
        enc.command(action)  # encrypt, require, allow-plaintext: the roll-out mode
    return view(swim), changed


def _enable(enc: GossipEncryption, key: bytes, args: dict[str, Any]) -> bool:
    """Install the first key: the roll-out window starts (accept both, keep sending
    plaintext until every member holds the key: 'keys encrypt', then 'keys require')."""
    if not args.get("enable"):
        raise ApiError("encryption is not enabled on this agent: 'agentctl keys install --enable KEY' "
                       "turns it on (plaintext stays accepted until 'agentctl keys require')")
    ring = enc.keyring if enc.keyring is not None else Keyring([], nonce_source=os.urandom)
    ring.install(key)
    enc.enable(ring)
    return True


def query_for(action: str, args: dict[str, Any]) -> tuple[str, bytes]:
    """The serf query that carries ``action`` to the other members."""
    if action in ("install", "use", "remove"):
        return keyops.key_query(action, parse_key(args))
    if action == "list":
        return keyops.key_query(action, None)
    return serfquery.MODE_QUERY, action.encode()
