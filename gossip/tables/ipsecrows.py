"""Replicated IPsec public-key rows: each node's per-epoch X25519 public keys, cluster-wide.

Owns: the row type (``IpsecKeysRow``: one row per node, written only by that node,
holding its VTEP and the public halves of the epoch keys it currently holds), its
msgpack encoding, the private message type byte that carries one row as a piggybacked
event (``IPSEC_EVENT``), the row list that rides as an extra field of the tables'
push/pull state, and ``IpsecKeyStore`` (last-writer-wins merge, change counter).
Does not: decide visibility (rows of members that are not alive/suspect are hidden by
``gossip.tables.replica.Tables``), hold private keys (never: the agent keeps them,
``agent/overlay/ipsec.py``), or derive SAs (``crypto/ipsec.py``).

Why separate messages rather than a fifth row kind in ``rows.py``: an agent that
does not know this row ignores a message with an unknown private type byte and an
extra trailing field of the push/pull state, whereas an unknown row kind would make it
drop the whole message (networks and members included). Mixed versions keep working;
the older agent just has no IPsec peers.

Wire form (msgpack): ``[lamport, node, vtep (4/16 bytes), [[epoch, public32], ...]]``,
epochs ascending and distinct, at most ``MAX_KEYS``. An empty key list is how a node
says "no IPsec keys" (there are no tombstones: rows of gone owners are reaped).
Reference: docs/ipsec.md (key distribution), docs/tables.md (LWW, owner authority).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from gossip.errors import DecodeError
from gossip.tables.framing import STATE

IPSEC_EVENT = 0x94
"""Private user-message type byte of one piggybacked ``IpsecKeysRow``."""
MAX_KEYS = 8
"""A node holds at most 3 live epochs; a little room for future schedules."""
PUBLIC_BYTES = 32
MAX_LAMPORT = (1 << 63) - 1
MAX_EPOCH = (1 << 63) - 1

_LIMITS: dict[str, int] = {
    "max_str_len": 1 << 16,
    "max_bin_len": 1 << 16,
    "max_array_len": 1 << 20,
    "max_map_len": 0,
    "max_ext_len": 0,
}


@dataclass(frozen=True, slots=True)
class IpsecKeysRow:
    """Node ``node`` (VTEP ``vtep``) holds epoch keys whose public halves are ``keys``."""

    node: str
    lamport: int
    vtep: str
    keys: tuple[tuple[int, bytes], ...]
    """(epoch, X25519 public key), ascending epoch."""

    @property
    def writer(self) -> str:
        return self.node

    def publics(self) -> dict[int, bytes]:
        return dict(self.keys)


def _pack(obj: Any) -> bytes:
    out = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(out, bytes)
    return out


def _wire(row: IpsecKeysRow) -> list[Any]:
    return [row.lamport, row.node, ipaddress.ip_address(row.vtep).packed, [[e, k] for e, k in row.keys]]


def encode_row(row: IpsecKeysRow) -> bytes:
    return _pack(_wire(row))


def encode_event(row: IpsecKeysRow) -> bytes:
    """The piggybacked message: type byte + one row."""
    return bytes([IPSEC_EVENT]) + encode_row(row)


def newer(a: IpsecKeysRow, b: IpsecKeysRow) -> bool:
    """LWW order (same key = same node): Lamport time, then the encoded content, so the
    order is total and merging converges whatever the delivery order."""
    if a.lamport != b.lamport:
        return a.lamport > b.lamport
    return encode_row(a) > encode_row(b)


def _want(cond: bool, what: str) -> None:
    if not cond:
        raise DecodeError(f"ipsec keys row: bad {what}")


def row_from_obj(obj: Any) -> IpsecKeysRow:
    """A decoded msgpack object back into a row; DecodeError on anything malformed."""
    _want(isinstance(obj, list) and len(obj) >= 4, "shape")
    lamport, node, vtep, keys = obj[:4]
    _want(isinstance(lamport, int) and not isinstance(lamport, bool) and 0 <= lamport <= MAX_LAMPORT, "lamport")
    _want(isinstance(node, str) and 0 < len(node) <= 255, "node")
    _want(isinstance(vtep, bytes) and len(vtep) in (4, 16), "vtep")
    _want(isinstance(keys, list) and len(keys) <= MAX_KEYS, "key list")
    out: list[tuple[int, bytes]] = []
    for item in keys:
        _want(isinstance(item, list) and len(item) == 2, "key entry")
        epoch, pub = item
        _want(isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch <= MAX_EPOCH, "epoch")
        _want(isinstance(pub, bytes) and len(pub) == PUBLIC_BYTES, "public key")
        _want(not out or epoch > out[-1][0], "epoch order")
        out.append((epoch, pub))
    return IpsecKeysRow(node, lamport, str(ipaddress.ip_address(vtep)), tuple(out))


def _unpack(body: bytes) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True, **_LIMITS)
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise DecodeError(f"ipsec keys message: {exc}") from exc


def decode_event(payload: bytes) -> IpsecKeysRow:
    """Inverse of ``encode_event``. Raises DecodeError."""
    if not payload or payload[0] != IPSEC_EVENT:
        raise DecodeError("ipsec keys message: wrong type byte")
    return row_from_obj(_unpack(payload[1:]))


def decode_rows(objs: Any) -> list[IpsecKeysRow]:
    """The extra push/pull field (a list of row objects). Raises DecodeError."""
    _want(isinstance(objs, list), "row list")
    return [row_from_obj(o) for o in objs]


def rows_in_state(payload: bytes) -> list[IpsecKeysRow]:
    """The IPsec rows riding as the third field of a tables STATE payload (0x93), if any.
    Raises DecodeError."""
    if not payload or payload[0] != STATE:
        return []
    obj = _unpack(payload[1:])
    _want(isinstance(obj, list) and len(obj) >= 2, "state")
    return decode_rows(obj[2]) if len(obj) >= 3 else []


def state_field(rows: Iterable[IpsecKeysRow]) -> list[Any]:
    """The extra push/pull field: every row as a msgpack-ready list."""
    return [_wire(r) for r in rows]


class IpsecKeyStore:
    """Every node's newest row. Knows nothing about liveness or the local node."""

    def __init__(self) -> None:
        self.rows: dict[str, IpsecKeysRow] = {}
        self.version = 0
        """Incremented whenever a stored row changes (the agent's IPsec task watches it)."""

    def get(self, node: str) -> IpsecKeysRow | None:
        return self.rows.get(node)

    def merge(self, row: IpsecKeysRow) -> bool:
        """Store ``row`` if it supersedes the held one; True if it did."""
        cur = self.rows.get(row.node)
        if cur is not None and not newer(row, cur):
            return False
        self.rows[row.node] = row
        self.version += 1
        return True

    def drop(self, nodes: Sequence[str]) -> bool:
        dropped = False
        for node in nodes:
            if self.rows.pop(node, None) is not None:
                dropped = True
        if dropped:
            self.version += 1
        return dropped

    def __iter__(self) -> Iterator[IpsecKeysRow]:
        return iter([self.rows[n] for n in sorted(self.rows)])
