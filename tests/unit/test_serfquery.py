from __future__ import annotations

import random

import msgpack

from crypto.keyring import Keyring
from gossip.config import Config
from gossip.effects import KeyringChanged, Send
from gossip.serf import payloads as serfcompat
from gossip.swim import Swim
from gossip.wire import codec as wire
from gossip.wire.messages import UserMsg

KEY1 = bytes(range(16))
KEY2 = bytes(range(16, 48))


def _query(name: str, payload: bytes = b"", filters: list[bytes] | None = None, qid: int = 9) -> bytes:
    body = {
        "Addr": bytes([10, 0, 0, 9]),
        "Filters": filters,
        "Flags": 1,
        "ID": qid,
        "LTime": 3,
        "Name": name,
        "Payload": payload,
        "Port": 7946,
        "RelayFactor": 0,
        "SourceNode": "serf1",
        "Timeout": 2_000_000_000,
    }
    return bytes([serfcompat.SerfType.QUERY]) + msgpack.packb(body, use_bin_type=False)


def _node(keyring: Keyring | None = None) -> Swim:
    return Swim(Config.local(), "ours", ("10.0.0.1", 7946), rng=random.Random(1), now=0.0, keyring=keyring)


def _responses(node: Swim, query: bytes) -> list[dict[str, object]]:
    kr = node.keyring
    packet = wire.encode_packet([wire.encode(UserMsg(query))], compress=False, crc=False, keyring=kr)
    out = []
    for effect in node.handle_packet(1.0, ("10.0.0.9", 7946), packet):
        if isinstance(effect, Send):
            assert effect.to == ("10.0.0.9", 7946)
            for msg in wire.decode_packet(effect.data, kr):
                if isinstance(msg, UserMsg) and msg.payload[0] == serfcompat.SerfType.QUERY_RESPONSE:
                    out.append(serfcompat.decode_serf_message(msg.payload)[1])
    return out


def test_serf_ping_query_gets_an_ack_and_no_response_once() -> None:
    node = _node()
    replies = _responses(node, _query("_serf_ping"))
    assert [r["Flags"] for r in replies] == [1]  # serf's internal ping: ack only
    assert all(r["From"] == "ours" and r["ID"] == 9 for r in replies)
    assert _responses(node, _query("_serf_ping")) == []  # the same query re-gossiped


def test_query_filtered_to_another_node_is_not_answered() -> None:
    node = _node()
    only_other = bytes([0]) + msgpack.packb(["someone-else"])
    assert _responses(node, _query("_serf_ping", filters=[only_other])) == []


def test_install_and_use_key_queries_change_the_keyring() -> None:
    kr = Keyring([KEY1], nonce_source=random.Random(2).randbytes)
    node = _node(kr)
    install = _query("_serf_install-key", serfcompat.encode_key_request(KEY2), qid=1)
    replies = _responses(node, install)
    assert replies[-1]["Payload"][:1] == bytes([serfcompat.SerfType.KEY_RESPONSE])  # type: ignore[index]
    _, body = serfcompat.decode_serf_message(replies[-1]["Payload"])  # type: ignore[arg-type]
    assert body["Result"] is True
    assert kr.keys == (KEY1, KEY2)
    _responses(node, _query("_serf_use-key", serfcompat.encode_key_request(KEY2), qid=2))
    assert kr.primary == KEY2


def test_removing_the_primary_key_is_refused_with_a_message() -> None:
    kr = Keyring([KEY1], nonce_source=random.Random(2).randbytes)
    node = _node(kr)
    packet = wire.encode_packet(
        [wire.encode(UserMsg(_query("_serf_remove-key", serfcompat.encode_key_request(KEY1))))],
        compress=False, crc=False, keyring=kr,
    )
    effects = node.handle_packet(1.0, ("10.0.0.9", 7946), packet)
    assert not any(isinstance(e, KeyringChanged) for e in effects)
    assert kr.keys == (KEY1,)


def test_query_between_two_cores_applies_key_install_and_reports_responses() -> None:
    from gossip.effects import QueryFinished, QueryResponse
    from tests.unit.swimharness import Harness

    h = Harness(Config.local())
    rings = {}
    for name in ("a", "b", "c"):
        node = h.add(name)
        rings[name] = Keyring([KEY1], nonce_source=random.Random(name).randbytes)
        node.keyring = rings[name]
    h.join_all("a")
    h.wait(lambda: h.converged(["a", "b", "c"]), timeout=10)
    qid, effects = h.nodes["a"].send_query(
        h.now, "_serf_install-key", serfcompat.encode_key_request(KEY2), timeout=2.0
    )
    h.perform("a", effects)
    h.run_for(2.5)
    responses = [e for _, who, e in h.events if isinstance(e, QueryResponse) and who == "a"]
    assert {(r.node, r.ack) for r in responses} == {("b", True), ("b", False), ("c", True), ("c", False)}
    assert all(r.query_id == qid for r in responses)
    assert any(isinstance(e, QueryFinished) and e.query_id == qid for _, _, e in h.events)
    assert rings["b"].keys == (KEY1, KEY2) and rings["c"].keys == (KEY1, KEY2)
    assert rings["a"].keys == (KEY1,)  # the querier applies its own change itself
