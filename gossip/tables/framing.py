"""Framing of the tables' user messages (the payloads ``Swim`` carries for us).

Owns: the private type bytes and the byte layout of the four messages, and
packing a compound of pre-encoded rows into a byte budget. Does not: decide
what to send to whom (``replica.py``) or encode a single row (``rows.py``).

Every payload starts with a private type byte >= 0x80: the core hands those to
our delegate, and serf (which sees the piggybacked cluster-wide events) ignores
them and never relays them.

=====  ===========  =============================================================
byte   name         body (msgpack)
=====  ===========  =============================================================
0x90   EVENT        one cluster-wide row (network, member, claim); piggybacked
0x91   NET_GOSSIP   [format, net id, [endpoint rows]]; UDP to network peers
0x92   BULK_SYNC    [format, net id, sender, unsolicited, [endpoint rows]]; TCP
0x93   STATE        [format, [cluster-wide rows]]; memberlist push/pull user state
0x95   EXT_EVENT    one cluster-wide extension row (protocol 2); piggybacked
=====  ===========  =============================================================

Trailing fields (readers ignore fields they do not read, so each is an addition a
release-0.1.0 agent skips): STATE ``[2]`` IPsec key rows (``ipsecrows``), ``[3]``
extension rows; NET_GOSSIP ``[3]`` and BULK_SYNC ``[5]`` the network's extension rows
(``extrows``; rows of kinds this build does not know, kept and relayed).
"""

from __future__ import annotations

import struct
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from gossip.errors import DecodeError
from gossip.tables import extrows
from gossip.tables.extrows import EXT_EVENT, ExtensionRow
from gossip.tables.rows import (
    ID_BYTES,
    ClaimRow,
    EndpointRow,
    MemberRow,
    NetworkRow,
    decode_row,
)

EVENT = 0x90
NET_GOSSIP = 0x91
BULK_SYNC = 0x92
STATE = 0x93
FORMAT = 1

MAX_ROWS = 1 << 20
NET_GOSSIP_OVERHEAD = 1 + 1 + 1 + 2 + ID_BYTES + 5
"""Type byte, array header, format, bin header + id, rows array header (worst case)."""

_LIMITS: dict[str, int] = {
    "max_str_len": 1 << 16,
    "max_bin_len": 1 << 16,
    "max_array_len": MAX_ROWS,
    "max_map_len": 0,
    # No maps anywhere, in any protocol version: release 0.1.0 decodes with this same
    # limit (here and in ipsecrows), so one map in a later row kind would make it drop
    # the whole message. Rows are arrays (``extrows``).
    "max_ext_len": 0,
}

ClusterRow = NetworkRow | MemberRow | ClaimRow


@dataclass(frozen=True, slots=True)
class Event:
    row: ClusterRow


@dataclass(frozen=True, slots=True)
class NetGossip:
    net: str
    rows: tuple[EndpointRow, ...]
    ext: tuple[ExtensionRow, ...] = ()


@dataclass(frozen=True, slots=True)
class BulkSync:
    net: str
    sender: str
    unsolicited: bool
    rows: tuple[EndpointRow, ...]
    ext: tuple[ExtensionRow, ...] = ()


@dataclass(frozen=True, slots=True)
class State:
    rows: tuple[ClusterRow, ...]
    ext: tuple[ExtensionRow, ...] = ()


@dataclass(frozen=True, slots=True)
class ExtEvent:
    row: ExtensionRow


Message = Event | NetGossip | BulkSync | State | ExtEvent


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def _pack(obj: Any) -> bytes:
    out = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(out, bytes)
    return out


def _rows_array(items: Sequence[bytes]) -> bytes:
    # Rows are encoded once (rows.encode_row) and spliced in as they are.
    return _array_header(len(items)) + b"".join(items)


def encode_event(row: bytes) -> bytes:
    return bytes([EVENT]) + row


def encode_net_gossip(net: str, rows: Sequence[bytes], ext: Sequence[Any] = (),
                      ext_encoded: Sequence[bytes] = ()) -> bytes:
    """``ext``: the network's extension rows (msgpack-ready lists), a trailing field;
    ``ext_encoded``: more of them, each already encoded (``extrows.encode``)."""
    parts = [_pack(x) for x in ext] + list(ext_encoded)
    tail = _rows_array(parts) if parts else b""
    return (bytes([NET_GOSSIP]) + _array_header(4 if parts else 3) + _pack(FORMAT) + _pack(bytes.fromhex(net))
            + _rows_array(rows) + tail)


def encode_bulk_sync(net: str, sender: str, unsolicited: bool, rows: Sequence[bytes], ext: Sequence[Any] = ()) -> bytes:
    head = (_array_header(6 if ext else 5) + _pack(FORMAT) + _pack(bytes.fromhex(net)) + _pack(sender)
            + _pack(unsolicited))
    return bytes([BULK_SYNC]) + head + _rows_array(rows) + (_pack(list(ext)) if ext else b"")


def encode_state(rows: Sequence[bytes], extra: Sequence[Any] = ()) -> bytes:
    """``extra``: trailing fields (``[2]`` the IPsec key rows, ``gossip.tables.ipsecrows``;
    ``[3]`` extension rows); decoders that predate them ignore them."""
    head = _array_header(2 + len(extra)) + _pack(FORMAT) + _rows_array(rows)
    return bytes([STATE]) + head + b"".join(_pack(x) for x in extra)


def _ext_field(fields: list[Any], index: int, now: float, net: str = "") -> tuple[ExtensionRow, ...]:
    return tuple(extrows.decode_list(fields[index], now, net)) if len(fields) > index else ()


def _unpack(body: bytes) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True, **_LIMITS)
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise DecodeError(f"tables message: {exc}") from exc


def _net_id(v: Any) -> str:
    if not isinstance(v, bytes) or len(v) != ID_BYTES:
        raise DecodeError("tables message: bad network id")
    return v.hex()


def _format(v: Any) -> None:
    # Newer formats may add fields at the end; an older format is refused.
    if not isinstance(v, int) or isinstance(v, bool) or v < FORMAT:
        raise DecodeError(f"tables message: unsupported format {v!r}")


def _list(v: Any, n: int, what: str) -> list[Any]:
    if not isinstance(v, list) or len(v) < n:
        raise DecodeError(f"tables message: bad {what}")
    return v


def _cluster_row(obj: Any, now: float) -> ClusterRow:
    row = decode_row(obj, now)
    if isinstance(row, EndpointRow):  # pragma: no cover - decode_row refuses it without net
        raise DecodeError("tables message: endpoint row outside a network")
    return row


def _endpoint_rows(objs: Any, now: float, net: str) -> tuple[EndpointRow, ...]:
    out: list[EndpointRow] = []
    for obj in _list(objs, 0, "rows"):
        row = decode_row(obj, now, net)
        if not isinstance(row, EndpointRow):
            raise DecodeError("tables message: non-endpoint row in a network message")
        out.append(row)
    return tuple(out)


def decode(payload: bytes, now: float) -> Message | None:
    """A whole message, validated before anything is applied; None for a private type
    that is not ours. Raises DecodeError on malformed input."""
    if not payload:
        raise DecodeError("tables message: empty")
    kind, body = payload[0], payload[1:]
    if kind not in (EVENT, NET_GOSSIP, BULK_SYNC, STATE, EXT_EVENT):
        return None
    obj = _unpack(body)
    if kind == EVENT:
        return Event(_cluster_row(obj, now))
    if kind == EXT_EVENT:
        return ExtEvent(extrows.decode(obj, now))
    if kind == NET_GOSSIP:
        fields = _list(obj, 3, "net gossip")
        _format(fields[0])
        net = _net_id(fields[1])
        return NetGossip(net, _endpoint_rows(fields[2], now, net), _ext_field(fields, 3, now, net))
    if kind == BULK_SYNC:
        fields = _list(obj, 5, "bulk sync")
        _format(fields[0])
        net = _net_id(fields[1])
        sender, unsolicited = fields[2], fields[3]
        if not isinstance(sender, str) or not sender or not isinstance(unsolicited, bool):
            raise DecodeError("tables message: bad bulk sync header")
        return BulkSync(net, sender, unsolicited, _endpoint_rows(fields[4], now, net),
                        _ext_field(fields, 5, now, net))
    fields = _list(obj, 2, "state")
    _format(fields[0])
    return State(tuple(_cluster_row(o, now) for o in _list(fields[1], 0, "rows")), _ext_field(fields, 3, now))


def extension_rows(msg: Message | None, push_pull: bool, joined: Container[str]) -> tuple[tuple[ExtensionRow, ...], bool]:
    """The extension rows a received message hands the replica, and whether they came as
    a piggybacked event (to be re-broadcast). Scoped rows count only for networks the node
    takes part in (``joined``); a push/pull carries STATE only."""
    if msg is None or (push_pull and not isinstance(msg, State)):
        return (), False
    if isinstance(msg, ExtEvent):
        return (msg.row,), True
    if isinstance(msg, State) or (isinstance(msg, NetGossip | BulkSync) and msg.net in joined):
        return msg.ext, False
    return (), False
