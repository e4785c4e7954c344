"""The serf layer on its own (gossip/serf/layer.py): clocks, query memory, answers.

The same behaviour seen through the core is in test_serfquery.py and test_query_relay.py.
"""

from __future__ import annotations

import random

from crypto.keyring import Keyring
from gossip.effects import KeyringChanged, QueryResponse
from gossip.members import Member, Status
from gossip.serf import payloads as serfcompat
from gossip.serf.layer import SerfLayer, query_key
from gossip.serf.queries import MODE_QUERY
from gossip.wire.encryption import EncryptionMode, GossipEncryption

ME = Member("ours", "10.0.0.1", 7946, 3, Status.ALIVE, b"", b"", 0.0)
KEY = bytes(16)


def _query(name: str, qid: int = 9, ltime: int = 4, payload: bytes = b"", filters: tuple[bytes, ...] = ()) -> bytes:
    return serfcompat.encode_query(
        ltime=ltime, query_id=qid, addr=bytes([10, 0, 0, 9]), port=7946, source_node="serf1",
        name=name, payload=payload, timeout_ns=10**9, filters=filters,
    )


def _layer(keyring: Keyring | None = None) -> SerfLayer:
    return SerfLayer(GossipEncryption(keyring), lambda: {ME.name: ME}, random.Random(0))


def test_a_new_query_is_passed_on_and_answered_once() -> None:
    layer = _layer()
    payload = _query("_serf_ping")
    reply = layer.receive(0.0, payload, ME)
    assert reply is not None and reply.relay == payload and reply.relay_key == query_key(9)
    assert reply.to == ("10.0.0.9", 7946)
    kinds = [serfcompat.decode_serf_message(a) for a in reply.answers]
    assert [(t, f["Flags"]) for t, f in kinds] == [(serfcompat.SerfType.QUERY_RESPONSE, 1)]  # ack only
    assert layer.receive(0.0, payload, ME) is None  # re-gossiped: neither passed on nor answered


def test_a_query_for_another_node_is_passed_on_unanswered() -> None:
    only_other = serfcompat.encode_node_filter(["someone-else"])
    reply = _layer().receive(0.0, _query("_serf_ping", filters=(only_other,)), ME)
    assert reply is not None and reply.relay is not None
    assert reply.to is None and reply.answers == () and reply.events == ()


def test_the_leave_intent_is_later_than_every_clock_seen() -> None:
    layer = _layer()
    assert serfcompat.decode_serf_message(layer.leave_intent("ours", 3))[1]["LTime"] == 4
    layer.receive(0.0, serfcompat.encode_join_intent(41, "serf1"), ME)  # the member clock
    layer.receive(0.0, serfcompat.encode_user_event(99, "deploy", b""), ME)  # another clock
    assert serfcompat.decode_serf_message(layer.leave_intent("ours", 3))[1]["LTime"] == 42


def test_our_query_collects_responses_until_it_finishes() -> None:
    layer = _layer()
    layer.new_query(0.0, 77, ME, "_serf_ping", b"", timeout=1.0, filters=(), want_ack=True)
    ack = serfcompat.encode_query_response(1, 77, "b", None, True)
    reply = layer.receive(0.0, ack, ME)
    assert reply is not None and reply.events == (QueryResponse(77, "b", True, b""),)
    assert layer.query_finished(77) and not layer.query_finished(77)
    assert layer.receive(0.0, ack, ME) is None  # late: ignored


def test_a_remote_install_switches_encryption_on_in_the_roll_out_window() -> None:
    ring = Keyring([], nonce_source=random.Random(0).randbytes)
    layer = SerfLayer(enc := GossipEncryption(ring), lambda: {ME.name: ME}, random.Random(0))
    reply = layer.receive(0.0, _query("_serf_install-key", payload=serfcompat.encode_key_request(KEY)), ME)
    assert reply is not None and reply.events == (KeyringChanged(),)
    assert ring.keys == (KEY,) and enc.mode is EncryptionMode.ACCEPT
    layer.receive(0.0, _query(MODE_QUERY, qid=10, payload=b"require"), ME)
    assert enc.mode is EncryptionMode.REQUIRE


def _key_answer(layer: SerfLayer, name: str, key: bytes | None, qid: int) -> dict[str, object]:
    reply = layer.receive(0.0, _query(name, qid=qid, payload=serfcompat.encode_key_request(key)), ME)
    assert reply is not None and len(reply.answers) == 2
    response = serfcompat.decode_serf_message(reply.answers[1])[1]["Payload"]
    return serfcompat.decode_serf_message(response)[1]


def test_key_refusals_are_worded_as_serfs() -> None:
    other = bytes(range(16))
    layer = _layer(Keyring([KEY], nonce_source=random.Random(0).randbytes))
    assert _key_answer(layer, "_serf_use-key", other, 20)["Message"] == "Requested key is not in the keyring"
    assert _key_answer(layer, "_serf_remove-key", KEY, 21)["Message"] == "Removing the primary key is not allowed"
    assert _key_answer(layer, "_serf_install-key", b"short", 22)["Message"] == "key size must be 16, 24 or 32 bytes"
    gone = _key_answer(layer, "_serf_remove-key", other, 23)  # not installed: memberlist reports success
    assert gone["Result"] is True and gone["Message"] == ""
    bare = _layer()
    assert _key_answer(bare, "_serf_list-keys", None, 24)["Message"] == "Keyring is empty (encryption not enabled)"
    assert _key_answer(bare, "_serf_use-key", KEY, 25)["Message"] == "No keyring to modify (encryption not enabled)"
