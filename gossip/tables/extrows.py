"""Rows of kinds this build does not know: kept, merged by version and relayed, never read.

Owns: the shape every row kind after the first four follows (protocol 2,
``gossip.tables.protocol``), decoding and re-encoding such rows without knowing their
payload, the fields that carry them, and ``ExtensionStore`` with its bounds.
Does not: interpret a payload (the build that knows the kind does), decide visibility or
dataplane state (extension rows never reach the view), or choose whom to send them to
(``gossip.tables.replica`` and ``gossip.tables.sync`` do, as for their own rows).

The shape (the same as the four known kinds, so one rule covers all):
``[kind, lamport, writer, id (32 bytes), deleted, residual-seconds | payload, *extra]``
with ``kind`` >= ``FIRST_EXTENSION_KIND``, and no msgpack maps anywhere in it (release
0.1.0 decodes every tables message with maps refused). Every extension row is owned by its
writer (only the writer writes it), keyed by (network or none, kind, writer, id,
extra) and last-writer-wins by Lamport time, then by its encoded bytes (a total
order, so replicas converge whatever the delivery order). A tombstone carries its
residual lifetime like the known kinds.

Where they travel (all places a release-0.1.0 reader ignores, so no feature gate is
needed to *carry* them): cluster-wide rows in their own piggybacked message
(``EXT_EVENT``, type byte 0x95) and as the fourth field of the push/pull STATE;
network-scoped rows as the fourth field of NET_GOSSIP and the sixth of BULK_SYNC.
A relay that does not know a kind re-broadcasts a cluster-wide row once when it first
stores it (like a known row) and hands scoped rows on with its bulk syncs.

Bounds (every input is hostile until bounded): at most ``MAX_ROWS`` extension rows
in all and ``MAX_ROWS_PER_WRITER`` per writer; a row over ``MAX_ROW_BYTES`` encoded is
refused. Past a bound new keys are dropped (counted in ``dropped``), held ones still merge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from gossip.errors import DecodeError
from gossip.tables.rows import ID_BYTES, MAX_LAMPORT, MAX_RESIDUAL

FIRST_EXTENSION_KIND = 4
"""Kinds 0-3 are network, member, claim and endpoint rows (``rows.Kind``)."""
MAX_KIND = 127
EXT_EVENT = 0x95
"""Private user-message type byte of one piggybacked cluster-wide extension row."""
MAX_ROWS = 65_536
MAX_ROWS_PER_WRITER = 4_096
MAX_ROW_BYTES = 4_096
MAX_EXTRA = 8
"""Trailing key fields a row may carry (claim rows use two)."""

Key = tuple[str, int, str, str, bytes]
"""(network id or "", kind, writer, id, encoded extra)."""


@dataclass(frozen=True, slots=True)
class ExtensionRow:
    kind: int
    net: str
    """Network id of a scoped row, "" for a cluster-wide one."""
    writer: str
    id: str
    lamport: int
    deleted: bool
    payload: Any
    """The row's body as decoded (None for a tombstone); re-encoded as it came."""
    extra: tuple[Any, ...]
    expires: float
    """When a tombstone may be forgotten (inf for a live row)."""

    @property
    def key(self) -> Key:
        return (self.net, self.kind, self.writer, self.id, _packb(list(self.extra)))


def queue_key(row: ExtensionRow) -> str:
    """Broadcast-queue key: news about a row replaces older news about it."""
    return "\0".join(("x", row.net, str(row.kind), row.writer, row.id, row.key[4].hex()))


def _packb(obj: Any) -> bytes:
    out = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(out, bytes)
    return out


EMPTY_EXTRA = _packb([])
"""The last key field of a row without extra key fields."""


def _want(cond: bool, what: str) -> None:
    if not cond:
        raise DecodeError(f"extension row: bad {what}")


def is_extension(obj: Any) -> bool:
    """Whether a decoded row object is of a kind this build leaves to ``extrows``."""
    return (isinstance(obj, list) and bool(obj) and isinstance(obj[0], int)
            and not isinstance(obj[0], bool) and obj[0] >= FIRST_EXTENSION_KIND)


def decode(obj: Any, now: float, net: str = "") -> ExtensionRow:
    """One extension row from its decoded msgpack object. Raises DecodeError."""
    _want(isinstance(obj, list) and 6 <= len(obj) <= 6 + MAX_EXTRA, "shape")
    kind, lamport, writer, ident, deleted, body = obj[:6]
    _want(isinstance(kind, int) and not isinstance(kind, bool)
          and FIRST_EXTENSION_KIND <= kind <= MAX_KIND, "kind")
    _want(isinstance(lamport, int) and not isinstance(lamport, bool) and 0 <= lamport <= MAX_LAMPORT, "lamport")
    _want(isinstance(writer, str) and 0 < len(writer) <= 255, "writer")
    _want(isinstance(ident, bytes) and len(ident) == ID_BYTES, "id")
    _want(isinstance(deleted, bool), "deleted flag")
    expires = math.inf
    if deleted:
        _want(isinstance(body, int) and not isinstance(body, bool) and 0 <= body <= MAX_RESIDUAL, "residual time")
        expires = now + body
    _want(_plain(obj, 0), "value (maps, or nesting over 16 levels)")
    row = ExtensionRow(kind, net, writer, ident.hex(), lamport, deleted, None if deleted else body,
                       tuple(obj[6:]), expires)
    _want(len(encode(row, now)) <= MAX_ROW_BYTES, "size")
    return row


def _plain(obj: Any, depth: int) -> bool:
    """No maps and bounded nesting (msgpack's own decoder bounds what arrives on the wire;
    this covers objects handed in directly)."""
    if isinstance(obj, dict) or depth > 16:
        return False
    return not isinstance(obj, list) or all(_plain(x, depth + 1) for x in obj)


def decode_list(objs: Any, now: float, net: str = "") -> list[ExtensionRow]:
    """A trailing field holding extension rows. Raises DecodeError."""
    _want(isinstance(objs, list), "row list")
    return [decode(o, now, net) for o in objs]


def encode_obj(row: ExtensionRow, now: float) -> list[Any]:
    """The row as a msgpack-ready list (a tombstone with its residual time at ``now``)."""
    body = max(0, min(MAX_RESIDUAL, math.ceil(row.expires - now))) if row.deleted else row.payload
    return [row.kind, row.lamport, row.writer, bytes.fromhex(row.id), row.deleted, body, *row.extra]


def encode(row: ExtensionRow, now: float) -> bytes:
    return _packb(encode_obj(row, now))


def encode_event(row: ExtensionRow, now: float) -> bytes:
    return bytes([EXT_EVENT]) + encode(row, now)


def newer(a: ExtensionRow, b: ExtensionRow) -> bool:
    """LWW for one key: Lamport time, then the encoded content (a total order)."""
    if a.lamport != b.lamport:
        return a.lamport > b.lamport
    return encode(a, 0.0) > encode(b, 0.0)


class ExtensionStore:
    """Every extension row this node holds. Knows nothing about liveness or kinds."""

    def __init__(self, max_rows: int = MAX_ROWS, max_per_writer: int = MAX_ROWS_PER_WRITER) -> None:
        self.rows: dict[Key, ExtensionRow] = {}
        self._per_writer: dict[str, int] = {}
        self.max_rows = max_rows
        self.max_per_writer = max_per_writer
        self.dropped = 0
        """New rows refused by a bound."""

    def merge(self, row: ExtensionRow) -> bool:
        """Store ``row`` if it supersedes the held one (and the bounds allow a new key)."""
        key = row.key
        cur = self.rows.get(key)
        if cur is not None:
            if not newer(row, cur):
                return False
        elif len(self.rows) >= self.max_rows or self._per_writer.get(row.writer, 0) >= self.max_per_writer:
            self.dropped += 1
            return False
        else:
            self._per_writer[row.writer] = self._per_writer.get(row.writer, 0) + 1
        self.rows[key] = row
        return True

    def cluster_rows(self) -> list[ExtensionRow]:
        return [r for k, r in sorted(self.rows.items()) if not k[0]]

    def scoped_rows(self, net: str) -> list[ExtensionRow]:
        return [r for k, r in sorted(self.rows.items()) if k[0] == net]

    def reap(self, now: float, gone: Callable[[str], bool], kept_nets: Iterable[str]) -> int:
        """Forget expired tombstones, rows of writers that are ``gone`` and scoped rows of
        networks this node no longer takes part in. Returns how many were dropped."""
        keep = set(kept_nets)
        doomed = [k for k, r in self.rows.items()
                  if r.expires <= now or gone(r.writer) or (r.net and r.net not in keep)]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    def _remove(self, key: Key) -> None:
        row = self.rows.pop(key)
        left = self._per_writer[row.writer] - 1
        if left:
            self._per_writer[row.writer] = left
        else:
            del self._per_writer[row.writer]

    def __len__(self) -> int:
        return len(self.rows)


def objs(rows: Sequence[ExtensionRow], now: float) -> list[list[Any]]:
    """A trailing field's value: the rows as msgpack-ready lists."""
    return [encode_obj(r, now) for r in rows]
