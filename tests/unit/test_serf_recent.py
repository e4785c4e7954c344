"""Serf's message layer, pure: clocks, recent-message buffers, intents and user events.

``gossip/serf/recent.py`` and the parts of ``gossip/serf/layer.py`` that use them;
through the core (relay to a member that cannot hear the sender, force-leave, a leave
intent before a dead) at the end with the unit harness. Reference: serf ``serf.go``
handleNodeLeaveIntent / handleNodeJoinIntent / handleUserEvent, ``delegate.go``.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from gossip.config import Config
from gossip.effects import MemberFailed, MemberLeft, UserEvent
from gossip.members import Member, Status
from gossip.serf import payloads as serfcompat
from gossip.serf.layer import SerfLayer, event_key, intent_key
from gossip.serf.recent import EVENT_BUFFER, MAX_INTENTS, Intents, LamportClock, LtimeBuffer
from gossip.wire.encryption import GossipEncryption
from tests.unit.swimharness import Harness

ME = Member("ours", "10.0.0.1", 7946, 3, Status.ALIVE, b"", b"", 0.0)
SERF_VSN = bytes([1, 5, 2, 2, 5, 5])


def member(name: str, status: Status = Status.ALIVE, last: int = 2) -> Member:
    return Member(name, f"10.0.0.{last}", 7946, 1, status, b"", SERF_VSN, 0.0)


def layer_with(*others: Member) -> tuple[SerfLayer, dict[str, Member]]:
    table = {ME.name: ME, **{m.name: m for m in others}}
    return SerfLayer(GossipEncryption(None), lambda: table, random.Random(0)), table


# ---------------------------------------------------------------- clocks, buffers


def test_lamport_clock_witness_goes_past_what_was_seen_and_saturates() -> None:
    c = LamportClock()
    c.witness(0)
    assert c.time == 1
    c.witness(0)  # older than the clock: unchanged
    assert c.time == 1 and c.increment() == 2
    c.witness(41)
    assert c.time == 42
    c.witness((1 << 64) - 1)
    assert c.time == (1 << 64) - 1 and c.increment() == (1 << 64) - 1


def test_ltime_buffer_is_new_once_per_key_and_reuses_slots() -> None:
    b = LtimeBuffer(4)
    assert b.add(5, "x") == 0 and b.add(5, "y") == 1
    assert b.add(5, "x") is None and b.add(5, "y") is None
    assert b.add(9, "x") == 0  # same slot (9 % 4 == 5 % 4), newer time: the slot is reused
    assert b.add(5, "x") == 0  # ...so time 5 is forgotten (the window check keeps it out)
    assert b.too_old(5, 10) and not b.too_old(6, 10) and not b.too_old(0, 4)
    assert [t for t, _ in b.items()] == [5]


def test_intents_keep_the_newest_per_node_for_the_timeout_and_are_bounded() -> None:
    i = Intents(timeout=300.0)
    assert i.upsert(0.0, "n", True, 5)
    assert not i.upsert(1.0, "n", False, 5) and not i.upsert(1.0, "n", True, 4)
    assert i.upsert(2.0, "n", False, 6)
    taken = i.take(3.0, "n")
    assert taken is not None and not taken.leave and taken.ltime == 6
    assert i.take(3.0, "n") is None
    i.upsert(0.0, "old", True, 1)
    assert i.take(301.0, "old") is None  # expired
    for k in range(MAX_INTENTS + 10):
        i.upsert(10.0, f"n{k}", True, 1)
    assert len(i) == MAX_INTENTS


# ---------------------------------------------------------------- user events


def test_a_user_event_is_reported_and_relayed_once() -> None:
    layer, _ = layer_with()
    msg = serfcompat.encode_user_event(7, "deploy", b"v1", cc=True)
    reply = layer.receive(0.0, msg, ME)
    assert reply is not None and reply.relay == msg and reply.relay_key == event_key(7, 0)
    assert reply.events == (UserEvent("deploy", b"v1", 7, True),)
    assert layer.receive(0.0, msg, ME) is None  # a copy: neither reported nor relayed
    other = serfcompat.encode_user_event(7, "deploy", b"v2")
    reply = layer.receive(0.0, other, ME)  # same time, other payload: a second event
    assert reply is not None and reply.relay_key == event_key(7, 1)
    assert layer.clocks[1] == 8


def test_an_event_older_than_the_buffer_window_is_dropped() -> None:
    layer, _ = layer_with()
    layer.receive(0.0, serfcompat.encode_user_event(EVENT_BUFFER + 100, "new", b""), ME)
    assert layer.receive(0.0, serfcompat.encode_user_event(50, "old", b""), ME) is None
    assert layer.receive(0.0, serfcompat.encode_user_event(EVENT_BUFFER, "recent", b""), ME) is not None


def test_our_user_events_use_the_event_clock_and_serfs_size_limit() -> None:
    layer, _ = layer_with()
    first = serfcompat.decode_serf_message(layer.user_event("a", b"x", True))[1]
    second = serfcompat.decode_serf_message(layer.user_event("a", b"x", False))[1]
    assert (first["LTime"], second["LTime"], second["CC"]) == (1, 2, False)  # serf starts at 1
    with pytest.raises(ValueError, match="exceeds configured limit of 512 bytes before encoding"):
        layer.user_event("big", bytes(510))
    with pytest.raises(ValueError, match="after encoding"):
        layer.user_event("big", bytes(490))
    assert layer.clocks[1] == 3  # refused events do not advance the clock


# ---------------------------------------------------------------- intents


def test_a_leave_intent_marks_a_live_member_leaving_until_its_dead() -> None:
    layer, _ = layer_with(member("serf1"))
    msg = serfcompat.encode_leave_intent(10, "serf1")
    reply = layer.receive(0.0, msg, ME)
    assert reply is not None and reply.relay == msg and reply.relay_key == intent_key("serf1")
    assert reply.left == ()  # still alive: the dead that follows makes it left
    assert layer.receive(0.0, msg, ME) is None  # not newer than its status time
    assert layer.take_leaving(0.0, "serf1") and not layer.take_leaving(0.0, "serf1")
    assert layer.clocks[0] == 11


def test_a_later_join_intent_cancels_the_leaving_mark() -> None:
    layer, _ = layer_with(member("serf1"))
    layer.receive(0.0, serfcompat.encode_leave_intent(10, "serf1"), ME)
    assert layer.receive(0.0, serfcompat.encode_join_intent(9, "serf1"), ME) is None  # older
    assert layer.receive(0.0, serfcompat.encode_join_intent(11, "serf1"), ME) is not None
    assert not layer.take_leaving(0.0, "serf1")


def test_a_leave_intent_about_a_failed_member_makes_it_left() -> None:
    layer, _ = layer_with(member("gone", Status.DEAD))
    reply = layer.receive(0.0, serfcompat.encode_leave_intent(3, "gone"), ME)
    assert reply is not None and reply.left == ("gone",) and reply.relay is not None


def test_an_intent_about_an_unknown_node_is_kept_and_relayed_once() -> None:
    layer, table = layer_with()
    msg = serfcompat.encode_leave_intent(4, "later")
    assert layer.receive(0.0, msg, ME) is not None
    assert layer.receive(1.0, msg, ME) is None
    table["later"] = member("later")  # the member arrives: serf's handleNodeJoin takes the intent
    assert layer.take_leaving(2.0, "later")


def test_an_old_leave_intent_about_us_is_refuted_with_a_newer_join() -> None:
    layer, _ = layer_with()
    reply = layer.receive(0.0, serfcompat.encode_leave_intent(20, "ours"), ME)
    assert reply is not None and reply.relay is not None
    kind, body = serfcompat.decode_serf_message(reply.relay)
    assert kind is serfcompat.SerfType.JOIN and body["Node"] == "ours" and body["LTime"] > 20


def test_push_pull_left_members_apply_as_leave_intents_without_relay() -> None:
    layer, _ = layer_with(member("gone", Status.DEAD), member("up", last=3))
    state = serfcompat._msg(serfcompat.SerfType.PUSH_PULL, {
        "LTime": 30, "StatusLTimes": {"gone": 12, "up": 5}, "LeftMembers": ["gone"],
        "EventLTime": 9, "Events": None, "QueryLTime": 4,
    })
    reply = layer.receive(0.0, state, ME)
    assert reply is not None and reply.left == ("gone",) and reply.relay is None
    assert layer.clocks == (30, 9, 4)  # serf witnesses each remote time - 1


# ---------------------------------------------------------------- relay factor


def _query(relay_factor: int) -> bytes:
    return serfcompat.encode_query(
        ltime=1, query_id=5, addr=bytes([10, 0, 0, 9]), port=7946, source_node="serf9",
        name="_serf_ping", payload=b"", timeout_ns=10**9, relay_factor=relay_factor,
    )


def test_answers_also_go_through_relay_factor_random_members() -> None:
    layer, _ = layer_with(member("a", last=2), member("b", last=3), member("c", last=4))
    reply = layer.receive(0.0, _query(2), ME)
    assert reply is not None and len(reply.answers) == 1  # the ack, direct
    assert len(reply.sends) == 2 and len({to for to, _ in reply.sends}) == 2
    for to, wrapped in reply.sends:
        assert to[0] in ("10.0.0.2", "10.0.0.3", "10.0.0.4")
        relay = serfcompat.decode_relay(wrapped)
        assert (relay.addr, relay.port, relay.dest_name) == (bytes([10, 0, 0, 9]), 7946, "serf9")
        assert relay.message == reply.answers[0]
    layer2, _ = layer_with(member("a", last=2))
    reply2 = layer2.receive(0.0, _query(2), ME)  # fewer members than relay factor + 1: none
    assert reply2 is not None and reply2.sends == ()


def test_a_relay_message_is_forwarded_only_if_it_carries_a_query_response() -> None:
    layer, _ = layer_with()
    answer = serfcompat.encode_query_response(1, 5, "serf2", None, True)
    reply = layer.receive(0.0, serfcompat.encode_relay(bytes([10, 0, 0, 9]), 7000, "serf9", answer), ME)
    assert reply is not None and reply.to == ("10.0.0.9", 7000) and reply.answers == (answer,)
    event = serfcompat.encode_user_event(1, "x", b"")
    assert layer.receive(0.0, serfcompat.encode_relay(bytes([10, 0, 0, 9]), 7000, "s", event), ME) is None
    assert layer.receive(0.0, b"\x09\xc1", ME) is None  # undecodable header


# ---------------------------------------------------------------- through the core


def _line() -> Harness:
    """a - b - c with a and c unable to hear each other: c hears a's news only via b."""
    h = Harness(dataclasses.replace(Config.local(), retransmit_mult=4), seed=3)
    for name in ("a", "b", "c"):
        h.add(name)
    h.join_all("a")
    h.wait(lambda: h.converged(["a", "b", "c"]), timeout=10)
    h.run_for(2.0)
    h.cut |= {("a", "c"), ("c", "a")}
    return h


def test_a_user_event_crosses_a_member_that_relays_it() -> None:
    h = _line()
    a = h.nodes["a"]
    h.perform("a", a.serf_message(h.now, a.serf.user_event("deploy", b"v1")))
    h.wait(lambda: any(isinstance(e, UserEvent) for _, who, e in h.events if who == "c"), timeout=2)
    got = [(who, e) for _, who, e in h.events if isinstance(e, UserEvent)]
    assert sorted(who for who, _ in got) == ["a", "b", "c"]  # each node reports it once
    h.run_for(5.0)
    assert len([1 for _, _, e in h.events if isinstance(e, UserEvent)]) == 3


def test_force_leave_of_a_failed_member_makes_it_left_everywhere() -> None:
    h = Harness(Config.local(), seed=4)
    for name in ("a", "b", "c"):
        h.add(name)
    h.join_all("a")
    h.wait(lambda: h.converged(["a", "b", "c"]), timeout=10)
    h.down.add("c")
    h.wait(lambda: h.status("a", "c") == "dead" and h.status("b", "c") == "dead", timeout=30)
    a = h.nodes["a"]
    h.perform("a", a.serf_message(h.now, a.serf.force_leave("c")))
    h.wait(lambda: h.status("b", "c") == "left", timeout=2)
    assert h.status("a", "c") == "left"
    assert any(isinstance(e, MemberLeft) and e.member.name == "c" for _, who, e in h.events if who == "b")


def test_a_leave_intent_before_a_dead_from_another_member_makes_it_left() -> None:
    h = Harness(Config.local(), seed=5)
    for name in ("a", "b", "c"):
        h.add(name)
    h.join_all("a")
    h.wait(lambda: h.converged(["a", "b", "c"]), timeout=10)
    b = h.nodes["b"]
    # c's intent (as a serf agent that then crashes before its own dead would send it)
    h.perform("b", b.serf_message(h.now, serfcompat.encode_leave_intent(50, "c")))
    h.down.add("c")
    h.wait(lambda: h.status("a", "c") in ("dead", "left") and h.status("b", "c") in ("dead", "left"),
           timeout=30)
    assert h.status("a", "c") == "left" and h.status("b", "c") == "left"
    assert not any(isinstance(e, MemberFailed) and e.member.name == "c" for _, _, e in h.events)
