"""Gossip key management on this node: ``agentctl keys list|install|use|remove|require|allow-plaintext``.

Owns: applying a key operation to the core's keyring (inside the driver, so it
is atomic with respect to gossip), the rules and messages (the primary key
cannot be removed, a key must be installed before use, ...) and the encryption
roll-out window (``require_encryption`` False: plaintext is accepted too).
Serf's own ``serf keys`` reaches our agents through the core's answers to
serf's key queries (``gossip/serfquery.py``); the keyring then changes
remotely and ``service`` persists it on ``KeyringChanged``.
Does not: persist (``agent.persist``) or talk to other members. Cluster-wide
dissemination needs the core to *send* serf's key queries and surface the
responses (see the report in docs/operations.md, "Gossip keys").
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from agent.api import ApiError
from crypto.keyring import Keyring, decode_key, encode_key
from gossip import serfcompat, serfquery
from gossip.errors import DecodeError
from gossip.members import Status
from gossip.swim import Swim

ACTIONS = ("list", "install", "use", "remove", "encrypt", "require", "allow-plaintext")
MUTATING = ("install", "use", "remove", "encrypt", "require", "allow-plaintext")
QUERIES = {
    "install": "_serf_install-key",
    "use": "_serf_use-key",
    "remove": "_serf_remove-key",
    "list": "_serf_list-keys",
}
"""Actions that serf members understand too (serf's internal key queries)."""


def parse_key(args: dict[str, Any]) -> bytes:
    text = args.get("key")
    if not isinstance(text, str) or not text.strip():
        raise ApiError("missing \"key\" (base64 of 16, 24 or 32 bytes)")
    try:
        return decode_key(text)
    except ValueError as exc:
        raise ApiError(str(exc)) from None


def view(swim: Swim) -> dict[str, Any]:
    ring = swim.keyring
    keys = [encode_key(k) for k in ring.keys] if ring is not None else []
    others = [m for m in swim.members() if m.name != swim.name and m.status in (Status.ALIVE, Status.SUSPECT)]
    return {
        "node": swim.name,
        "encrypted": ring is not None and ring.primary is not None,
        "keys": keys,
        "primary": keys[0] if keys else None,
        "require_encryption": swim.require_encryption,
        "encrypt_outgoing": swim.encrypt_outgoing,
        "live_members": len(others) + 1,
    }


def apply(swim: Swim, action: str, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Run ``action`` on the core; returns (view, keyring changed). Raises ApiError."""
    if action not in ACTIONS:
        raise ApiError(f"unknown keys action {action!r} (known: {', '.join(ACTIONS)})")
    changed = False
    ring = swim.keyring
    if action == "list":
        pass
    elif action == "install":
        key = parse_key(args)
        if ring is None or ring.primary is None:
            if not args.get("enable"):
                raise ApiError("encryption is not enabled on this agent: 'agentctl keys install --enable KEY' "
                               "turns it on (plaintext stays accepted until 'agentctl keys require')")
            if ring is None:
                swim.keyring = ring = Keyring([], nonce_source=secrets.token_bytes)
            ring.install(key)
            # The roll-out window: accept both, keep sending plaintext until every member
            # holds the key ('agentctl keys encrypt', then 'agentctl keys require').
            swim.require_encryption = False
            swim.encrypt_outgoing = False
            changed = True
        elif key not in ring.keys:
            ring.install(key)
            changed = True
    elif action in ("use", "remove"):
        key = parse_key(args)
        if ring is None or ring.primary is None:
            raise ApiError("encryption is not enabled on this agent (no keyring)")
        try:
            if action == "use":
                changed = ring.primary != key
                ring.use(key)
            else:
                ring.remove(key)
                changed = True
        except ValueError as exc:
            raise ApiError(str(exc)) from None
    elif action == "encrypt":
        if ring is None or ring.primary is None:
            raise ApiError("encryption is not enabled on this agent: install a key first")
        swim.encrypt_outgoing = True
    elif action == "require":
        if ring is None or ring.primary is None:
            raise ApiError("encryption is not enabled on this agent: install a key first")
        swim.encrypt_outgoing = True
        swim.require_encryption = True
    else:  # allow-plaintext
        if ring is None or ring.primary is None:
            raise ApiError("encryption is not enabled on this agent: plaintext is all it speaks")
        swim.require_encryption = False
    return view(swim), changed


def query_for(action: str, args: dict[str, Any]) -> tuple[str, bytes]:
    """The serf query that carries ``action`` to the other members."""
    if action in ("install", "use", "remove"):
        return QUERIES[action], serfcompat.encode_key_request(parse_key(args))
    if action == "list":
        return QUERIES[action], b""
    return serfquery.MODE_QUERY, action.encode()


def query_timeout(swim: Swim) -> float:
    """serf's default: GossipInterval × QueryTimeoutMult (16) × ceil(log10(N + 1))."""
    n = swim.num_members()
    return swim.config.gossip_interval * 16 * max(1, math.ceil(math.log10(n + 1)))


def live_members(swim: Swim) -> list[str]:
    return sorted(m.name for m in swim.members()
                  if m.name != swim.name and m.status in (Status.ALIVE, Status.SUSPECT))


def cluster_report(me: str, live: list[str], acks: list[str], responses: dict[str, bytes]) -> dict[str, Any]:
    """Which members applied the change (or listed their keys), which refused, which were silent."""
    applied: list[str] = [me]
    failed: dict[str, str] = {}
    keys_by_member: dict[str, list[str]] = {}
    for node, payload in sorted(responses.items()):
        try:
            kind, body = serfcompat.decode_serf_message(payload)
        except DecodeError:
            failed[node] = "unreadable answer"
            continue
        if kind != serfcompat.SerfType.KEY_RESPONSE:
            failed[node] = "unexpected answer"
        elif body["Result"]:
            applied.append(node)
            if body["Keys"]:
                keys_by_member[node] = list(body["Keys"])
        else:
            failed[node] = body["Message"] or "refused"
    answered = set(responses) | set(acks)
    return {
        "members": len(live) + 1,
        "applied": applied,
        "failed": failed,
        "acked_without_answer": sorted(set(acks) - set(responses)),
        "no_answer": [n for n in live if n not in answered],
        "keys_by_member": keys_by_member,
    }
