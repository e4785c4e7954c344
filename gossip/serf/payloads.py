"""Serf's layer on top of memberlist: tags in node meta and serf user-message payloads.

Owns: encoding/decoding serf tags (node meta), leave/join intents, the serf message
envelope ``[serf type][msgpack]`` carried inside memberlist user messages (without
the 0x08 byte), queries and query responses including the key-management payloads.
Also the relay envelope (``[9]{DestAddr, DestName}`` + the message to forward).
Does not: keep serf's Lamport clocks or handle queries (``layer.py``), decide
answers (``queries.py``) or keep the recent-message buffers (``recent.py``).
Reference: serf 0.9.4 ``messages.go``, ``serf.go`` (encodeTags/decodeTags),
``query.go``, ``internal_query.go``; docs/wire.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from gossip.errors import DecodeError

TAGS_MAGIC = 0xFF
META_MAX_SIZE = 512
QUERY_FLAG_ACK = 1
"""Query flag: the sender wants an ack; response flag: this response is an ack."""
QUERY_FLAG_NO_BROADCAST = 2

_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_LIMITS: dict[str, int] = {
    "max_str_len": 1 << 20,
    "max_bin_len": 1 << 20,
    "max_array_len": 1 << 12,
    "max_map_len": 1 << 12,
    "max_ext_len": 1 << 10,
}


class SerfType(IntEnum):
    """First byte of a serf message (serf messages.go); values are protocol."""

    LEAVE = 0
    JOIN = 1
    PUSH_PULL = 2
    USER_EVENT = 3
    QUERY = 4
    QUERY_RESPONSE = 5
    CONFLICT_RESPONSE = 6
    KEY_REQUEST = 7
    KEY_RESPONSE = 8
    RELAY = 9


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=False)  # type: ignore[no-any-return]


def _unpack(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=True, **_LIMITS)
    except msgpack.ExtraData as e:  # Go ignores trailing bytes
        return e.unpacked
    except Exception as e:
        raise DecodeError(f"{what}: bad msgpack: {e}") from None


def _text(v: Any, what: str) -> str:
    if v is None:
        return ""
    if type(v) is not bytes:
        raise DecodeError(f"{what}: expected a string, got {type(v).__name__}")
    # Serf (Go) strings are arbitrary bytes; shown to people, so decode leniently.
    return v.decode("utf-8", "replace")


def _uint(v: Any, maxv: int, what: str) -> int:
    if v is None:
        return 0
    if type(v) is not int or not 0 <= v <= maxv:
        raise DecodeError(f"{what}: expected an integer 0..{maxv}")
    return v


def _raw(v: Any, what: str) -> bytes:
    if v is None:
        return b""
    if type(v) is not bytes:
        raise DecodeError(f"{what}: expected bytes, got {type(v).__name__}")
    return v


def _bool(v: Any, what: str) -> bool:
    if v is None:
        return False
    if v is True or v is False:
        return v
    if type(v) is int and v in (0, 1):
        return v == 1
    raise DecodeError(f"{what}: expected a bool")


# ------------------------------------------------------------------ tags


def encode_tags(tags: Mapping[str, str]) -> bytes:
    """Node meta for serf tags: ``0xFF`` + msgpack map (sorted keys, deterministic).

    ValueError if the result exceeds memberlist's 512-byte meta limit.
    """
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError("tag names and values must be strings")
    meta = bytes((TAGS_MAGIC,)) + _pack({k: tags[k] for k in sorted(tags)})
    if len(meta) > META_MAX_SIZE:
        raise ValueError(f"encoded tags are {len(meta)} bytes (max {META_MAX_SIZE})")
    return meta


def decode_tags(meta: bytes) -> dict[str, str]:
    """Serf tags from node meta; meta without the 0xFF magic is a legacy role name."""
    if not meta or meta[0] != TAGS_MAGIC:
        return {"role": bytes(meta).decode("utf-8", "replace")}
    obj = _unpack(meta[1:], "tags")
    if type(obj) is not dict:
        raise DecodeError("tags: expected a msgpack map")
    return {_text(k, "tag name"): _text(v, "tag value") for k, v in obj.items()}


# ------------------------------------------------------------------ envelope


def _msg(t: SerfType, body: dict[str, Any]) -> bytes:
    return bytes((t,)) + _pack(body)


def encode_leave_intent(ltime: int, node: str, prune: bool = False) -> bytes:
    """``[0]{LTime, Node, Prune}``; send before dead(self) so serf shows ``left``."""
    _uint(ltime, _U64, "LTime")
    return _msg(SerfType.LEAVE, {"LTime": ltime, "Node": node, "Prune": bool(prune)})


def encode_join_intent(ltime: int, node: str) -> bytes:
    """``[1]{LTime, Node}``."""
    _uint(ltime, _U64, "LTime")
    return _msg(SerfType.JOIN, {"LTime": ltime, "Node": node})


def encode_user_event(ltime: int, name: str, payload: bytes, cc: bool = False) -> bytes:
    """``[3]{CC, LTime, Name, Payload}`` (serf user event)."""
    _uint(ltime, _U64, "LTime")
    return _msg(
        SerfType.USER_EVENT, {"CC": bool(cc), "LTime": ltime, "Name": name, "Payload": payload}
    )


def encode_query(
    *,
    ltime: int,
    query_id: int,
    addr: bytes,
    port: int,
    source_node: str,
    name: str,
    payload: bytes,
    timeout_ns: int,
    filters: Sequence[bytes] = (),
    want_ack: bool = True,
    relay_factor: int = 0,
) -> bytes:
    """``[4]{Addr, Filters, Flags, ID, LTime, Name, Payload, Port, RelayFactor, SourceNode,
    Timeout}``: a serf query; members answer by UDP to ``addr:port``."""
    _uint(ltime, _U64, "LTime")
    _uint(query_id, _U32, "ID")
    _uint(port, _U16, "Port")
    _uint(relay_factor, 0xFF, "RelayFactor")
    return _msg(
        SerfType.QUERY,
        {
            "Addr": addr,
            "Filters": list(filters) if filters else None,
            "Flags": QUERY_FLAG_ACK if want_ack else 0,
            "ID": query_id,
            "LTime": ltime,
            "Name": name,
            "Payload": payload,
            "Port": port,
            "RelayFactor": relay_factor,
            "SourceNode": source_node,
            "Timeout": timeout_ns,
        },
    )


def encode_relay(addr: bytes, port: int, dest_name: str, message: bytes) -> bytes:
    """``[9]{DestAddr: {IP, Port, Zone}, DestName}`` + ``message`` (a whole serf message):
    serf's relayed query response (``encodeRelayMessage``; Go's ``net.UDPAddr`` as a map)."""
    _uint(port, _U16, "Port")
    header = {"DestAddr": {"IP": addr, "Port": port, "Zone": ""}, "DestName": dest_name}
    return bytes((SerfType.RELAY,)) + _pack(header) + message


@dataclass(frozen=True, slots=True)
class Relay:
    """A decoded relay message: forward ``message`` to ``addr:port`` as a user message."""

    addr: bytes
    port: int
    dest_name: str
    message: bytes


def decode_relay(payload: bytes) -> Relay:
    """A ``[9]`` relay message; DecodeError if the header is not serf's."""
    t, f = decode_serf_message(payload)
    if t is not SerfType.RELAY:
        raise DecodeError("not a serf relay message")
    header = f["Header"]
    dest = header.get(b"DestAddr")
    if type(dest) is not dict:
        raise DecodeError("relay.DestAddr: expected a map")
    return Relay(
        addr=_raw(dest.get(b"IP"), "relay.DestAddr.IP"),
        port=_uint(dest.get(b"Port"), _U16, "relay.DestAddr.Port"),
        dest_name=_text(header.get(b"DestName"), "relay.DestName"),
        message=f["Message"],
    )


def encode_node_filter(names: Sequence[str]) -> bytes:
    """A query filter that addresses only the named nodes."""
    return b"\x00" + _pack(list(names))


def encode_tag_filter(tag: str, expr: str) -> bytes:
    """A query filter that addresses nodes whose tag ``tag`` matches the regex ``expr``."""
    return b"\x01" + _pack({"Tag": tag, "Expr": expr})


def _fields(t: SerfType, d: dict[bytes, Any]) -> dict[str, Any]:
    w = t.name.lower()
    if t in (SerfType.LEAVE, SerfType.JOIN):
        out: dict[str, Any] = {
            "LTime": _uint(d.get(b"LTime"), _U64, w),
            "Node": _text(d.get(b"Node"), w),
        }
        if t is SerfType.LEAVE:
            out["Prune"] = _bool(d.get(b"Prune"), w)
        return out
    if t is SerfType.USER_EVENT:
        return {
            "CC": _bool(d.get(b"CC"), w),
            "LTime": _uint(d.get(b"LTime"), _U64, w),
            "Name": _text(d.get(b"Name"), w),
            "Payload": _raw(d.get(b"Payload"), w),
        }
    if t is SerfType.QUERY_RESPONSE:
        return {
            "Flags": _uint(d.get(b"Flags"), _U32, w),
            "From": _text(d.get(b"From"), w),
            "ID": _uint(d.get(b"ID"), _U32, w),
            "LTime": _uint(d.get(b"LTime"), _U64, w),
            "Payload": _raw(d.get(b"Payload"), w),
        }
    if t is SerfType.KEY_REQUEST:
        return {"Key": _raw(d.get(b"Key"), w)}
    if t is SerfType.KEY_RESPONSE:
        keys = d.get(b"Keys")
        if keys is not None and type(keys) is not list:
            raise DecodeError(f"{w}.Keys: expected a list")
        return {
            "Keys": [_text(k, w) for k in keys or ()],
            "Message": _text(d.get(b"Message"), w),
            "PrimaryKey": _text(d.get(b"PrimaryKey"), w),
            "Result": _bool(d.get(b"Result"), w),
        }
    if t is SerfType.PUSH_PULL:
        left = d.get(b"LeftMembers")
        status = d.get(b"StatusLTimes")
        if left is not None and type(left) is not list:
            raise DecodeError(f"{w}.LeftMembers: expected a list")
        if status is not None and type(status) is not dict:
            raise DecodeError(f"{w}.StatusLTimes: expected a map")
        return {
            "EventLTime": _uint(d.get(b"EventLTime"), _U64, w),
            "Events": d.get(b"Events"),
            "LTime": _uint(d.get(b"LTime"), _U64, w),
            "LeftMembers": [_text(x, w) for x in left or ()],
            "QueryLTime": _uint(d.get(b"QueryLTime"), _U64, w),
            "StatusLTimes": {_text(k, w): _uint(v, _U64, w) for k, v in (status or {}).items()},
        }
    # conflict response, query (see decode_query): keys as text, values raw.
    return {_text(k, w): v for k, v in d.items()}


def decode_serf_message(payload: bytes) -> tuple[SerfType, dict[str, Any]]:
    """A memberlist user payload (without 0x08) -> (serf type, fields).

    Known messages get typed fields (str for names, bytes for payloads, int clocks);
    relay gives ``{"Header": raw map, "Message": inner bytes}``.
    """
    if not payload:
        raise DecodeError("empty serf message")
    try:
        t = SerfType(payload[0])
    except ValueError:
        raise DecodeError(f"unknown serf message type {payload[0]}") from None
    if t is SerfType.RELAY:
        up = msgpack.Unpacker(raw=True, max_buffer_size=len(payload), **_LIMITS)
        up.feed(payload[1:])
        try:
            header = up.unpack()
        except Exception as e:
            raise DecodeError(f"relay: bad header: {e}") from None
        if type(header) is not dict:
            raise DecodeError("relay: header is not a map")
        return t, {"Header": header, "Message": bytes(payload[1 + up.tell() :])}
    d = _unpack(payload[1:], t.name.lower())
    if type(d) is not dict:
        raise DecodeError(f"serf {t.name.lower()}: expected a msgpack map")
    return t, _fields(t, d)


# ------------------------------------------------------------------ queries


@dataclass(frozen=True, slots=True)
class Query:
    """A serf query (``[4]`` message). Responses go by UDP to ``addr:port``."""

    ltime: int
    id: int
    addr: bytes
    port: int
    source_node: str
    filters: tuple[bytes, ...]
    flags: int
    relay_factor: int
    timeout_ns: int
    name: str
    payload: bytes

    @property
    def wants_ack(self) -> bool:
        return bool(self.flags & QUERY_FLAG_ACK)


def decode_query(payload: bytes) -> Query:
    """Decode a serf query payload (starting with the serf type byte 4)."""
    if not payload or payload[0] != SerfType.QUERY:
        raise DecodeError("not a serf query")
    d = _unpack(payload[1:], "query")
    if type(d) is not dict:
        raise DecodeError("query: expected a msgpack map")
    filters = d.get(b"Filters")
    if filters is not None and (
        type(filters) is not list or any(type(f) is not bytes for f in filters)
    ):
        raise DecodeError("query.Filters: expected a list of byte strings")
    timeout = d.get(b"Timeout")
    if timeout is None:
        timeout = 0
    if type(timeout) is not int or not -(1 << 63) <= timeout < (1 << 63):
        raise DecodeError("query.Timeout: expected an int64")
    return Query(
        ltime=_uint(d.get(b"LTime"), _U64, "query.LTime"),
        id=_uint(d.get(b"ID"), _U32, "query.ID"),
        addr=_raw(d.get(b"Addr"), "query.Addr"),
        port=_uint(d.get(b"Port"), _U16, "query.Port"),
        source_node=_text(d.get(b"SourceNode"), "query.SourceNode"),
        filters=tuple(filters or ()),
        flags=_uint(d.get(b"Flags"), _U32, "query.Flags"),
        relay_factor=_uint(d.get(b"RelayFactor"), 0xFF, "query.RelayFactor"),
        timeout_ns=timeout,
        name=_text(d.get(b"Name"), "query.Name"),
        payload=_raw(d.get(b"Payload"), "query.Payload"),
    )


def encode_query_response(
    ltime: int, query_id: int, from_node: str, payload: bytes | None, ack: bool
) -> bytes:
    """``[5]{Flags, From, ID, LTime, Payload}``: an ack (Flags=1) or a response."""
    _uint(ltime, _U64, "LTime")
    _uint(query_id, _U32, "ID")
    return _msg(
        SerfType.QUERY_RESPONSE,
        {
            "Flags": QUERY_FLAG_ACK if ack else 0,
            "From": from_node,
            "ID": query_id,
            "LTime": ltime,
            "Payload": payload,
        },
    )


def encode_key_request(key: bytes | None) -> bytes:
    """``[7]{Key}``: payload of ``_serf_install-key``/``use-key``/``remove-key`` queries."""
    return _msg(SerfType.KEY_REQUEST, {"Key": key})


def decode_key_request(payload: bytes) -> bytes:
    t, f = decode_serf_message(payload)
    if t is not SerfType.KEY_REQUEST:
        raise DecodeError("not a serf key request")
    key: bytes = f["Key"]
    return key


def encode_key_response(
    result: bool, message: str, keys: Sequence[str] = (), primary_key: str = ""
) -> bytes:
    """``[8]{Keys, Message, PrimaryKey, Result}``: our answer to a key query.

    ``keys`` are base64 strings (``list-keys``); ``Keys`` is nil when empty, as Go
    sends a nil slice.
    """
    return _msg(
        SerfType.KEY_RESPONSE,
        {
            "Keys": list(keys) if keys else None,
            "Message": message,
            "PrimaryKey": primary_key,
            "Result": bool(result),
        },
    )
