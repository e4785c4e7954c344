"""Wire codec unit tests: vectors captured from serf, Go-dialect tolerance, framing rules.

Vectors are hex dumps of messages captured from Debian's serf 0.9.4 (memberlist 0.2.2)
on loopback, annotated field by field; docs/wire.md, "Sources", says how they were taken.
"""

from __future__ import annotations

import re
import struct
import zlib

import msgpack
import pytest

from crypto.keyring import Keyring
from gossip import limits
from gossip.errors import DecodeError
from gossip.wire import codec as wire
from gossip.wire import lzw
from gossip.wire.messages import (
    DEFAULT_VSN,
    Ack,
    Alive,
    Dead,
    Err,
    IndirectPing,
    Nack,
    NodeState,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    UserMsg,
)

LOCAL = bytes([127, 0, 0, 1])
KEY = bytes(range(16))


def vec(spec: str) -> bytes:
    """Hex tokens and "quoted ASCII" tokens: ``vec('a4"Node"')`` is ``a4 4e 6f 64 65``."""
    out = bytearray()
    for text, hx in re.findall(r'"([^"]*)"|([0-9a-fA-F]+)', spec):
        out += text.encode() if text else bytes.fromhex(hx)
    return bytes(out)


def counter_nonce() -> Keyring:
    n = 0

    def source(k: int) -> bytes:
        nonlocal n
        n += 1
        return n.to_bytes(k, "big")

    return Keyring([KEY], source)


# ------------------------------- single messages captured from serf (docs/wire.md, Sources)

PING = vec(
    '00 85 a4"Node" a3"pyn" a5"SeqNo" 01 aa"SourceAddr" a4 7f000001 '
    'aa"SourceNode" a5"alpha" aa"SourcePort" cd1f0a'
)
INDIRECT = vec(
    '01 88 a4"Nack" c3 a4"Node" a5"gamma" a4"Port" cd1f0c a5"SeqNo" 0c aa"SourceAddr" '
    'a4 7f000001 aa"SourceNode" a4"beta" aa"SourcePort" cd1f0b a6"Target" a4 7f000001'
)
SERF_TAGS = vec('ff82 a4"role" a3"web" a2"dc" a4"east"')
ALIVE = vec(
    '04 86 a4"Addr" a4 7f000001 ab"Incarnation" 01 a4"Meta" b3'
    + SERF_TAGS.hex()
    + ' a4"Node" a5"alpha" a4"Port" cd1f0a a3"Vsn" a6 010502020505'
)
PUSH_PULL_OURS = vec(
    '06 83 a4"Join" c3 a5"Nodes" 01 ac"UserStateLen" 00 '
    '87 a4"Addr" a4 7f000001 ab"Incarnation" 01 a4"Meta" a2 ff80 a4"Name" a3"pyn" '
    'a4"Port" cd1f0e a5"State" 00 a3"Vsn" a6 010502020505'
)
ERR_REPLY = vec(
    '0d 81 a5"Error" da 003a "Remote state is encrypted and encryption is not configured"'
)
LZW_ACK_BUF = bytes.fromhex("0005083a05254c1e366fc29001566a4a99384ede140808")

VECTORS = [
    (
        "ping",
        PING,
        Ping(seq_no=1, node="pyn", source_addr=LOCAL, source_port=7946, source_node="alpha"),
    ),
    (
        "indirect_ping",
        INDIRECT,
        IndirectPing(
            seq_no=12,
            target=LOCAL,
            port=7948,
            node="gamma",
            nack=True,
            source_addr=LOCAL,
            source_port=7947,
            source_node="beta",
        ),
    ),
    ("nack", vec('0b 81 a5"SeqNo" 63'), Nack(seq_no=0x63)),
    (
        "suspect",
        vec('03 83 a4"From" a4"beta" ab"Incarnation" 01 a4"Node" a5"gamma"'),
        Suspect(incarnation=1, node="gamma", from_="beta"),
    ),
    (
        "dead",
        vec('05 83 a4"From" a4"beta" ab"Incarnation" 01 a4"Node" a4"beta"'),
        Dead(incarnation=1, node="beta", from_="beta"),
    ),
    (
        "alive",
        ALIVE,
        Alive(incarnation=1, node="alpha", addr=LOCAL, port=7946, meta=SERF_TAGS),
    ),
    (
        "push_pull",
        PUSH_PULL_OURS,
        PushPull(
            join=True,
            nodes=(
                PushNodeState(
                    name="pyn",
                    addr=LOCAL,
                    port=7950,
                    meta=b"\xff\x80",
                    incarnation=1,
                    state=NodeState.ALIVE,
                ),
            ),
        ),
    ),
    ("err", ERR_REPLY, Err(error="Remote state is encrypted and encryption is not configured")),
    ("user", b"\x08\x01\x82", UserMsg(payload=b"\x01\x82")),
]


@pytest.mark.parametrize(("name", "data", "msg"), VECTORS, ids=[v[0] for v in VECTORS])
def test_appendix_a_vectors_decode(name: str, data: bytes, msg: object) -> None:
    assert wire.decode(data) == msg


@pytest.mark.parametrize(("name", "data", "msg"), VECTORS, ids=[v[0] for v in VECTORS])
def test_appendix_a_vectors_encode_byte_exact(name: str, data: bytes, msg: object) -> None:
    assert wire.encode(msg) == data  # type: ignore[arg-type]


def test_appendix_a_ping_is_65_bytes() -> None:
    assert len(PING) == 65


def test_appendix_a_ack_with_130_byte_payload_uses_str16() -> None:
    payload = b"\x01" + bytes(129)
    data = wire.encode(Ack(seq_no=0x4D, payload=payload))
    assert data == vec('02 82 a7"Payload" da 0082') + payload + vec('a5"SeqNo" 4d')
    assert wire.decode(data) == Ack(0x4D, payload)


def test_ack_nil_payload_is_msgpack_nil() -> None:
    assert wire.encode(Ack(5, None)) == vec('02 82 a7"Payload" c0 a5"SeqNo" 05')
    assert wire.decode(wire.encode(Ack(5, b""))) == Ack(5, b"")


def test_ping_without_source_fields_omits_them() -> None:
    assert wire.encode(Ping(seq_no=3, node="x")) == vec('00 82 a4"Node" a1"x" a5"SeqNo" 03')


def test_tcp_ack_compressed_matches_serf_lzw_vector() -> None:
    # serf's TCP ack grew from 18 to 36 bytes when compressed: memberlist 0.2.2 wraps
    # every stream in compress when compression is on (docs/wire.md).
    data = wire.encode_stream(Ack(5, None), compress=True, keyring=None)
    assert data == vec('09 82 a4"Algo" 00 a3"Buf" b7') + LZW_ACK_BUF
    assert len(data) == 36
    assert wire.decode_stream(data, None) == Ack(5, None)


def test_err_reply_helper() -> None:
    assert wire.encode_err(wire.ENCRYPTED_BUT_NOT_CONFIGURED) == ERR_REPLY


# ---------------------------------------------------------------- Go-dialect tolerance


def _body(d: dict[str, object], *, bin_type: bool = False) -> bytes:
    return msgpack.packb(d, use_bin_type=bin_type)  # type: ignore[no-any-return]


def test_decode_accepts_any_key_order_and_unknown_keys() -> None:
    data = b"\x03" + _body({"Node": "n", "Extra": [1, 2], "From": "m", "Incarnation": 7})
    assert wire.decode(data) == Suspect(7, "n", "m")


def test_decode_missing_keys_are_zero_values() -> None:
    assert wire.decode(b"\x03" + _body({"Node": "n", "From": "m"})) == Suspect(0, "n", "m")
    with pytest.raises(DecodeError, match="member name"):  # names are not optional
        wire.decode(b"\x03\x80")
    assert wire.decode(b"\x0b\x80") == Nack(0)
    assert wire.decode(b"\x00\x80") == Ping(0, "")


def test_decode_accepts_bin_and_str8() -> None:
    # use_bin_type=True gives bin8 for bytes and str8 (d9) for 32..255-char strings.
    name = "n" * 40
    data = b"\x04" + _body(
        {"Addr": LOCAL, "Incarnation": 2, "Meta": b"\xff\x80", "Node": name, "Port": 1,
         "Vsn": DEFAULT_VSN},
        bin_type=True,
    )
    assert b"\xd9\x28" in data and b"\xc4\x04" in data
    assert wire.decode(data) == Alive(2, name, LOCAL, 1, b"\xff\x80", DEFAULT_VSN)


def test_decode_bool_accepts_zero_one() -> None:
    base = {"Node": "a", "Port": 1, "SeqNo": 1, "Target": LOCAL}
    assert wire.decode(b"\x01" + _body({**base, "Nack": 1})).nack is True  # type: ignore[union-attr]
    assert wire.decode(b"\x01" + _body({**base, "Nack": 0})).nack is False  # type: ignore[union-attr]
    with pytest.raises(DecodeError):
        wire.decode(b"\x01" + _body({**base, "Nack": 2}))


def test_decode_ignores_trailing_bytes_like_go() -> None:
    assert wire.decode(wire.encode(Nack(1)) + b"\xc1junk") == Nack(1)


@pytest.mark.parametrize(
    "body",
    [
        {"SeqNo": -1},
        {"SeqNo": 1 << 32},
        {"SeqNo": "1"},
        {"SeqNo": 1.0},
        {"SeqNo": True},
        {"SeqNo": 1, "Node": 5},
        {"SeqNo": 1, "Node": b"\xff\xfe"},
        {"SeqNo": 1, "SourcePort": 70000},
        {"SeqNo": 1, "SourceAddr": b"\x01\x02"},
    ],
)
def test_decode_is_type_strict(body: dict[str, object]) -> None:
    with pytest.raises(DecodeError):
        wire.decode(b"\x00" + _body(body))


@pytest.mark.parametrize("vsn_len", [1, 3, 5])
def test_short_vsn_is_refused_both_ways(vsn_len: int) -> None:
    # A 1..5-byte Vsn crashes serf 0.9.4 (docs/wire.md, "Serf hazards").
    bad = Alive(1, "a", LOCAL, 1, b"", bytes(vsn_len))
    with pytest.raises(ValueError):
        wire.encode(bad)
    raw = b"\x04" + _body(
        {"Addr": LOCAL, "Incarnation": 1, "Meta": b"", "Node": "a", "Port": 1,
         "Vsn": bytes(vsn_len)}
    )
    with pytest.raises(DecodeError):
        wire.decode(raw)


def test_empty_vsn_is_tolerated_like_go() -> None:
    raw = b"\x04" + _body({"Addr": LOCAL, "Node": "a"})
    assert wire.decode(raw) == Alive(0, "a", LOCAL, 0, b"", b"")


@pytest.mark.parametrize("addr_len", [0, 3, 5, 15])
def test_alive_address_must_be_ipv4_or_ipv6(addr_len: int) -> None:
    with pytest.raises(DecodeError):
        wire.decode(b"\x04" + _body({"Addr": bytes(addr_len), "Node": "a", "Vsn": DEFAULT_VSN}))


def test_push_pull_state_out_of_range_is_refused() -> None:
    node = {"Addr": LOCAL, "Name": "a", "State": 4, "Vsn": DEFAULT_VSN}
    data = b"\x06" + _body({"Join": False, "Nodes": 1, "UserStateLen": 0}) + _body(node)
    with pytest.raises(DecodeError):
        wire.decode(data)


def test_push_pull_header_limits() -> None:
    big_nodes = b"\x06" + _body({"Nodes": (1 << 20) + 1})
    with pytest.raises(DecodeError):
        wire.decode(big_nodes)
    more_than_fit = b"\x06" + _body({"Nodes": 1000}) + b"\x80"
    with pytest.raises(DecodeError):
        wire.decode(more_than_fit)
    huge_state = b"\x06" + _body({"UserStateLen": 20 * 1024 * 1024 + 1})
    with pytest.raises(DecodeError):
        wire.decode(huge_state)
    truncated_state = b"\x06" + _body({"UserStateLen": 10}) + b"123"
    with pytest.raises(DecodeError):
        wire.decode(truncated_state)


@pytest.mark.parametrize("t", [7, 9, 10, 12, 14, 200, 244])
def test_decode_refuses_framing_and_unknown_types(t: int) -> None:
    with pytest.raises(DecodeError):
        wire.decode(bytes([t]) + b"\x80")


def test_decode_empty_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        wire.decode(b"")


def test_encode_range_checks() -> None:
    with pytest.raises(ValueError):
        wire.encode(Ping(seq_no=1 << 32, node="a"))
    with pytest.raises(ValueError):
        wire.encode(Alive(1, "a", LOCAL, 70000, b""))
    with pytest.raises(ValueError):
        wire.encode(Suspect(-1, "a", "b"))


# ---------------------------------------------------------------- compound / packets


def test_compound_layout_matches_appendix() -> None:
    a, b = b"\x04" + bytes(0x52), b"\x04" + bytes(0x4F)
    assert wire.encode_compound([a, b])[:6] == vec("07 02 0053 0050")


def test_encode_compound_refuses_empty_and_too_many_parts() -> None:
    with pytest.raises(ValueError):
        wire.encode_compound([])
    with pytest.raises(ValueError):
        wire.encode_compound([b"\x0b\x80", b""])
    with pytest.raises(ValueError):
        wire.encode_compound([b"\x0b\x80"] * 256)
    assert len(wire.encode_compound([b"\x0b\x80"] * 255)) == 2 + 255 * 4
    with pytest.raises(ValueError):
        wire.encode_compound([b"\x08" + bytes(0x10000)])


def test_compound_overhead_constants() -> None:
    parts = [wire.encode(Nack(i)) for i in range(5)]
    total = sum(map(len, parts))
    assert len(wire.encode_compound(parts)) == (
        total + wire.COMPOUND_OVERHEAD + wire.COMPOUND_PART_OVERHEAD * len(parts)
    )


def test_encode_packet_single_part_is_bare() -> None:
    ping = wire.encode(Ping(1, "n"))
    assert wire.encode_packet([ping], compress=False, crc=False, keyring=None) == ping


def test_encode_packet_compresses_only_if_shorter() -> None:
    small = wire.encode(Nack(1))
    assert wire.encode_packet([small], compress=True, crc=False, keyring=None) == small
    alive = wire.encode(Alive(1, "node-with-a-name", LOCAL, 7946, b"\xff\x80"))
    pkt = wire.encode_packet([alive] * 5, compress=True, crc=False, keyring=None)
    assert pkt[0] == 9
    assert len(pkt) < len(wire.encode_compound([alive] * 5))
    assert wire.decode_packet(pkt, None) == [wire.decode(alive)] * 5


def test_encode_packet_crc_frame() -> None:
    msg = wire.encode(Nack(7))
    pkt = wire.encode_packet([msg], compress=False, crc=True, keyring=None)
    assert pkt == b"\x0c" + struct.pack(">I", zlib.crc32(msg)) + msg
    assert wire.decode_packet(pkt, None) == [Nack(7)]


def test_bad_crc_is_decode_error() -> None:
    pkt = bytearray(wire.encode_packet([wire.encode(Nack(7))], compress=False, crc=True,
                                       keyring=None))
    pkt[2] ^= 1
    with pytest.raises(DecodeError, match="CRC"):
        wire.decode_packet(bytes(pkt), None)


def test_encrypted_packet_layout_and_roundtrip() -> None:
    kr = counter_nonce()
    msg = wire.encode(Ping(9, "x"))
    pkt = wire.encode_packet([msg], compress=False, crc=True, keyring=kr)
    assert pkt[0] == 1 and len(pkt) == len(msg) + 5 + wire.ENCRYPT_OVERHEAD
    assert wire.decode_packet(pkt, kr) == [Ping(9, "x")]
    # A node holding another key refuses it (it would not parse as plaintext either).
    with pytest.raises(DecodeError):
        wire.decode_packet(pkt, Keyring([bytes(16)], lambda n: bytes(n)))


def test_plaintext_packet_at_encrypted_node() -> None:
    kr = counter_nonce()
    plain = wire.encode(Nack(3))
    with pytest.raises(DecodeError):
        wire.decode_packet(plain, kr)
    assert wire.decode_packet(plain, kr, require_encryption=False) == [Nack(3)]


def test_keyring_without_keys_means_no_encryption() -> None:
    empty = Keyring([], lambda n: bytes(n))
    plain = wire.encode(Nack(3))
    assert wire.encode_packet([plain], compress=False, crc=False, keyring=empty) == plain
    assert wire.decode_packet(plain, empty) == [Nack(3)]


def test_label_header_is_skipped_and_used_as_aad() -> None:
    plain = wire.encode(Nack(3))
    assert wire.decode_packet(b"\xf4\x03abc" + plain, None) == [Nack(3)]
    kr = counter_nonce()
    sealed = kr.seal(plain, b"abc")
    assert wire.decode_packet(b"\xf4\x03abc" + sealed, kr) == [Nack(3)]
    with pytest.raises(DecodeError):
        wire.decode_packet(b"\xf4\x00" + plain, None)
    with pytest.raises(DecodeError):
        wire.decode_packet(b"\xf4\x09abc", None)


def test_compound_bad_part_is_skipped_and_reported() -> None:
    good = wire.encode(Nack(1))
    pkt = wire.encode_compound([good, b"\x0b\xc1", b"\x06\x80", good])
    errors: list[DecodeError] = []
    assert wire.decode_packet(pkt, None, errors=errors) == [Nack(1), Nack(1)]
    assert len(errors) == 2


def test_compound_truncated_keeps_complete_parts() -> None:
    good = wire.encode(Nack(1))
    pkt = wire.encode_compound([good, good])[:-1]
    errors: list[DecodeError] = []
    assert wire.decode_packet(pkt, None, errors=errors) == [Nack(1)]
    assert errors


@pytest.mark.parametrize(
    "pkt",
    [
        b"",
        b"\x07\x01\x00\x00",  # one empty part: crashes serf 0.9.4
        b"\x07\x00",
        b"\x07",
        b"\x07\x02\x00\x01",
        b"\x0c" + struct.pack(">I", zlib.crc32(b"")),  # empty CRC payload: crashes serf
        b"\x09" + msgpack.packb({"Algo": 0, "Buf": lzw.compress(b"")}),  # inflates to nothing
        b"\x09" + msgpack.packb({"Algo": 1, "Buf": lzw.compress(b"\x0b\x80")}),
        b"\x06" + msgpack.packb({"Nodes": 0}),  # push/pull is not a packet message
        b"\x0d\x80",  # err is stream-only
        b"\x0a\x00\x00\x00\x00",
        wire.encode_compound([wire.encode_crc(wire.encode(Nack(1)))]),  # CRC only outermost
    ],
)
def test_invalid_packets_are_decode_errors(pkt: bytes) -> None:
    with pytest.raises(DecodeError):
        wire.decode_packet(pkt, None)


def test_nested_compound_and_compress_are_flattened_in_order() -> None:
    a, b, c = (wire.encode(Nack(i)) for i in range(3))
    inner = wire.encode_compress(wire.encode_compound([b, c]))
    pkt = wire.encode_compound([a, inner])
    assert wire.decode_packet(pkt, None) == [Nack(0), Nack(1), Nack(2)]


def test_nesting_depth_is_bounded() -> None:
    buf = wire.encode(Nack(1))
    for _ in range(wire.MAX_NESTING + 2):
        buf = wire.encode_compound([buf])
    with pytest.raises(DecodeError):
        wire.decode_packet(buf, None)


def test_memo_returns_equal_results_and_is_bounded() -> None:
    wire.clear_caches()
    pkt = wire.encode_packet([wire.encode(Nack(i)) for i in range(3)], compress=True,
                             crc=True, keyring=None)
    first = wire.decode_packet(pkt, None)
    again = wire.decode_packet(pkt, None)
    assert first == again and first[0] is again[0]
    memo = wire._plain_memo
    assert memo.hits >= 1 and memo.max_bytes == limits.DECODE_MEMO_BYTES


def test_memo_is_bounded_by_bytes_not_entries() -> None:
    """Issue 18, item 3: small datagrams that inflate to a lot are weighed by what
    they inflate to, so the memo keeps at most DECODE_MEMO_BYTES of them."""
    wire.clear_caches()
    memo = wire._plain_memo
    for i in range(200):
        big = b"\x08" + i.to_bytes(4, "big") + bytes(60_000)  # ~60 KB each, ~300 B compressed
        pkt = wire.encode_packet([big, big, big], compress=True, crc=False, keyring=None)
        assert len(pkt) <= 2048
        assert len(wire.decode_packet(pkt, None)) == 3
        assert memo.held <= limits.DECODE_MEMO_BYTES
    assert 0 < len(memo) < 200
    wire.clear_caches()


def test_packet_memo_can_be_made_smaller_for_an_agent() -> None:
    """agent.__main__ bounds the memo to what an agent needs; the bound holds, and
    decoding is unchanged (a datagram heavier than the bound is simply not kept)."""
    try:
        wire.set_packet_memo_bytes(4096)
        for i in range(100):
            pkt = wire.encode_packet([wire.encode(Nack(i)), wire.encode(Nack(i + 1))], compress=False,
                                     crc=False, keyring=None)
            assert wire.decode_packet(pkt, None) == [Nack(i), Nack(i + 1)]
            assert wire._plain_memo.held <= 4096
        assert 0 < len(wire._plain_memo) < 100
        wire.set_packet_memo_bytes(0)
        assert wire.decode_packet(pkt, None) == [Nack(99), Nack(100)] and len(wire._plain_memo) == 0
    finally:
        wire.set_packet_memo_bytes(limits.DECODE_MEMO_BYTES)
    assert wire._plain_memo.max_bytes == limits.DECODE_MEMO_BYTES


def test_byte_memo_evicts_oldest_and_skips_what_alone_is_too_big() -> None:
    from gossip.wire.memo import ByteMemo

    memo: ByteMemo[int] = ByteMemo(100)
    memo.put(b"a", 1, 60)
    memo.put(b"b", 2, 30)
    memo.put(b"c", 3, 20)  # 110 > 100: "a" goes
    assert memo.get(b"a") is None and memo.get(b"b") == 2 and memo.get(b"c") == 3
    assert memo.held == 50
    memo.put(b"d", 4, 101)
    assert memo.get(b"d") is None and memo.held == 50


# ---------------------------------------------------------------- streams


def test_stream_user_message_tcp_form() -> None:
    data = wire.encode_stream(UserMsg(b"hello"), compress=False, keyring=None)
    assert data == vec('08 81 aa"UserMsgLen" 05 "hello"')
    assert wire.decode_stream(data, None) == UserMsg(b"hello")
    assert wire.stream_message_size(data + b"extra") == len(data)


def test_stream_compress_always_wraps_even_if_longer() -> None:
    ping = wire.encode_stream(Ping(1, "a"), compress=True, keyring=None)
    assert ping[0] == 9 and len(ping) > len(wire.encode(Ping(1, "a")))


def test_stream_refuses_packet_only_messages() -> None:
    for msg in (Nack(1), Alive(1, "a", LOCAL, 1, b""), Suspect(1, "a", "b")):
        with pytest.raises(ValueError):
            wire.encode_stream(msg, compress=False, keyring=None)


def test_encrypted_stream_layout() -> None:
    kr = counter_nonce()
    pp = PushPull(join=False, nodes=(), user_state=bytes(200))
    plain = wire.encode_stream(pp, compress=False, keyring=None)
    data = wire.encode_stream(pp, compress=False, keyring=kr)
    length = len(plain) + 29
    assert data[:5] == b"\x0a" + length.to_bytes(4, "big")
    assert len(data) == 5 + length
    assert data[5] == 1
    # AAD is the 5-byte header: flipping the length breaks authentication.
    assert kr.open(data[5:], data[:5]) == plain
    assert wire.decode_stream(data, kr) == pp
    assert wire.stream_message_size(data) == len(data)


def test_encrypted_stream_at_unencrypted_node_gets_serf_error_text() -> None:
    data = wire.encode_stream(Ping(1, "a"), compress=True, keyring=counter_nonce())
    with pytest.raises(DecodeError, match="Remote state is encrypted and encryption is not"):
        wire.decode_stream(data, None)


def test_plaintext_stream_at_encrypted_node() -> None:
    data = wire.encode_stream(Ping(1, "a"), compress=True, keyring=None)
    kr = counter_nonce()
    with pytest.raises(DecodeError, match="not encrypted"):
        wire.decode_stream(data, kr)
    assert wire.decode_stream(data, kr, require_encryption=False) == Ping(1, "a")


def test_stream_wrong_key_and_tampering() -> None:
    data = bytearray(wire.encode_stream(Ack(1, b"x"), compress=True, keyring=counter_nonce()))
    with pytest.raises(DecodeError):
        wire.decode_stream(bytes(data), Keyring([bytes(16)], lambda n: bytes(n)))
    data[-1] ^= 0x80
    with pytest.raises(DecodeError):
        wire.decode_stream(bytes(data), counter_nonce())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x0a\x00\x00",
        b"\x0a" + (21 * 1024 * 1024).to_bytes(4, "big"),
        b"\x04\x80",  # alive is not a stream message
        b"\x07\x01\x00\x02\x0b\x80",
        b"\x0c\x00\x00\x00\x00\x0b\x80",
        b"\x0b\x81\xa5SeqNo\x01",
    ],
)
def test_invalid_streams_are_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        wire.decode_stream(data, None)


def test_stream_message_size_basic_shapes() -> None:
    ping = wire.encode_stream(Ping(1, "a"), compress=False, keyring=None)
    assert wire.stream_message_size(ping) == len(ping)
    assert wire.stream_message_size(ping[:-1]) is None
    assert wire.stream_message_size(b"") is None
    pp = PushPull(
        join=True,
        nodes=tuple(
            PushNodeState(f"n{i}", LOCAL, 7946, b"\xff\x80", i, NodeState.ALIVE)
            for i in range(3)
        ),
        user_state=b"\x02" + bytes(50),
    )
    body = wire.encode_stream(pp, compress=False, keyring=None)
    assert wire.stream_message_size(body + b"more") == len(body)
    for cut in range(len(body)):
        assert wire.stream_message_size(body[:cut]) is None
    labelled = b"\xf4\x02ab" + body
    assert wire.stream_message_size(labelled) == len(labelled)
    assert wire.decode_stream(labelled, None) == pp


@pytest.mark.parametrize(
    "data",
    [
        b"\x04\x80",
        b"\x07",
        b"\x00\x01",  # ping body that is not a map
        b"\x06\x90",
        b"\x06" + msgpack.packb({"Nodes": -1}),
        b"\x06" + msgpack.packb({"Nodes": 2}) + b"\x80\x01",
        b"\x08" + msgpack.packb({"UserMsgLen": 20 * 1024 * 1024 + 1}),
        b"\x0a\x00\x00\x00\x05",
        b"\x0a\x7f\x00\x00\x00",
        b"\xf4\x00",
        b"\x00\xc1",
    ],
)
def test_stream_message_size_rejects_what_it_can(data: bytes) -> None:
    with pytest.raises(DecodeError):
        wire.stream_message_size(data)


def test_packet_decompression_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    wire.clear_caches()
    monkeypatch.setattr(wire, "UDP_DECOMPRESS_LIMIT", 1000)
    bomb = wire.encode_compress(b"\x08" + bytes(2000))
    with pytest.raises(DecodeError, match="exceeds"):
        wire.decode_packet(bomb, None)
    # The budget is shared by all compress layers of one packet.
    half = wire.encode_compress(b"\x08" + bytes(600))
    errors: list[DecodeError] = []
    out = wire.decode_packet(wire.encode_compound([half, half]), None, errors=errors)
    assert len(out) == 1 and "exceeds" in str(errors[0])
    assert len(wire.decode_packet(wire.encode_compound([half]), None)) == 1
    wire.clear_caches()


def test_part_memo_size_is_settable_and_decoding_is_unchanged() -> None:
    from gossip.wire import codec as w
    from gossip.wire.messages import Ping as _Ping

    part = w.encode(_Ping(seq_no=7, node="a"))
    packet = w.encode_packet([part, w.encode(_Ping(seq_no=8, node="b"))], compress=False, crc=False,
                             keyring=None)
    before = w.decode_packet(packet, None)
    try:
        w.set_part_cache_size(1)
        assert w.part_cache_size() == 1
        assert w.decode_packet(packet, None) == before
        assert w.decode_packet(packet, None) == before
    finally:
        w.set_part_cache_size(w._PART_CACHE_SIZE)
    assert w.part_cache_size() == w._PART_CACHE_SIZE
