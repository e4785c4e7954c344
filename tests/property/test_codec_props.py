"""Property tests for the wire codec, LZW and keyring framing.

Round trips for every message type and every packet/stream option combination, and
robustness: arbitrary or mutated bytes only ever raise DecodeError.
"""

from __future__ import annotations

import contextlib
import random

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

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
    Message,
    Nack,
    NodeState,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    UserMsg,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = [bytes(range(16)), bytes(range(24)), bytes(range(32))]

u32 = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)
names = st.text(max_size=40)
member_names = st.text(
    st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")), min_size=1, max_size=40
)
"""Names a member may have (``gossip.limits.valid_name``); ``names`` also has others."""
addrs = st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16)
vsns = st.just(DEFAULT_VSN) | st.just(b"") | st.binary(min_size=6, max_size=9)
metas = st.binary(max_size=80)

pings = st.builds(
    Ping,
    seq_no=u32,
    node=names,
    source_addr=st.none() | addrs | st.just(b""),
    source_port=st.none() | u16,
    source_node=st.none() | names,
)
indirect_pings = st.builds(
    IndirectPing,
    seq_no=u32,
    target=addrs,
    port=u16,
    node=names,
    nack=st.booleans(),
    source_addr=st.none() | addrs,
    source_port=st.none() | u16,
    source_node=st.none() | names,
)
acks = st.builds(Ack, seq_no=u32, payload=st.none() | st.binary(max_size=200))
nacks = st.builds(Nack, seq_no=u32)
suspects = st.builds(Suspect, incarnation=u32, node=member_names, from_=member_names)
deads = st.builds(Dead, incarnation=u32, node=member_names, from_=member_names)
alives = st.builds(Alive, incarnation=u32, node=member_names, addr=addrs, port=u16, meta=metas, vsn=vsns)
users = st.builds(UserMsg, payload=st.binary(max_size=300))
node_states = st.builds(
    PushNodeState,
    name=member_names,
    addr=addrs,
    port=u16,
    meta=metas,
    incarnation=u32,
    state=st.sampled_from(list(NodeState)),
    vsn=vsns,
)
push_pulls = st.builds(
    PushPull,
    join=st.booleans(),
    nodes=st.lists(node_states, max_size=6).map(tuple),
    user_state=st.binary(max_size=300),
)
errs = st.builds(Err, error=st.text(max_size=80))

packet_messages = st.one_of(pings, indirect_pings, acks, nacks, suspects, deads, alives, users)
stream_messages = st.one_of(pings, acks, push_pulls, users, errs)
all_messages = st.one_of(packet_messages, push_pulls, errs)


def ring(choice: int | None, seed: int = 0) -> Keyring | None:
    if choice is None:
        return None
    rng = random.Random(seed)
    return Keyring([KEYS[choice]], rng.randbytes)


keyrings = st.none() | st.integers(0, 2)


@FAST
@given(all_messages)
def test_every_message_round_trips(msg: Message) -> None:
    data = wire.encode(msg)
    assert wire.decode(data) == msg
    # Deterministic: encoding the decoded message gives the same bytes.
    assert wire.encode(wire.decode(data)) == data


@FAST
@given(names, st.sampled_from([Suspect, Dead]))
def test_member_messages_decode_exactly_when_the_name_is_valid(name: str, kind: type) -> None:
    data = wire.encode(kind(1, name, "n0"))
    if limits.valid_name(name):
        assert wire.decode(data) == kind(1, name, "n0")
    else:
        with contextlib.suppress(DecodeError):
            wire.decode(data)
            raise AssertionError(f"{name!r} was accepted")


@FAST
@given(
    st.lists(packet_messages, min_size=1, max_size=12),
    st.booleans(),
    st.booleans(),
    keyrings,
)
def test_packets_round_trip_with_any_options(
    msgs: list[Message], compress: bool, crc: bool, key: int | None
) -> None:
    kr = ring(key)
    data = wire.encode_packet([wire.encode(m) for m in msgs], compress=compress, crc=crc,
                              keyring=kr)
    assert wire.decode_packet(data, kr) == msgs
    if kr is not None:
        # A node holding a different key, or no key, does not accept it.
        other = Keyring([bytes(16)], random.Random(1).randbytes)
        with contextlib.suppress(DecodeError):
            assert wire.decode_packet(data, other) != msgs


@FAST
@given(stream_messages, st.booleans(), keyrings, st.binary(max_size=8))
def test_streams_round_trip_and_size_is_exact(
    msg: Message, compress: bool, key: int | None, extra: bytes
) -> None:
    kr = ring(key)
    data = wire.encode_stream(msg, compress=compress, keyring=kr)
    assert wire.decode_stream(data, kr) == msg
    assert wire.decode_stream(data + extra, kr) == msg
    assert wire.stream_message_size(data) == len(data)
    assert wire.stream_message_size(data + extra) == len(data)
    cuts = range(len(data)) if len(data) <= 300 else random.Random(len(data)).sample(
        range(len(data)), 60
    )
    for cut in cuts:
        assert wire.stream_message_size(data[:cut]) is None, cut


@FAST
@given(st.binary(max_size=3000))
def test_lzw_round_trips(data: bytes) -> None:
    assert lzw.decompress(lzw.compress(data)) == data


def _only_decode_errors(data: bytes, kr: Keyring | None) -> None:
    for fn in (
        lambda: wire.decode_packet(data, kr),
        lambda: wire.decode_packet(data, kr, require_encryption=False),
        lambda: wire.decode_stream(data, kr),
        lambda: wire.stream_message_size(data),
        lambda: wire.decode(data),
        lambda: lzw.decompress(data, limit=1 << 20),
    ):
        with contextlib.suppress(DecodeError):
            fn()


@FUZZ
@given(st.binary(max_size=400), keyrings)
def test_arbitrary_bytes_raise_only_decode_error(data: bytes, key: int | None) -> None:
    _only_decode_errors(data, ring(key))


_type_bytes = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 244])


@FUZZ
@given(_type_bytes, st.binary(max_size=300))
def test_type_byte_plus_arbitrary_body_raises_only_decode_error(t: int, body: bytes) -> None:
    _only_decode_errors(bytes([t]) + body, None)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, Keyring | None]:
    kr = ring(draw(keyrings))
    if draw(st.booleans()):
        msgs = draw(st.lists(packet_messages, min_size=1, max_size=6))
        data = bytearray(
            wire.encode_packet([wire.encode(m) for m in msgs], compress=draw(st.booleans()),
                               crc=draw(st.booleans()), keyring=kr)
        )
    else:
        msg = draw(stream_messages)
        data = bytearray(wire.encode_stream(msg, compress=draw(st.booleans()), keyring=kr))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 3))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == 0:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            del data[i:]
        elif op == 2:
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        else:
            data[i] = draw(st.integers(0, 255))
    return bytes(data), kr


@FUZZ
@given(mutated())
def test_mutated_packets_and_streams_raise_only_decode_error(
    case: tuple[bytes, Keyring | None],
) -> None:
    data, kr = case
    _only_decode_errors(data, kr)
    _only_decode_errors(data, None)


@FAST
@given(st.lists(packet_messages, min_size=2, max_size=5), st.integers(0, 4))
def test_compound_with_one_bad_part_keeps_the_rest(msgs: list[Message], bad_at: int) -> None:
    parts = [wire.encode(m) for m in msgs]
    bad_at %= len(parts)
    parts[bad_at] = b"\x0b\xc1"  # nack with an invalid msgpack byte
    errors: list[DecodeError] = []
    out = wire.decode_packet(wire.encode_compound(parts), None, errors=errors)
    assert out == [m for i, m in enumerate(msgs) if i != bad_at]
    assert len(errors) == 1


@FAST
@given(st.binary(min_size=1, max_size=200), st.sampled_from(KEYS), st.binary(max_size=10))
def test_keyring_seal_open_round_trip(plain: bytes, key: bytes, aad: bytes) -> None:
    kr = Keyring([bytes(16), key] if key != bytes(16) else [key], random.Random(3).randbytes)
    kr.use(key)
    assume(kr.primary == key)
    blob = kr.seal(plain, aad)
    assert kr.open(blob, aad) == plain
    assert len(blob) == len(plain) + wire.ENCRYPT_OVERHEAD
