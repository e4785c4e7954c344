"""Serf layer: tags in node meta, intents, user events, queries, key payloads.

Vectors are serf messages captured from Debian's serf 0.9.4 on loopback (tags, join and
leave intents, a user event, a query); docs/wire.md, "Sources", says how.
"""

from __future__ import annotations

import msgpack
import pytest

from gossip.errors import DecodeError
from gossip.serf import payloads as sc
from tests.unit.test_wire import vec


def test_tags_vector_and_roundtrip() -> None:
    # serf sent ff 82 a4"role" a3"web" a2"dc" a4"east" (Go map order); we sort keys.
    captured = vec('ff82 a4"role" a3"web" a2"dc" a4"east"')
    assert sc.decode_tags(captured) == {"role": "web", "dc": "east"}
    assert sc.encode_tags({"role": "web", "dc": "east"}) == vec('ff82 a2"dc" a4"east" a4"role" a3"web"')
    assert sc.encode_tags({}) == b"\xff\x80"
    assert sc.decode_tags(b"\xff\x80") == {}


def test_tags_size_limit() -> None:
    assert len(sc.encode_tags({"k": "v" * 500})) <= 512
    with pytest.raises(ValueError, match="512"):
        sc.encode_tags({"k": "v" * 600})
    with pytest.raises(ValueError):
        sc.encode_tags({"k": 1})  # type: ignore[dict-item]


def test_legacy_meta_is_a_role() -> None:
    assert sc.decode_tags(b"") == {"role": ""}
    assert sc.decode_tags(b"web") == {"role": "web"}
    assert sc.decode_tags(b"\x80\xfe") == {"role": "\ufffd\ufffd"}


@pytest.mark.parametrize("meta", [b"\xff", b"\xff\x91\x01", b"\xff\xc1", b"\xff\x81\x01\x02"])
def test_bad_tag_msgpack_is_decode_error(meta: bytes) -> None:
    with pytest.raises(DecodeError):
        sc.decode_tags(meta)


def test_join_intent_vector() -> None:
    payload = sc.encode_join_intent(1, "beta")
    assert b"\x08" + payload == vec('08 01 82 a5"LTime" 01 a4"Node" a4"beta"')
    assert sc.decode_serf_message(payload) == (sc.SerfType.JOIN, {"LTime": 1, "Node": "beta"})


def test_leave_intent_vector() -> None:
    payload = sc.encode_leave_intent(2, "beta")
    assert b"\x08" + payload == vec('08 00 83 a5"LTime" 02 a4"Node" a4"beta" a5"Prune" c2')
    assert sc.decode_serf_message(payload) == (
        sc.SerfType.LEAVE,
        {"LTime": 2, "Node": "beta", "Prune": False},
    )
    assert sc.decode_serf_message(sc.encode_leave_intent(3, "x", prune=True))[1]["Prune"]


def test_user_event_vector() -> None:
    captured = vec('03 84 a2"CC" c3 a5"LTime" 01 a4"Name" a6"deploy" a7"Payload" aa"payload123"')
    assert sc.encode_user_event(1, "deploy", b"payload123", cc=True) == captured
    assert sc.decode_serf_message(captured) == (
        sc.SerfType.USER_EVENT,
        {"CC": True, "LTime": 1, "Name": "deploy", "Payload": b"payload123"},
    )


def _query(**over: object) -> bytes:
    body: dict[str, object] = {
        "Addr": bytes([127, 0, 0, 1]), "Filters": None, "Flags": 1, "ID": 77, "LTime": 1,
        "Name": "q1", "Payload": b"hello", "Port": 7946, "RelayFactor": 0,
        "SourceNode": "alpha", "Timeout": 2_000_000_000,
    }
    body.update(over)
    packed: bytes = msgpack.packb(body, use_bin_type=False)
    return b"\x04" + packed


def test_decode_query_captured_shape() -> None:
    q = sc.decode_query(_query())
    assert q == sc.Query(
        ltime=1, id=77, addr=bytes([127, 0, 0, 1]), port=7946, source_node="alpha",
        filters=(), flags=1, relay_factor=0, timeout_ns=2_000_000_000, name="q1",
        payload=b"hello",
    )
    assert q.wants_ack
    assert sc.decode_query(_query(Filters=[b"\x00\x91\xa1a"])).filters == (b"\x00\x91\xa1a",)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x05\x80", _query(ID=-1), _query(Filters=[1]), _query(Timeout="x"), b"\x04\x91\x01"],
)
def test_decode_query_rejects_garbage(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        sc.decode_query(payload)


def test_query_response_and_ack() -> None:
    ack = sc.encode_query_response(1, 77, "pyr", None, ack=True)
    assert ack == vec('05 85 a5"Flags" 01 a4"From" a3"pyr" a2"ID" 4d a5"LTime" 01 a7"Payload" c0')
    resp = sc.encode_query_response(1, 77, "pyr", b"pong", ack=False)
    assert sc.decode_serf_message(resp) == (
        sc.SerfType.QUERY_RESPONSE,
        {"Flags": 0, "From": "pyr", "ID": 77, "LTime": 1, "Payload": b"pong"},
    )


def test_key_request_and_response_payloads() -> None:
    req = sc.encode_key_request(bytes(16))
    assert req[0] == 7 and sc.decode_key_request(req) == bytes(16)
    resp = sc.encode_key_response(True, "", ["a2V5"], "a2V5")
    assert resp == vec(
        '08 84 a4"Keys" 91 a4"a2V5" a7"Message" a0 aa"PrimaryKey" a4"a2V5" a6"Result" c3'
    )
    assert sc.decode_serf_message(resp) == (
        sc.SerfType.KEY_RESPONSE,
        {"Keys": ["a2V5"], "Message": "", "PrimaryKey": "a2V5", "Result": True},
    )
    empty = sc.encode_key_response(False, "no such key")
    assert sc.decode_serf_message(empty)[1]["Keys"] == []
    with pytest.raises(DecodeError):
        sc.decode_key_request(sc.encode_join_intent(1, "x"))


def test_serf_push_pull_state_from_capture_shape() -> None:
    state = b"\x02" + msgpack.packb(
        {"EventLTime": 1, "Events": [None] * 512, "LTime": 1, "LeftMembers": [],
         "QueryLTime": 1, "StatusLTimes": {"alpha": 0}},
        use_bin_type=False,
    )
    assert len(state) == 589  # what serf 0.9.4 sends from a 1-node cluster (docs/wire.md)
    t, f = sc.decode_serf_message(state)
    assert t is sc.SerfType.PUSH_PULL
    assert f["StatusLTimes"] == {"alpha": 0} and f["LeftMembers"] == [] and f["LTime"] == 1


def test_relay_message_is_split() -> None:
    header = msgpack.packb({"DestAddr": {"IP": b"\x7f\x00\x00\x01", "Port": 1}, "DestName": "n"})
    inner = sc.encode_join_intent(1, "x")
    t, f = sc.decode_serf_message(b"\x09" + header + inner)
    assert t is sc.SerfType.RELAY and f["Message"] == inner


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x0a\x80", b"\xff", b"\x01", b"\x01\x91", b"\x01\x81\xa5LTime\xff",
     b"\x01\x81\xa4Node\x01", b"\x08\x81\xa4Keys\x01", b"\x09\x01", b"\x02\x81\xabLeftMembers\x01"],
)
def test_garbage_serf_messages_are_decode_errors(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        sc.decode_serf_message(payload)
