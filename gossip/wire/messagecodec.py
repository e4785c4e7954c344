"""memberlist message bodies: one message <-> ``[type byte][Go-dialect msgpack]``.

Owns: the msgpack of every message type of memberlist 0.2.2 (ping, indirect ping,
ack, nack, suspect, alive, dead, push/pull with its node states, user, err), the
``[9]{Algo, Buf}`` body of the LZW compress wrapper, the stream form of a user
message (``[8]{UserMsgLen}`` + payload) and the size of a stream message's msgpack
head (for incremental stream framing).
Does not: frame messages into packets or streams (compound, CRC, label,
encryption: ``codec.py``, which re-exports ``encode``/``decode``), decide what to
send, or do I/O.

Dialect (memberlist 0.2.2 / go-msgpack 0.5.5; docs/wire.md, "What we send"): maps
keyed by Go field names in sorted order, byte slices as msgpack *str*
(``use_bin_type=False``), minimal ints, ``omitempty`` Source* fields on pings.
Decoding is tolerant like Go (any key order, unknown keys ignored, missing keys =
zero values, bin or str for bytes, trailing bytes ignored) but type-strict: every
failure is a :class:`~gossip.errors.DecodeError`, never another exception, with
bounded memory. Member names and meta follow ``gossip/limits.py`` (``valid_name``,
``META_MAX``): a message naming an inadmissible member is refused; a push/pull
leaves out just that member. Field sets: memberlist 0.2.2 ``net.go`` (the structs ping,
indirectPingReq, ackResp, nackResp, suspect, alive, dead, pushPullHeader,
pushNodeState, userMsgHeader, errResp).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from gossip.errors import DecodeError
from gossip.limits import META_MAX, valid_name
from gossip.wire import lzw
from gossip.wire.messages import (
    Ack,
    Alive,
    Dead,
    Err,
    IndirectPing,
    Message,
    MessageType,
    Nack,
    NodeState,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    UserMsg,
)

MAX_PUSH_NODES = 1 << 20
MAX_USER_STATE = 20 * 1024 * 1024
MAX_USER_MSG = 20 * 1024 * 1024
VSN_LEN = 6

_U8 = 0xFF
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF

_T_PING = int(MessageType.PING)
_T_INDIRECT = int(MessageType.INDIRECT_PING)
_T_ACK = int(MessageType.ACK)
_T_SUSPECT = int(MessageType.SUSPECT)
_T_ALIVE = int(MessageType.ALIVE)
_T_DEAD = int(MessageType.DEAD)
_T_PUSH_PULL = int(MessageType.PUSH_PULL)
_T_USER = int(MessageType.USER)
_T_NACK = int(MessageType.NACK)
_T_ERR = int(MessageType.ERR)

_PACKET_TYPES = frozenset(
    (_T_PING, _T_INDIRECT, _T_ACK, _T_SUSPECT, _T_ALIVE, _T_DEAD, _T_USER, _T_NACK)
)
"""Message types memberlist's packet handler accepts (besides compound/compress)."""
STREAM_TYPES = frozenset((_T_PING, _T_ACK, _T_PUSH_PULL, _T_USER, _T_ERR))
"""Stream types after decrypt/decompress: push/pull, TCP ping + ack reply, user, err."""

# msgpack limits: never let a length header make the unpacker preallocate much.
_UNPACK_LIMITS: dict[str, int] = {
    "max_str_len": 64 * 1024 * 1024,
    "max_bin_len": 64 * 1024 * 1024,
    "max_array_len": 1 << 16,
    "max_map_len": 1 << 12,
    "max_ext_len": 1 << 16,
}

_packer = msgpack.Packer(use_bin_type=False)
_pack: Callable[[Any], bytes] = _packer.pack


# ------------------------------------------------------------------ msgpack helpers


def _unpacker(data: bytes) -> msgpack.Unpacker:
    up = msgpack.Unpacker(raw=True, max_buffer_size=len(data) + 1, **_UNPACK_LIMITS)
    up.feed(data)
    return up


def _next_obj(up: msgpack.Unpacker, what: str) -> Any:
    """Next object from a fully fed unpacker; DecodeError if truncated or malformed."""
    try:
        return up.unpack()
    except msgpack.OutOfData:
        raise DecodeError(f"{what}: truncated msgpack") from None
    except Exception as e:  # msgpack raises a zoo of ValueError/TypeError subclasses
        raise DecodeError(f"{what}: bad msgpack: {e}") from None


def _next_map(up: msgpack.Unpacker, what: str) -> dict[bytes, Any]:
    obj = _next_obj(up, what)
    if type(obj) is not dict:
        raise DecodeError(f"{what}: expected a msgpack map, got {type(obj).__name__}")
    return obj


def _body_map(data: bytes, what: str) -> dict[bytes, Any]:
    """The msgpack map after the type byte; trailing bytes are ignored like Go."""
    try:
        obj = msgpack.unpackb(memoryview(data)[1:], raw=True, **_UNPACK_LIMITS)
    except msgpack.ExtraData as e:
        obj = e.unpacked
    except Exception as e:
        raise DecodeError(f"{what}: bad msgpack: {e}") from None
    if type(obj) is not dict:
        raise DecodeError(f"{what}: expected a msgpack map, got {type(obj).__name__}")
    return obj


def _uint(d: dict[bytes, Any], key: bytes, maxv: int, what: str) -> int:
    v = d.get(key)
    if v is None:  # missing or nil: Go's zero value
        return 0
    if type(v) is not int or v < 0 or v > maxv:
        raise DecodeError(f"{what}.{key.decode()}: expected an integer 0..{maxv}, got {v!r:.40}")
    return v


def _bytes(d: dict[bytes, Any], key: bytes, what: str) -> bytes:
    v = d.get(key)
    if v is None:
        return b""
    if type(v) is not bytes:
        raise DecodeError(f"{what}.{key.decode()}: expected bytes, got {type(v).__name__}")
    return v


def _opt_bytes(d: dict[bytes, Any], key: bytes, what: str) -> bytes | None:
    v = d.get(key)
    if v is None:
        return None
    if type(v) is not bytes:
        raise DecodeError(f"{what}.{key.decode()}: expected bytes, got {type(v).__name__}")
    return v


def _str(d: dict[bytes, Any], key: bytes, what: str) -> str:
    v = d.get(key)
    if v is None:
        return ""
    if type(v) is not bytes:
        raise DecodeError(f"{what}.{key.decode()}: expected a string, got {type(v).__name__}")
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{what}.{key.decode()}: not valid UTF-8") from None


class _Inadmissible(DecodeError):
    """Well-formed, but a member name or meta that no member may have: the message is
    refused; inside a push/pull only that member is left out (a serf peer that took a
    hostile member must not lose anti-entropy with us)."""


def _name(d: dict[bytes, Any], key: bytes, what: str) -> str:
    """A member name: the one rule of ``gossip.limits.valid_name``, at decode time."""
    v = _str(d, key, what)
    if not valid_name(v):
        raise _Inadmissible(f"{what}.{key.decode()}: not a valid member name: {v!r:.40}")
    return v


def _meta(d: dict[bytes, Any], key: bytes, what: str) -> bytes:
    v = _bytes(d, key, what)
    if len(v) > META_MAX:
        raise _Inadmissible(f"{what}.{key.decode()}: {len(v)} bytes of meta (max {META_MAX})")
    return v


def _opt_str(d: dict[bytes, Any], key: bytes, what: str) -> str | None:
    if d.get(key) is None:
        return None
    return _str(d, key, what)


def _opt_uint(d: dict[bytes, Any], key: bytes, maxv: int, what: str) -> int | None:
    if d.get(key) is None:
        return None
    return _uint(d, key, maxv, what)


def _bool(d: dict[bytes, Any], key: bytes, what: str) -> bool:
    v = d.get(key)
    if v is None:
        return False
    if v is True or v is False:
        return v
    if type(v) is int and v in (0, 1):  # go-msgpack accepts 0/1 for bool
        return v == 1
    raise DecodeError(f"{what}.{key.decode()}: expected a bool, got {v!r:.40}")


def _ip(d: dict[bytes, Any], key: bytes, what: str) -> bytes:
    v = _bytes(d, key, what)
    # Go would store any byte string as a net.IP and fail later; a node address
    # must be IPv4 (4 bytes) or IPv6 / IPv4-mapped (16 bytes).
    if len(v) not in (4, 16):
        raise DecodeError(f"{what}.{key.decode()}: {len(v)}-byte address (want 4 or 16)")
    return v


def _opt_ip(d: dict[bytes, Any], key: bytes, what: str) -> bytes | None:
    v = _opt_bytes(d, key, what)
    if v is not None and len(v) not in (0, 4, 16):
        raise DecodeError(f"{what}.{key.decode()}: {len(v)}-byte address (want 4 or 16)")
    return v


def _vsn(d: dict[bytes, Any], key: bytes, what: str) -> bytes:
    v = _bytes(d, key, what)
    # 1..5 bytes crash memberlist 0.2.2 (index out of range; docs/wire.md, "Serf hazards"):
    # refuse them here so we can never store and re-gossip one to serf.
    if 0 < len(v) < VSN_LEN:
        raise DecodeError(f"{what}.Vsn: {len(v)} bytes (must be empty or >= {VSN_LEN})")
    return v


# ------------------------------------------------------------------ message decoders


def _dec_ping(data: bytes) -> Ping:
    d = _body_map(data, "ping")
    return Ping(
        seq_no=_uint(d, b"SeqNo", _U32, "ping"),
        node=_str(d, b"Node", "ping"),
        source_addr=_opt_ip(d, b"SourceAddr", "ping"),
        source_port=_opt_uint(d, b"SourcePort", _U16, "ping"),
        source_node=_opt_str(d, b"SourceNode", "ping"),
    )


def _dec_indirect(data: bytes) -> IndirectPing:
    w = "indirectPing"
    d = _body_map(data, w)
    return IndirectPing(
        seq_no=_uint(d, b"SeqNo", _U32, w),
        target=_ip(d, b"Target", w),
        port=_uint(d, b"Port", _U16, w),
        node=_str(d, b"Node", w),
        nack=_bool(d, b"Nack", w),
        source_addr=_opt_ip(d, b"SourceAddr", w),
        source_port=_opt_uint(d, b"SourcePort", _U16, w),
        source_node=_opt_str(d, b"SourceNode", w),
    )


def _dec_ack(data: bytes) -> Ack:
    d = _body_map(data, "ack")
    return Ack(seq_no=_uint(d, b"SeqNo", _U32, "ack"), payload=_opt_bytes(d, b"Payload", "ack"))


def _dec_nack(data: bytes) -> Nack:
    d = _body_map(data, "nack")
    return Nack(seq_no=_uint(d, b"SeqNo", _U32, "nack"))


def _dec_suspect(data: bytes) -> Suspect:
    d = _body_map(data, "suspect")
    return Suspect(
        incarnation=_uint(d, b"Incarnation", _U32, "suspect"),
        node=_name(d, b"Node", "suspect"),
        from_=_name(d, b"From", "suspect"),
    )


def _dec_dead(data: bytes) -> Dead:
    d = _body_map(data, "dead")
    return Dead(
        incarnation=_uint(d, b"Incarnation", _U32, "dead"),
        node=_name(d, b"Node", "dead"),
        from_=_name(d, b"From", "dead"),
    )


def _dec_alive(data: bytes) -> Alive:
    d = _body_map(data, "alive")
    return Alive(
        incarnation=_uint(d, b"Incarnation", _U32, "alive"),
        node=_name(d, b"Node", "alive"),
        addr=_ip(d, b"Addr", "alive"),
        port=_uint(d, b"Port", _U16, "alive"),
        meta=_meta(d, b"Meta", "alive"),
        vsn=_vsn(d, b"Vsn", "alive"),
    )


def _dec_err(data: bytes) -> Err:
    return Err(error=_str(_body_map(data, "err"), b"Error", "err"))


def _dec_user_udp(data: bytes) -> UserMsg:
    return UserMsg(payload=bytes(data[1:]))


_NODE_STATES = tuple(NodeState)


def _node_state(d: dict[bytes, Any]) -> PushNodeState:
    # Fast path for the well-formed state every peer sends (a 10,000-node push/pull
    # has 10,000 of them); anything else takes the checked path below, which gives
    # the same value or the precise error.
    try:
        name = d[b"Name"]
        addr = d[b"Addr"]
        port = d[b"Port"]
        meta = d[b"Meta"]
        inc = d[b"Incarnation"]
        state = d[b"State"]
        vsn = d[b"Vsn"]
    except KeyError:
        return _node_state_checked(d)
    if (
        type(name) is bytes
        and type(addr) is bytes
        and (len(addr) == 4 or len(addr) == 16)
        and type(port) is int
        and 0 <= port <= _U16
        and type(meta) is bytes
        and len(meta) <= META_MAX
        and type(inc) is int
        and 0 <= inc <= _U32
        and type(state) is int
        and 0 <= state <= 3
        and type(vsn) is bytes
        and (not vsn or len(vsn) >= VSN_LEN)
    ):
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            return _node_state_checked(d)  # raises the precise error
        if valid_name(text):
            return PushNodeState(text, addr, port, meta, inc, _NODE_STATES[state], vsn)
    return _node_state_checked(d)
    return _node_state_checked(d)


def _node_state_checked(d: dict[bytes, Any]) -> PushNodeState:
    w = "pushNodeState"
    state = _uint(d, b"State", _U8, w)
    if state > NodeState.LEFT:
        raise DecodeError(f"{w}.State: unknown state {state}")
    return PushNodeState(
        name=_name(d, b"Name", w),
        addr=_ip(d, b"Addr", w),
        port=_uint(d, b"Port", _U16, w),
        meta=_meta(d, b"Meta", w),
        incarnation=_uint(d, b"Incarnation", _U32, w),
        state=NodeState(state),
        vsn=_vsn(d, b"Vsn", w),
    )


def _push_pull_header(d: dict[bytes, Any]) -> tuple[bool, int, int]:
    w = "pushPull"
    return (
        _bool(d, b"Join", w),
        _uint(d, b"Nodes", MAX_PUSH_NODES, w),
        _uint(d, b"UserStateLen", MAX_USER_STATE, w),
    )


_BIG_BODY = 16 * 1024
"""Push/pull bodies at least this long are memoised (``_dec_push_pull``; ``lzw.compress``
memoises their compression)."""
_RECENT_PUSH_PULL_BYTES = 8 * 1024 * 1024
"""The memo of recent large push/pulls holds at most this many body bytes (each entry
keeps its body and its decoded value, about twice that in all)."""
_MEMO_MAX_BODY = _RECENT_PUSH_PULL_BYTES // 2
"""Bodies longer than this are decoded plainly and not memoised: a converged
10,000-member state is ~1 MB; what is longer is mostly user state (up to 20 MiB from
any TCP peer), which no memo helps and each copy of which costs RSS."""
_recent_push_pulls: dict[bytes, PushPull] = {}
_recent_push_pull_bytes = 0


def _dec_push_pull(data: bytes) -> PushPull:
    # Large states are decoded once per distinct body: a converged cluster's members
    # send identical states (and a simulator runs all of them in one process).
    global _recent_push_pull_bytes
    if len(data) < _BIG_BODY or len(data) > _MEMO_MAX_BODY:
        return _dec_push_pull_body(data)
    msg = _recent_push_pulls.get(data)
    if msg is None:
        try:
            msg = _dec_push_pull_states_memo(data)
        except DecodeError:
            msg = _dec_push_pull_body(data)  # the plain path gives the exact error
        _recent_push_pulls[data] = msg
        _recent_push_pull_bytes += len(data)
        while _recent_push_pull_bytes > _RECENT_PUSH_PULL_BYTES:  # bounded by bytes, not count
            _recent_push_pull_bytes -= len(oldest := next(iter(_recent_push_pulls)))
            del _recent_push_pulls[oldest]
    return msg


def _dec_push_pull_body(data: bytes) -> PushPull:
    # The whole stream is fed and its type byte skipped: a copy of the body without it
    # would be one more buffer of up to 20 MiB (user state) per push/pull.
    up = _unpacker(data)
    up.read_bytes(1)
    join, count, user_len = _push_pull_header(_next_map(up, "pushPull header"))
    if count > len(data) - 1:  # each node state needs at least one byte
        raise DecodeError(f"pushPull: {count} nodes cannot fit in {len(data) - 1} bytes")
    states: list[PushNodeState] = []
    for _ in range(count):
        d = _next_map(up, "pushNodeState")
        try:
            states.append(_node_state(d))
        except _Inadmissible:
            continue
    nodes = tuple(states)
    off = up.tell()
    del up  # its copy of the stream goes before the user state's is made
    if len(data) - off < user_len:
        raise DecodeError("pushPull: user state truncated")
    return PushPull(join=join, nodes=nodes, user_state=bytes(memoryview(data)[off : off + user_len]))


_prev_states: dict[bytes, PushNodeState] = {}
"""The node states of the last large push/pull decoded, by their encoded bytes."""


def _dec_push_pull_states_memo(data: bytes) -> PushPull:
    """``_dec_push_pull_body`` for large bodies, reusing the states of the previous one.

    Two large push/pulls in a row (a simulator runs every node in one process; an
    agent's exchanges a push/pull interval apart) differ in a few members: a state whose
    encoded map equals one of the previous body's is that same (immutable) value, found
    by skipping over its bytes instead of unpacking and checking a map of seven keys
    (at 10,000 nodes this decode was ~11 % of a simulated run). Only the states of the
    last body are kept, so the memory is bounded by one push/pull's. Any error raises
    DecodeError and the caller decodes with the plain path for its exact message.
    """
    global _prev_states
    prev = _prev_states
    cur: dict[bytes, PushNodeState] = {}
    body = bytes(memoryview(data)[1:])
    up = _unpacker(body)
    join, count, user_len = _push_pull_header(_next_map(up, "pushPull header"))
    if count > len(body):
        raise DecodeError("pushPull: too many nodes")
    states: list[PushNodeState] = []
    tell = up.tell
    skip = up.skip
    try:
        for _ in range(count):
            pos = tell()
            skip()
            raw = body[pos : tell()]
            st = prev.get(raw)
            if st is None:
                st = cur.get(raw)
            if st is None:
                try:
                    st = _node_state(_next_map(_unpacker(raw), "pushNodeState"))
                except _Inadmissible:
                    continue
            cur[raw] = st
            states.append(st)
    except DecodeError:
        raise
    except Exception as e:  # msgpack's errors while skipping: the plain path words them
        raise DecodeError(str(e)) from None
    off = tell()
    if len(body) - off < user_len:
        raise DecodeError("pushPull: user state truncated")
    _prev_states = cur
    return PushPull(join=join, nodes=tuple(states), user_state=body[off : off + user_len])


def _dec_user_stream(data: bytes) -> UserMsg:
    body = memoryview(data)[1:]
    up = _unpacker(bytes(body))
    n = _uint(_next_map(up, "userMsgHeader"), b"UserMsgLen", MAX_USER_MSG, "userMsgHeader")
    off = up.tell()
    if len(body) - off < n:
        raise DecodeError("user message truncated")
    return UserMsg(payload=bytes(body[off : off + n]))


_DECODERS: dict[int, Callable[[bytes], Message]] = {
    _T_PING: _dec_ping,
    _T_INDIRECT: _dec_indirect,
    _T_ACK: _dec_ack,
    _T_SUSPECT: _dec_suspect,
    _T_ALIVE: _dec_alive,
    _T_DEAD: _dec_dead,
    _T_PUSH_PULL: _dec_push_pull,
    _T_USER: _dec_user_udp,
    _T_NACK: _dec_nack,
    _T_ERR: _dec_err,
}


def decode(data: bytes) -> Message:
    """Decode one message ``[type][body]`` (not compound/compress/CRC/encrypt).

    ``[8]`` is the UDP user form (payload = the rest); ``[6]`` is a whole push/pull
    stream body. Raises :class:`DecodeError` on anything else.
    """
    if not data:
        raise DecodeError("empty message")
    fn = _DECODERS.get(data[0])
    if fn is None:
        raise DecodeError(f"message type {data[0]} is not a decodable message")
    return fn(data if type(data) is bytes else bytes(data))


# ------------------------------------------------------------------ message encoders


def _check(v: int, maxv: int, what: str) -> int:
    if not isinstance(v, int):
        raise ValueError(f"{what} must be an int, not {type(v).__name__}")
    if v < 0 or v > maxv:
        raise ValueError(f"{what}={v} out of range 0..{maxv}")
    return int(v)


def _check_vsn(vsn: bytes) -> bytes:
    if 0 < len(vsn) < VSN_LEN:
        raise ValueError(f"Vsn must be {VSN_LEN} bytes (a shorter one crashes serf 0.9.4)")
    return vsn


def _source_fields(
    d: dict[str, Any], addr: bytes | None, node: str | None, port: int | None
) -> None:
    # omitempty in Go: absent (None) fields are not sent. Sorted key order.
    if addr is not None:
        d["SourceAddr"] = addr
    if node is not None:
        d["SourceNode"] = node
    if port is not None:
        d["SourcePort"] = _check(port, _U16, "SourcePort")


def _node_state_map(n: PushNodeState) -> dict[str, Any]:
    return {
        "Addr": n.addr,
        "Incarnation": _check(n.incarnation, _U32, "Incarnation"),
        "Meta": n.meta,
        "Name": n.name,
        "Port": _check(n.port, _U16, "Port"),
        "State": int(n.state),
        "Vsn": _check_vsn(n.vsn),
    }


def encode_node_state(n: PushNodeState) -> bytes:
    """One push/pull node state (the msgpack map, no type byte)."""
    return _pack(_node_state_map(n))


def encode_push_pull_body(join: bool, states: Sequence[bytes], user_state: bytes) -> bytes:
    """``[6]`` + header + node states already encoded by :func:`encode_node_state` +
    user state: the same bytes as ``encode(PushPull(...))``, without building a
    ``PushNodeState`` per member (push/pull at 10,000 members)."""
    return encode_push_pull_joined(join, len(states), b"".join(states), user_state)


def encode_push_pull_joined(join: bool, count: int, states: bytes, user_state: bytes) -> bytes:
    """:func:`encode_push_pull_body` for ``count`` node states already joined into one
    buffer (a table that shares a converged image patches the image's joined states)."""
    if len(user_state) > MAX_USER_STATE:
        raise ValueError("push/pull user state larger than 20 MiB")
    head = _pack({"Join": bool(join), "Nodes": count, "UserStateLen": len(user_state)})
    return b"".join((b"\x06", head, states, user_state))


def _encode_push_pull(m: PushPull) -> bytes:
    return encode_push_pull_body(m.join, [encode_node_state(n) for n in m.nodes], m.user_state)


def encode(msg: Message) -> bytes:
    """``[type byte] + msgpack`` exactly as memberlist 0.2.2 would send it.

    UserMsg gives the UDP form ``[8] + payload``; PushPull the whole stream body.
    Raises ValueError for values Go could not send (out-of-range ints, short Vsn).
    """
    d: dict[str, Any]
    if type(msg) is Suspect or type(msg) is Dead:  # the bulk of gossip: tested first
        return _accusation(type(msg) is Suspect, msg.incarnation, msg.node, msg.from_)
    if isinstance(msg, Alive):
        return b"\x04" + _pack(
            {
                "Addr": msg.addr,
                "Incarnation": _check(msg.incarnation, _U32, "Incarnation"),
                "Meta": msg.meta,
                "Node": msg.node,
                "Port": _check(msg.port, _U16, "Port"),
                "Vsn": _check_vsn(msg.vsn),
            }
        )
    if isinstance(msg, Ping):
        d = {"Node": msg.node, "SeqNo": _check(msg.seq_no, _U32, "SeqNo")}
        _source_fields(d, msg.source_addr, msg.source_node, msg.source_port)
        return b"\x00" + _pack(d)
    if isinstance(msg, Ack):
        return b"\x02" + _pack(
            {"Payload": msg.payload, "SeqNo": _check(msg.seq_no, _U32, "SeqNo")}
        )
    if isinstance(msg, UserMsg):
        return b"\x08" + msg.payload
    if isinstance(msg, Suspect | Dead):
        t = b"\x03" if isinstance(msg, Suspect) else b"\x05"
        return t + _pack(
            {
                "From": msg.from_,
                "Incarnation": _check(msg.incarnation, _U32, "Incarnation"),
                "Node": msg.node,
            }
        )
    if isinstance(msg, IndirectPing):
        d = {
            "Nack": bool(msg.nack),
            "Node": msg.node,
            "Port": _check(msg.port, _U16, "Port"),
            "SeqNo": _check(msg.seq_no, _U32, "SeqNo"),
        }
        _source_fields(d, msg.source_addr, msg.source_node, msg.source_port)
        d["Target"] = msg.target
        return b"\x01" + _pack(d)
    if isinstance(msg, Nack):
        return b"\x0b" + _pack({"SeqNo": _check(msg.seq_no, _U32, "SeqNo")})
    if isinstance(msg, PushPull):
        return _encode_push_pull(msg)
    if isinstance(msg, Err):
        return b"\x0d" + _pack({"Error": msg.error})
    raise TypeError(f"not a wire message: {type(msg).__name__}")


def _accusation(suspect: bool, incarnation: int, node: str, from_: str) -> bytes:
    """The body of a suspect or dead message (one encoder for both)."""
    return (b"\x03" if suspect else b"\x05") + _pack(
        {"From": from_, "Incarnation": _check(incarnation, _U32, "Incarnation"), "Node": node}
    )


_ACCUSATION_MEMO = 4096
"""Suspect/dead encodings kept per process (≈ 0.6 MiB at most)."""
encode_accusation: Callable[[bool, int, str, str], bytes] = functools.lru_cache(maxsize=_ACCUSATION_MEMO)(
    _accusation
)
"""``encode(Suspect(incarnation, node, from_))`` (``suspect``) or ``encode(Dead(...))``,
memoised and without building the message value. The core queues one for every
suspicion, confirmation and death it hears of, and a failure storm repeats the same
few: at 10,000 simulated nodes each is queued by every node of the process (an agent
still skips building a frozen dataclass and a dict per message). ValueError for an
incarnation beyond uint32, as ``encode`` (errors are not memoised)."""


def encode_err(text: str) -> bytes:
    """``[13]{Error}`` (the reply to a stream we could not read)."""
    return encode(Err(error=text))


def encode_compress(buf: bytes) -> bytes:
    """``[9]{Algo: 0, Buf: lzw(buf)}``."""
    return b"\x09" + _pack({"Algo": 0, "Buf": lzw.compress(buf)})


def decompress(buf: bytes, limit: int) -> bytes:
    """The buffer inside a ``[9]`` compress message, at most ``limit`` bytes."""
    d = _body_map(buf, "compress")
    algo = _uint(d, b"Algo", _U8, "compress")
    if algo != 0:
        raise DecodeError(f"compress: unknown algorithm {algo}")
    out = lzw.decompress(_bytes(d, b"Buf", "compress"), limit)
    if not out:
        # An empty inflated buffer crashes memberlist 0.2.2; it is never valid.
        raise DecodeError("compress: decompressed to nothing")
    return out


def decode_packet_part(buf: bytes) -> Message:
    """One message inside a packet (a leaf of compound/compress); DecodeError for a
    type that is not valid in a packet."""
    t = buf[0]
    if t not in _PACKET_TYPES:
        raise DecodeError(f"message type {t} is not valid inside a packet")
    return _DECODERS[t](buf)


def stream_body(msg: Message) -> bytes:
    """The body of ``msg`` as a stream carries it (a user message in its TCP form)."""
    if isinstance(msg, UserMsg):
        if len(msg.payload) > MAX_USER_MSG:
            raise ValueError("user message larger than 20 MiB")
        return b"\x08" + _pack({"UserMsgLen": len(msg.payload)}) + msg.payload
    if not isinstance(msg, Ping | Ack | PushPull | Err):
        raise ValueError(f"{type(msg).__name__} is not sent over a stream")
    return encode(msg)


def decode_stream_body(buf: bytes) -> Message:
    """One stream message body (decrypted and decompressed)."""
    t = buf[0]
    if t not in STREAM_TYPES:
        raise DecodeError(f"message type {t} is not a stream message")
    if t == _T_USER:
        return _dec_user_stream(buf)
    return _DECODERS[t](buf)


def stream_head_end(buf: bytes, start: int, t: int) -> int | None:
    """Where the stream message of type ``t`` whose msgpack head starts at ``start``
    ends (head + raw tail), or None if the head is not complete yet."""
    n = len(buf)
    up = msgpack.Unpacker(raw=True, max_buffer_size=n - start + 1, **_UNPACK_LIMITS)
    up.feed(bytes(buf[start:]) if type(buf) is not bytes else buf[start:])
    try:
        head = up.unpack()
        if type(head) is not dict:
            raise DecodeError(f"stream type {t}: expected a msgpack map")
        if t == _T_USER:
            tail = _uint(head, b"UserMsgLen", MAX_USER_MSG, "userMsgHeader")
        elif t == _T_PUSH_PULL:
            _, count, tail = _push_pull_header(head)
            for _ in range(count):
                if type(up.unpack()) is not dict:
                    raise DecodeError("pushNodeState: expected a msgpack map")
        else:
            tail = 0
    except msgpack.OutOfData:
        return None
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"stream type {t}: bad msgpack: {e}") from None
    end: int = start + up.tell() + tail
    return end
