"""Serf peers never get table bytes; our agents (told apart by the agent tag) still converge.

A serf-like member (a Swim whose delegate, like serf's, always sends its own push/pull
state starting with 0x02 and has no agent tag) joins a cluster of Swim + Tables
nodes. Every packet and stream it receives is decoded: no user message and no
push/pull user state may start with a private byte (>= 0x80), while the tables
still spread among our nodes.
"""

from __future__ import annotations

import random

import msgpack
import pytest

from gossip.delegate import NullDelegate
from gossip.effects import Address, Effect
from gossip.members import Member, Status
from gossip.serf.payloads import SerfType, decode_tags, encode_tags
from gossip.swim import Swim
from gossip.tables.agenttag import AGENT_TAG, AGENT_TAG_VALUE, has_agent_tag, with_agent_tag
from gossip.tables.replica import Tables
from gossip.wire import codec as wire
from gossip.wire.messages import DEFAULT_VSN, PushPull, UserMsg
from tests.stateful.tablesnet import Net, Node

SERF_META = encode_tags({"role": "serf"})
SERF_STATE: bytes = bytes([SerfType.PUSH_PULL]) + msgpack.packb(
    {"LTime": 1, "StatusLTimes": {}, "LeftMembers": [], "EventLTime": 0, "Events": [], "QueryLTime": 0},
    use_bin_type=False,
)


def test_agent_tag_is_added_to_existing_tags_and_recognised() -> None:
    meta = with_agent_tag(encode_tags({"role": "overlay-agent", "rack": "r1"}))
    assert decode_tags(meta) == {"role": "overlay-agent", "rack": "r1", AGENT_TAG: AGENT_TAG_VALUE}
    assert decode_tags(with_agent_tag(b"")) == {AGENT_TAG: AGENT_TAG_VALUE}
    assert has_agent_tag(meta) and has_agent_tag(encode_tags({AGENT_TAG: "2"}))
    assert not has_agent_tag(SERF_META)
    # An agent from before the tag, with the default role, is still ours (rolling upgrade).
    assert has_agent_tag(encode_tags({"role": "overlay-agent"}))
    assert not has_agent_tag(encode_tags({"role": "web", "note": "overlay-agent"}))
    assert not has_agent_tag(b"")
    # The name inside a value, or meta that is not tags, is not the tag.
    assert not has_agent_tag(encode_tags({"note": AGENT_TAG}))
    assert not has_agent_tag(b"\xff\xc1" + AGENT_TAG.encode())
    with pytest.raises(ValueError, match="512"):
        with_agent_tag(encode_tags({"x": "y" * 490}))


def test_tables_advertise_the_tag_and_accept_only_tagged_members() -> None:
    t = Tables(node="n0", vtep="192.0.2.1", rng=random.Random(1), meta=encode_tags({"rack": "r1"}))
    assert decode_tags(t.node_meta(512)) == {"rack": "r1", AGENT_TAG: AGENT_TAG_VALUE}

    def member(meta: bytes) -> Member:
        return Member("x", "192.0.2.2", 7946, 1, Status.ALIVE, meta, DEFAULT_VSN, 0.0)

    assert t.accepts_user_data(member(t.node_meta(512)))
    assert not t.accepts_user_data(member(SERF_META))


class SerfLikeDelegate(NullDelegate):
    """What serf's delegate looks like from the wire: own state always, no private bytes."""

    def __init__(self) -> None:
        super().__init__(SERF_META)
        self.private: list[bytes] = []

    def accepts_user_data(self, peer: Member) -> bool:
        return True  # so this core always sends SERF_STATE, as serf does

    def on_user_message(self, now: float, data: bytes) -> list[Effect]:
        self.private.append(data)
        return []

    def local_state(self, join: bool) -> bytes:
        return SERF_STATE

    def merge_remote_state(self, now: float, data: bytes, join: bool) -> list[Effect]:
        self.private.append(data)
        return []


class RecordingSwim(Swim):
    """Decodes everything it is sent and keeps each private (table) payload seen."""

    seen: list[bytes]
    pushpulls: int

    def _note(self, msg: object) -> None:
        if isinstance(msg, UserMsg) and msg.payload[:1] >= b"\x80":
            self.seen.append(msg.payload)
        if isinstance(msg, PushPull):
            self.pushpulls += 1
            if msg.user_state[:1] >= b"\x80":
                self.seen.append(msg.user_state)

    def handle_packet(self, now: float, src: Address, data: bytes) -> list[Effect]:
        for msg in wire.decode_packet(data, None, require_encryption=False):
            self._note(msg)
        return super().handle_packet(now, src, data)

    def handle_stream(self, now: float, src: Address, data: bytes) -> tuple[bytes | None, list[Effect]]:
        self._note(wire.decode_stream(data, None, require_encryption=False))
        return super().handle_stream(now, src, data)

    def handle_stream_reply(self, now: float, token: int, reply: bytes | None) -> list[Effect]:
        if reply:
            self._note(wire.decode_stream(reply, None, require_encryption=False))
        return super().handle_stream_reply(now, token, reply)


def _add_serf_like(net: Net, name: str) -> tuple[RecordingSwim, SerfLikeDelegate]:
    addr = ("10.0.9.1", 7946)
    delegate = SerfLikeDelegate()
    swim = RecordingSwim(net.config, name, addr, rng=random.Random(name), now=net.now, delegate=delegate)
    swim.seen = []
    swim.pushpulls = 0
    # Net wants a Tables per node; this one is not wired to anything.
    unused = Tables(node=name, vtep=addr[0], rng=random.Random(0))
    net.nodes[name] = Node(name, addr, swim, unused)
    net._by_addr[addr] = name
    return swim, delegate


@pytest.mark.parametrize("serf_seeds", [False, True], ids=["ours-join-serf", "serf-joins-ours"])
def test_serf_peer_gets_no_table_bytes_while_ours_converge(serf_seeds: bool) -> None:
    net = Net(seed=3)
    for i in range(4):
        net.add(f"n{i}")
    serf, delegate = _add_serf_like(net, "serf")
    if serf_seeds:
        net.join_all("serf")  # every one of ours joins serf: serf answers our join push/pull
    else:
        net.join_all("n0")  # serf joins n0: n0 answers serf's join push/pull
    net.wait(net.members_converged, timeout=30)

    network = net.call("n1", lambda t: t.create_network(net.now, "web", ["10.1.0.0/24"]))
    ours = [net.nodes[f"n{i}"].tables for i in range(4)]
    net.wait(lambda: all(t.networks() == [network] for t in ours), timeout=60)
    net.call("n2", lambda t: t.create_endpoint(net.now, "web", name="a"))
    net.call("n3", lambda t: t.create_endpoint(net.now, "web", name="b"))

    def converged() -> bool:
        return all(t.networks() == [network] for t in ours) and all(
            sorted(e.name for e in t.endpoints("web")) == ["a", "b"] for t in ours[2:]
        )

    net.wait(converged, timeout=60)
    net.run_for(3 * net.config.push_pull_interval)  # several anti-entropy rounds with serf too
    assert serf.pushpulls > 0, "the test never exchanged a push/pull with the serf-like member"
    assert serf.seen == [] and delegate.private == []
