"""The large push/pull decode that reuses the previous body's node states
(``messagecodec._dec_push_pull_states_memo``) against the plain decode.

Owns: equal results for sequences of large bodies that share, change, drop and add
states, inadmissible states skipped as before, malformed bodies (each one large enough
to take the memo path) raising the plain path's exact DecodeError, and the bounds of
the recent-push/pull memo (``_dec_push_pull``: its byte budget, no entry for a body over
``_MEMO_MAX_BODY``). Every test starts from empty memos (the ``fresh_memos`` fixture).
Does not: test the msgpack forms themselves (test_wire.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import msgpack
import pytest

from gossip.errors import DecodeError
from gossip.wire import messagecodec as mc
from gossip.wire.messages import NodeState, PushNodeState, PushPull


@pytest.fixture(autouse=True)
def fresh_memos(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The codec's module-level memos, empty for each test and restored after it (other
    tests in the process share them)."""
    monkeypatch.setattr(mc, "_prev_states", {})
    monkeypatch.setattr(mc, "_recent_push_pulls", {})
    monkeypatch.setattr(mc, "_recent_push_pull_bytes", 0)
    yield


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


def _malformed(kind: str) -> bytes:
    """A push/pull over ``_BIG_BODY`` that is wrong in one way (``kind``)."""
    raw = [mc.encode_node_state(_state(i)) for i in range(600)]
    user = b"u" * 100
    data = mc.encode(PushPull(join=False, nodes=tuple(_state(i) for i in range(600)), user_state=user))
    at = len(data) - len(user) - sum(len(r) for r in raw[300:])  # where state 300 starts
    assert data[at : at + len(raw[300])] == raw[300]
    if kind == "cut-inside-a-state":
        return data[: at + 5]
    if kind == "user-state-truncated":
        return data[:-31]
    if kind == "a-state-missing":  # the header still counts 600
        return data[:at] + data[at + len(raw[300]) :]
    if kind == "invalid-msgpack-byte":  # 0xc1 is never used by msgpack
        return data[:at] + b"\xc1" + data[at + 1 :]
    if kind == "a-state-not-a-map":
        return data[:at] + bytes([5]) + data[at + len(raw[300]) :]  # msgpack 5, a fixint
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["cut-inside-a-state", "user-state-truncated", "a-state-missing",
                                  "invalid-msgpack-byte", "a-state-not-a-map"])
def test_malformed_bodies_raise_the_plain_error(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _malformed(kind)
    assert mc._BIG_BODY <= len(data) <= mc._MEMO_MAX_BODY  # the memo path's range
    with pytest.raises(DecodeError) as plain:
        mc._dec_push_pull_body(data)
    memo_raised: list[DecodeError] = []
    real = mc._dec_push_pull_states_memo

    def spy(body: bytes) -> PushPull:
        try:
            return real(body)
        except DecodeError as exc:
            memo_raised.append(exc)
            raise

    monkeypatch.setattr(mc, "_dec_push_pull_states_memo", spy)
    with pytest.raises(DecodeError) as public:
        mc.decode(data)
    assert len(memo_raised) == 1  # the memo path saw it, failed, and the plain one worded it
    assert str(public.value) == str(plain.value)
    assert mc._recent_push_pulls == {}  # nothing is memoised for a failed decode


def test_the_recent_push_pull_memo_stays_within_its_byte_budget() -> None:
    """Distinct 1-3 MiB bodies: the memo holds at most ``_RECENT_PUSH_PULL_BYTES`` of
    them (oldest out first), and its running total is the sum of what it holds."""
    rng = random.Random(3)
    states = [_state(i) for i in range(50)]
    MiB = 1024 * 1024
    bodies = [_body(states, user=bytes([k]) * rng.randrange(1 * MiB, 3 * MiB)) for k in range(8)]
    assert sum(map(len, bodies)) > 2 * mc._RECENT_PUSH_PULL_BYTES
    for data in bodies:
        got = mc.decode(data)
        assert isinstance(got, PushPull) and got.user_state == data[-len(got.user_state) :]
        assert data in mc._recent_push_pulls  # the newest is always kept
        assert mc._recent_push_pull_bytes == sum(map(len, mc._recent_push_pulls))
        assert mc._recent_push_pull_bytes <= mc._RECENT_PUSH_PULL_BYTES
    assert bodies[0] not in mc._recent_push_pulls  # evicted, oldest first
    assert mc.decode(bodies[-1]) is mc._recent_push_pulls[bodies[-1]]  # a hit is the kept value


def test_a_body_over_the_memo_limit_is_decoded_plainly_and_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _body([_state(i) for i in range(50)], user=b"x" * (mc._MEMO_MAX_BODY + 1))
    assert len(data) > mc._MEMO_MAX_BODY

    def no_memo(body: bytes) -> PushPull:
        raise AssertionError("the state memo was used for a body over the limit")

    monkeypatch.setattr(mc, "_dec_push_pull_states_memo", no_memo)
    got = mc.decode(data)
    assert isinstance(got, PushPull) and len(got.nodes) == 50 and len(got.user_state) == mc._MEMO_MAX_BODY + 1
    assert mc._recent_push_pulls == {} and mc._recent_push_pull_bytes == 0
    assert mc._prev_states == {}
