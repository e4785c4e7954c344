"""Fuzzing serf's message decoders and the serf layer (issue 16: "fuzz the new decoders").

Arbitrary and mutated bytes make the decoders raise only ``DecodeError``, and make
``SerfLayer.receive`` return (a reply or None) without raising, whatever the type byte:
a serf message is remote input.
"""

from __future__ import annotations

import contextlib
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.errors import DecodeError
from gossip.members import Member, Status
from gossip.serf import coordinate as vivaldi
from gossip.serf import payloads as serfcompat
from gossip.serf.layer import SerfLayer
from gossip.wire.encryption import GossipEncryption

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ME = Member("ours", "10.0.0.1", 7946, 1, Status.ALIVE, b"", bytes([1, 5, 2, 2, 5, 5]), 0.0)
PEERS = {
    "ours": ME,
    "serf1": Member("serf1", "10.0.0.2", 7946, 1, Status.ALIVE, b"", bytes([1, 5, 2, 2, 5, 5]), 0.0),
    "gone": Member("gone", "10.0.0.3", 7946, 1, Status.DEAD, b"", bytes([1, 5, 2, 2, 5, 5]), 0.0),
}

VALID = [
    serfcompat.encode_leave_intent(5, "serf1"),
    serfcompat.encode_leave_intent(6, "gone", True),
    serfcompat.encode_join_intent(7, "newcomer"),
    serfcompat.encode_user_event(3, "deploy", b"payload", True),
    serfcompat.encode_query(ltime=2, query_id=9, addr=bytes([10, 0, 0, 2]), port=7946, source_node="serf1",
                            name="_serf_ping", payload=b"", timeout_ns=10**9, relay_factor=2),
    serfcompat.encode_query_response(2, 9, "serf1", b"x", False),
    serfcompat.encode_relay(bytes([10, 0, 0, 9]), 7946, "serf9", serfcompat.encode_query_response(2, 9, "a", None, True)),
    serfcompat._msg(serfcompat.SerfType.PUSH_PULL, {"LTime": 9, "StatusLTimes": {"gone": 8, "serf1": 2},
                                                    "LeftMembers": ["gone"], "EventLTime": 4, "Events": None,
                                                    "QueryLTime": 3}),
]


def _layer() -> SerfLayer:
    layer = SerfLayer(GossipEncryption(None), lambda: PEERS, random.Random(0))
    layer.enable_coordinates("ours")
    return layer


def _decoders_only_raise_decode_error(data: bytes) -> None:
    for fn in (serfcompat.decode_serf_message, serfcompat.decode_relay, serfcompat.decode_query,
               vivaldi.decode_ack_payload):
        with contextlib.suppress(DecodeError):
            fn(data)


@FUZZ
@given(st.integers(0, 12), st.binary(max_size=300))
def test_type_byte_plus_arbitrary_body(t: int, body: bytes) -> None:
    data = bytes([t]) + body
    _decoders_only_raise_decode_error(data)
    _layer().receive(0.0, data, ME)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.integers(0, 3))
        if op == 0:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            del data[max(i, 1):]
        elif op == 2:
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        else:
            data[i] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_serf_messages(data: bytes) -> None:
    _decoders_only_raise_decode_error(data)
    layer = _layer()
    layer.receive(0.0, data, ME)
    layer.ping_complete("ours", "serf1", 0.002, data)  # as an ack payload: ignored unless valid


@FUZZ
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=10),
       st.floats(allow_nan=True, allow_infinity=True), st.floats(-1.0, 20.0))
def test_coordinates_stay_finite_whatever_peers_claim(vec: list[float], error: float, rtt: float) -> None:
    client = vivaldi.CoordinateClient(random.Random(1))
    peer = vivaldi.Coordinate(tuple(vec), error, 0.0, vivaldi.HEIGHT_MIN)
    for _ in range(3):
        client.update("p", peer, rtt)
    assert client.coord.valid()
    payload = vivaldi.encode_ack_payload(client.coord)
    assert vivaldi.decode_ack_payload(payload) == client.coord
