"""The push/pull merge's memo of (state, member) pairs known to be no news
(``antientropy.set_merge_memo_size``, on in the simulator only) against merges without it.

Owns: equal effects and equal tables for the same sequence of merges into nodes that
share their members (as a simulator's nodes do), with states that are no news, news,
about unknown members, about the node itself, and repeated (memo hits). Does not: test
the merge's rules themselves (test_swim*.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from gossip import antientropy
from gossip.config import Config
from gossip.members import Member, Status, ip_bytes
from gossip.swim import Swim
from gossip.wire.messages import NodeState, PushNodeState, PushPull


@pytest.fixture
def memo_size() -> Iterator[None]:
    yield
    antientropy.set_merge_memo_size(0)  # the agent's default, for the tests after


def _member(i: int, inc: int = 1) -> Member:
    vsn = b"\x01\x05\x02\x00\x00\x00"
    return Member(f"n{i:03d}", f"10.0.{i >> 8}.{i & 255}", 7946, inc, Status.ALIVE, b"", vsn, 0.0)


def _state(m: Member, inc: int | None = None, state: NodeState = NodeState.ALIVE) -> PushNodeState:
    return PushNodeState(m.name, ip_bytes(m.addr), m.port, m.meta, m.incarnation if inc is None else inc, state, m.vsn)


Effects = list[tuple[int, list[object]]]


def _merge_all(
    memo: int, rounds: list[list[tuple[int, PushPull]]], members: list[Member]
) -> tuple[Effects, list[list[Member]]]:
    antientropy.set_merge_memo_size(memo)
    nodes = []
    for i in range(3):
        swim = Swim(Config(), members[i].name, (members[i].addr, 7946), rng=random.Random(i), now=0.0)
        swim.bootstrap_members(0.0, members)  # every node holds the same member objects
        nodes.append(swim)
    effects: Effects = []
    now = 1.0
    for batch in rounds:
        for node, msg in batch:
            fx: list[object] = []
            nodes[node]._sync.merge(now, msg, fx)  # type: ignore[arg-type]
            effects.append((node, fx))
            now += 0.5
    return effects, [s._table.members.values() for s in nodes]


@pytest.mark.parametrize("seed", range(4))
def test_merges_with_the_memo_equal_merges_without_it(seed: int, memo_size: None) -> None:
    rnd = random.Random(seed)
    members = [_member(i) for i in range(300)]
    quiet = [_state(m) for m in members]  # shared state objects, as the decoder shares them
    rounds = []
    for _ in range(6):
        batch = []
        for _ in range(4):
            states = list(quiet)
            for _ in range(rnd.randrange(0, 6)):  # some news among the no-news
                k = rnd.randrange(len(states))
                m = members[k]
                kind = rnd.randrange(3)
                if kind == 0:
                    states[k] = _state(m, m.incarnation + 1)
                elif kind == 1:
                    states[k] = _state(m, state=NodeState.SUSPECT)
                else:
                    states[k] = _state(m, state=NodeState.DEAD)
            unknown = _member(300 + rnd.randrange(50))  # a member nobody holds yet
            states.insert(rnd.randrange(len(states)), _state(unknown))
            batch.append((rnd.randrange(3), PushPull(False, tuple(states))))
        rounds.append(batch)
    # Small memo sizes force it to be emptied while in use.
    expected = _merge_all(0, rounds, members)
    for size in (7, 1 << 16):
        assert _merge_all(size, rounds, members) == expected
    assert any(fx for _, fx in expected[0])  # the news did something
    assert len(antientropy._quiet) > 0  # and the memo was used
