"""Answers to serf's internal queries, so `serf reachability` and `serf keys` count us.

Owns: deciding whether a query is addressed to this node (serf's filters) and the
response payloads for ``_serf_ping``, the four key-management queries and our
``_overlay_keys-mode``. The keyring operations are applied here, on the core's
keyring, because serf sends the same queries to every member and expects each one
to apply them.
Does not: relay queries or remember which it has seen (``layer.py`` passes every
new one on, addressed to us or not, as serf members do), switch the encryption
mode (it returns the command; ``layer.py`` applies it) or send any I/O.
Reference: serf 0.9.4 ``internal_query.go``, ``keymanager.go``, ``query.go``
(filters); docs/wire.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import msgpack

from crypto.keyring import Keyring, encode_key
from gossip.errors import DecodeError
from gossip.serf import payloads as serfcompat
from gossip.serf.payloads import Query
from gossip.wire import encryption

_FILTER_NODE = 0
_FILTER_TAG = 1
_KEY_QUERIES = ("_serf_install-key", "_serf_use-key", "_serf_remove-key", "_serf_list-keys")
MODE_QUERY = "_overlay_keys-mode"
"""Our own query (serf members ignore it): switch the encryption roll-out phase."""
MODES = encryption.COMMANDS


@dataclass(frozen=True, slots=True)
class QueryAnswer:
    ack: bool
    """Send an ack (the querier asked for one)."""
    response: bytes | None
    """Response payload to send, or None for no response."""
    keyring_changed: bool = False
    mode: str | None = None
    """A roll-out command (``MODES``) for the node's ``GossipEncryption``."""


def addressed_to_us(query: Query, name: str, tags: Mapping[str, str]) -> bool:
    """serf's filters: every filter must match (node list, or tag regex)."""
    for raw in query.filters:
        if not raw:
            return False
        try:
            body = msgpack.unpackb(raw[1:], raw=False)
        except Exception:
            return False
        if raw[0] == _FILTER_NODE:
            if not isinstance(body, list) or name not in body:
                return False
        elif raw[0] == _FILTER_TAG:
            if not isinstance(body, dict):
                return False
            tag, expr = body.get("Tag"), body.get("Expr")
            if not isinstance(tag, str) or not isinstance(expr, str) or tag not in tags:
                return False
            try:
                if re.search(expr, tags[tag]) is None:
                    return False
            except re.error:
                return False
        else:
            return False
    return True


def answer(query: Query, keyring: Keyring | None) -> QueryAnswer:
    """What to answer to a query addressed to us (``addressed_to_us`` already checked)."""
    if query.name == "_serf_ping":
        # serf's internal ping: the ack is the answer; no response (serf counts 0).
        return QueryAnswer(query.wants_ack, None)
    if query.name in _KEY_QUERIES:
        return _key_query(query, keyring)
    if query.name == MODE_QUERY:
        mode = query.payload.decode("ascii", "replace")
        if mode not in MODES:
            return QueryAnswer(query.wants_ack, serfcompat.encode_key_response(False, f"unknown mode {mode!r}"))
        if keyring is None or keyring.primary is None:
            return QueryAnswer(
                query.wants_ack, serfcompat.encode_key_response(False, "no key installed")
            )
        return QueryAnswer(query.wants_ack, serfcompat.encode_key_response(True, ""), mode=mode)
    # A user query we have no handler for: ack it so the querier sees us, no response.
    return QueryAnswer(query.wants_ack, None)


_SERF_KEY_ERRORS = {
    "size": "key size must be 16, 24 or 32 bytes",
    "use": "Requested key is not in the keyring",
    "remove": "Removing the primary key is not allowed",
    "list": "Keyring is empty (encryption not enabled)",
    "none": "No keyring to modify (encryption not enabled)",
}
"""Serf's answers, word for word (serf 0.9.4 ``internal_query.go``, memberlist 0.2.2
``keyring.go``, the versions Debian's serf is built with), so ``serf keys`` prints the
same failure lines for our agents as for serf's."""


def _refuse(query: Query, why: str) -> QueryAnswer:
    return QueryAnswer(query.wants_ack, serfcompat.encode_key_response(False, _SERF_KEY_ERRORS[why]))


def _key_query(query: Query, keyring: Keyring | None) -> QueryAnswer:
    if keyring is None or (keyring.primary is None and query.name != "_serf_install-key"):
        return _refuse(query, "list" if query.name == "_serf_list-keys" else "none")
    if query.name == "_serf_list-keys":
        keys = [encode_key(k) for k in keyring.keys]
        primary = encode_key(keyring.primary) if keyring.primary else ""
        return QueryAnswer(query.wants_ack, serfcompat.encode_key_response(True, "", keys, primary))
    try:
        key = serfcompat.decode_key_request(query.payload)
    except DecodeError as exc:
        return QueryAnswer(query.wants_ack, serfcompat.encode_key_response(False, str(exc)))
    if len(key) not in (16, 24, 32):
        return _refuse(query, "size")
    if query.name == "_serf_install-key":
        if key in keyring.keys:
            return QueryAnswer(query.wants_ack, serfcompat.encode_key_response(True, ""))
        keyring.install(key)
    elif query.name == "_serf_use-key":
        if key not in keyring.keys:
            return _refuse(query, "use")
        keyring.use(key)
    else:
        if key == keyring.primary:
            return _refuse(query, "remove")
        if key not in keyring.keys:  # memberlist removes nothing and reports success
            return QueryAnswer(query.wants_ack, serfcompat.encode_key_response(True, ""))
        keyring.remove(key)
    return QueryAnswer(query.wants_ack, serfcompat.encode_key_response(True, ""), True)
