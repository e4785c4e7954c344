"""The core relays serf queries like serf members do (serf ``handleQuery`` -> ``queryBroadcasts``).

A member that gets a new query queues it for re-broadcast, once, whether or not the
query's filters address it; only addressed members answer. Without the relay a
query reaches only the members the querier gossips it to itself (found by the
simulator's key-rotation scenario, docs/simulation.md "Key rotation").
"""

from __future__ import annotations

import dataclasses

import pytest

from gossip.config import Config, retransmit_limit
from gossip.effects import QueryFinished, QueryResponse, Send
from gossip.members import ip_bytes
from gossip.serf import payloads as serfcompat
from gossip.swim import Swim
from gossip.wire import codec as wire
from gossip.wire.messages import UserMsg
from tests.unit.swimharness import Harness

CONFIG = dataclasses.replace(Config.local(), retransmit_mult=4)
"""Four transmissions per broadcast at N = 3, so a relay to the third member is certain enough
to be deterministic for these seeds (with 2, both could go back to the querier)."""


def three(seed: int = 1) -> Harness:
    h = Harness(CONFIG, seed=seed)
    for name in ("a", "b", "c"):
        h.add(name)
    h.join_all("a")
    h.wait(lambda: h.converged(["a", "b", "c"]), timeout=10)
    h.run_for(2.0)  # let the join broadcasts run out, so b's later packets carry only new news
    return h


def query_from(h: Harness, src: str, qid: int, filters: tuple[bytes, ...] = ()) -> bytes:
    ip, port = h.addr(src)
    return serfcompat.encode_query(
        ltime=7, query_id=qid, addr=ip_bytes(ip), port=port, source_node=src,
        name="_serf_ping", payload=b"", timeout_ns=2_000_000_000, filters=filters,
    )


def deliver(h: Harness, dst: str, src: str, payload: bytes) -> list[Send]:
    """Hand ``dst`` one datagram from ``src`` carrying ``payload``; the Sends it makes at once."""
    packet = wire.encode_packet([wire.encode(UserMsg(payload))], compress=False, crc=False, keyring=None)
    effects = h.nodes[dst].handle_packet(h.now, h.addr(src), packet)
    return [e for e in effects if isinstance(e, Send)]


def drive(node: Swim, start: float, seconds: float) -> tuple[list[Send], float]:
    """Run ``node``'s timers alone (nothing is delivered) and collect what it sends."""
    sends: list[Send] = []
    now = start
    while (t := node.next_deadline()) <= start + seconds:
        now = max(now, t)
        sends += [e for e in node.tick(now) if isinstance(e, Send)]
    return sends, start + seconds


def carrying(sends: list[Send], payload: bytes) -> list[Send]:
    return [s for s in sends if any(isinstance(m, UserMsg) and m.payload == payload
                                    for m in wire.decode_packet(s.data, None))]


def responses(sends: list[Send]) -> list[Send]:
    return [s for s in sends if any(
        isinstance(m, UserMsg) and m.payload[:1] == bytes([serfcompat.SerfType.QUERY_RESPONSE])
        for m in wire.decode_packet(s.data, None))]


def test_a_member_re_broadcasts_a_new_query_to_the_others_once() -> None:
    h = three()
    b = h.nodes["b"]
    q = query_from(h, "a", qid=41)
    first = deliver(h, "b", "a", q)
    assert {s.to for s in responses(first)} == {h.addr("a")}  # the ack to the querier
    # The answers go bare (as memberlist's SendToAddress): relays spent on the querier,
    # who has the query, would be lost to everyone else.
    assert carrying(first, q) == []
    sent, now = drive(b, h.now, 1.0)
    # Then gossiped: exactly the retransmit limit, like any broadcast, and the third
    # member got it.
    assert len(carrying(first + sent, q)) == retransmit_limit(CONFIG, 3)
    assert h.addr("c") in {s.to for s in carrying(sent, q)}
    # The same query gossiped back by others: not answered and not queued again.
    h.now = now
    assert deliver(h, "b", "c", q) == []
    sent, _ = drive(b, now, 2.0)
    assert carrying(sent, q) == []


def test_a_duplicate_during_the_relay_does_not_restart_its_transmissions() -> None:
    # A re-queued broadcast would start again from zero transmissions (it replaces the
    # pending one of the same key); the total stays at the limit only if it is not.
    h = three()
    q = query_from(h, "a", qid=42)
    deliver(h, "b", "a", q)
    early, now = drive(h.nodes["b"], h.now, 0.0)  # one gossip round: news after quiet goes at once
    assert 0 < len(carrying(early, q)) < retransmit_limit(CONFIG, 3)
    h.now = now
    assert deliver(h, "b", "c", q) == []
    sent, _ = drive(h.nodes["b"], now, 2.0)
    assert len(carrying(early + sent, q)) == retransmit_limit(CONFIG, 3)


def test_a_query_for_another_node_is_relayed_but_not_answered() -> None:
    h = three()
    q = query_from(h, "a", qid=43, filters=(serfcompat.encode_node_filter(["c"]),))
    first = deliver(h, "b", "a", q)
    sent, _ = drive(h.nodes["b"], h.now, 1.0)
    assert responses(first + sent) == []
    assert h.addr("c") in {s.to for s in carrying(sent, q)}


@pytest.mark.parametrize("only_c", [False, True], ids=["everyone", "filtered-to-c"])
def test_in_a_line_the_far_member_gets_and_answers_the_query_through_the_middle_one(only_c: bool) -> None:
    # a -> c is cut (c -> a still works, so c's answer can come back): whatever a gossips
    # to c is lost, and c can only learn of the query from b's relay.
    h = three()
    h.cut.add(("a", "c"))
    filters = (serfcompat.encode_node_filter(["c"]),) if only_c else ()
    qid, effects = h.nodes["a"].send_query(h.now, "_serf_ping", b"", timeout=3.0, filters=filters)
    h.perform("a", effects)
    h.run_for(3.5)
    got = [e for _, who, e in h.events if who == "a" and isinstance(e, QueryResponse) and e.query_id == qid]
    # _serf_ping is answered with an ack only, as serf does.
    expected = {("c", True)} | (set() if only_c else {("b", True)})
    assert {(r.node, r.ack) for r in got} == expected
    assert len(got) == len(expected)  # each member answered once
    assert any(isinstance(e, QueryFinished) and e.query_id == qid for _, who, e in h.events if who == "a")
