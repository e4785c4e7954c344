"""The large push/pull decode that reuses the previous body's node states
(``messagecodec._dec_push_pull_states_memo``) against the plain decode.

Owns: equal results for sequences of large bodies that share, change, drop and add
states, inadmissible states skipped as before, and malformed bodies raising the plain
path's exact DecodeError.
Does not: test the msgpack forms themselves (test_wire.py).
"""

from __future__ import annotations

import random

import msgpack
import pytest

from gossip.errors import DecodeError
from gossip.wire import messagecodec as mc
from gossip.wire.messages import NodeState, PushNodeState, PushPull


def _state(i: int, inc: int = 1, state: NodeState = NodeState.ALIVE) -> PushNodeState:
    return PushNodeState(f"node-{i:05d}", bytes([10, 0, i >> 8 & 255, i & 255]), 7946,
                         b"m" * (i % 7), inc, state)


def _body(states: list[PushNodeState], user: bytes = b"u" * 30) -> bytes:
    return mc.encode(PushPull(join=False, nodes=tuple(states), user_state=user))


def _both(data: bytes) -> PushPull:
    plain = mc._dec_push_pull_body(data)
    memo = mc._dec_push_pull_states_memo(data)
    assert memo == plain
    assert mc.decode(data) == plain  # the public path, whichever route it takes
    return plain


def test_sequences_of_large_bodies_decode_as_the_plain_path() -> None:
    rng = random.Random(7)
    states = [_state(i) for i in range(600)]
    assert len(_body(states)) >= mc._BIG_BODY
    for _ in range(12):
        for _ in range(rng.randrange(1, 40)):  # incarnations and states change
            i = rng.randrange(len(states))
            states[i] = _state(i, states[i].incarnation + 1, rng.choice(list(NodeState)))
        if rng.random() < 0.5:
            del states[rng.randrange(len(states))]
        if rng.random() < 0.5:
            states.insert(rng.randrange(len(states)), _state(len(states) + 1000))
        got = _both(_body(states, user=bytes(rng.randrange(50))))
        assert list(got.nodes) == states
    # A body with a state repeated inside it.
    _both(_body(states + states[:5]))


def test_inadmissible_states_are_skipped_as_before() -> None:
    states = [_state(i) for i in range(600)]
    raw = [mc.encode_node_state(s) for s in states]
    bad = msgpack.packb({"Name": "bad name!", "Addr": bytes(4), "Port": 1, "Meta": b"",
                         "Incarnation": 1, "State": 0, "Vsn": b""}, use_bin_type=False)
    data = mc.encode_push_pull_body(False, [*raw[:300], bad, *raw[300:]], b"")
    got = _both(data)
    assert [n.name for n in got.nodes] == [s.name for s in states]


@pytest.mark.parametrize("cut", [1, 17, 5000, -31, -1])
def test_malformed_bodies_raise_the_plain_error(cut: int) -> None:
    data = _body([_state(i) for i in range(600)], user=b"")
    data = data[:cut]
    with pytest.raises(DecodeError) as plain:
        mc._dec_push_pull_body(data)
    if len(data) >= mc._BIG_BODY:
        with pytest.raises(DecodeError) as public:
            mc.decode(data)
        assert str(public.value) == str(plain.value)
