"""The caches and fast paths that let 10,000 simulated nodes run: each must give the
same bytes and the same decisions as the plain path it short-cuts."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.config import Config
from gossip.effects import Effect, Log, MemberJoined, MemberSuspected, StreamRequest
from gossip.members import Member, Status, ip_bytes
from gossip.swim import Swim
from gossip.timers import TimerKind
from gossip.wire import codec as wire
from gossip.wire import lzw, messagecodec
from gossip.wire.messages import DEFAULT_VSN, NodeState, PushNodeState, PushPull

CFG = Config()


def _swim(name: str = "a", ip: str = "10.0.0.1", seed: int = 1) -> Swim:
    return Swim(CFG, name, (ip, 7946), rng=random.Random(seed), now=0.0)


def _member(i: int, inc: int = 0, status: Status = Status.ALIVE, meta: bytes = b"") -> Member:
    return Member(f"m{i:03d}", f"10.1.{i // 250}.{i % 250 + 1}", 7946, inc, status, meta, DEFAULT_VSN, 0.0)


def _plain_push_pull(s: Swim, join: bool) -> bytes:
    """The push/pull stream built the slow way: a PushNodeState per member."""
    nodes = tuple(
        PushNodeState(m.name, ip_bytes(m.addr), m.port, m.meta, m.incarnation, NodeState(int(m.status)), m.vsn)
        for m in s.members()
    )
    return wire.encode_stream(PushPull(join, nodes, b""), compress=CFG.enable_compression, keyring=None)


def _request(effects: Sequence[object]) -> StreamRequest:
    reqs = [e for e in effects if isinstance(e, StreamRequest)]
    assert len(reqs) == 1
    return reqs[0]


# ---------------------------------------------------------------- push/pull encoding


def test_push_pull_from_cached_states_is_byte_identical_and_follows_updates() -> None:
    s = _swim()
    s.bootstrap_members(0.0, [_member(i) for i in range(40)])
    first = _request(s.join(0.0, [("10.9.9.9", 7946)])).data
    assert first == _plain_push_pull(s, join=True)
    assert all(m.wire_state is not None for m in s.members())  # cached now
    # A change makes a new Member value: the next push/pull shows it.
    wire.decode_stream(first, None)
    s._table.set(s.member("m007").evolve(status=Status.DEAD, incarnation=3))  # type: ignore[union-attr]
    s.set_meta(1.0, b"tag=1")
    again = _request(s.join(1.0, [("10.9.9.9", 7946)])).data
    assert again != first
    assert again == _plain_push_pull(s, join=True)
    decoded = wire.decode_stream(again, None)
    assert isinstance(decoded, PushPull)
    states = {n.name: n for n in decoded.nodes}
    assert states["m007"].state == NodeState.DEAD and states["m007"].incarnation == 3
    assert states["a"].meta == b"tag=1" and states["a"].incarnation == 1


def test_a_stale_cached_state_is_impossible_members_are_new_values() -> None:
    m = _member(1)
    object.__setattr__(m, "wire_state", b"cached")
    changed = m.evolve(incarnation=1)
    assert changed.wire_state is None
    assert changed == _member(1, inc=1) and m == _member(1)  # the cache is not part of equality


def test_stream_compression_memo_returns_fresh_bytes_for_a_changed_body() -> None:
    body1 = wire.encode_push_pull_body(False, [b"\x80"] * 20000, b"")
    body2 = wire.encode_push_pull_body(False, [b"\x80"] * 20001, b"")
    a = wire.frame_stream(body1, compress=True, keyring=None)
    assert wire.frame_stream(body1, compress=True, keyring=None) == a
    assert a == wire.encode_compress(body1)
    assert wire.frame_stream(body2, compress=True, keyring=None) == wire.encode_compress(body2)


# ---------------------------------------------------------------- merge fast path


def _pp(*states: PushNodeState) -> PushPull:
    return PushPull(False, states, b"")


def _ns(m: Member, **changes: object) -> PushNodeState:
    base = PushNodeState(m.name, ip_bytes(m.addr), m.port, m.meta, m.incarnation, NodeState(int(m.status)), m.vsn)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_merge_of_what_we_hold_changes_nothing() -> None:
    s = _swim()
    members = [_member(i) for i in range(10)] + [_member(10, inc=2, status=Status.DEAD)]
    s.bootstrap_members(0.0, members)
    before = {m.name: m for m in s.members()}
    effects: list[Effect] = []
    state = wire.decode_stream(_plain_push_pull(s, join=False), None)
    assert isinstance(state, PushPull)
    s._sync.merge(1.0, state, effects)
    # Older alive from the same address, and suspect/dead about a dead member: no-ops.
    s._sync.merge(1.0, _pp(_ns(members[3], incarnation=0), _ns(members[10], state=NodeState.SUSPECT)), effects)
    assert effects == []
    assert {m.name: m for m in s.members()} == before
    assert s.member("m003") is before["m003"]


def test_merge_still_acts_on_everything_the_fast_path_must_not_skip() -> None:
    s = _swim()
    members = [_member(i) for i in range(6)]
    s.bootstrap_members(0.0, members)
    effects: list[Effect] = []
    s._sync.merge(
        1.0,
        _pp(
            _ns(members[0], incarnation=1, meta=b"new"),  # newer alive: updated
            _ns(members[1], addr=bytes([10, 7, 7, 7])),  # same incarnation, other address: conflict
            _ns(members[2], state=NodeState.SUSPECT),  # suspect about an alive member
            _ns(members[3], state=NodeState.LEFT),  # left
            PushNodeState("new", bytes([10, 8, 0, 1]), 7946, b"", 0, NodeState.ALIVE),  # unknown
            PushNodeState("a", bytes([10, 0, 0, 1]), 7946, b"", 5, NodeState.ALIVE),  # about us: refute
        ),
        effects,
    )
    assert s.member("m000").meta == b"new"  # type: ignore[union-attr]
    assert any(isinstance(e, Log) and "conflicting address for m001" in e.message for e in effects)
    assert any(isinstance(e, MemberSuspected) and e.member.name == "m002" for e in effects)
    assert s.member("m003").status == Status.LEFT  # type: ignore[union-attr]
    assert any(isinstance(e, MemberJoined) and e.member.name == "new" for e in effects)
    assert s.local.incarnation == 6


# ---------------------------------------------------------------- decoding


_FIELD = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 2**33), st.binary(max_size=20),
    st.sampled_from([b"n1", b"\xff\xfe", bytes([10, 0, 0, 1]), bytes(16), DEFAULT_VSN, b"\x01\x02"]),
)
_KEYS = [b"Name", b"Addr", b"Port", b"Meta", b"Incarnation", b"State", b"Vsn"]


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _FIELD))
def test_node_state_fast_decode_agrees_with_the_checked_decoder(d: dict[bytes, object]) -> None:
    def run(fn: object) -> object:
        try:
            return fn(d)  # type: ignore[operator]
        except Exception as e:  # comparing outcomes, whatever they are
            return (type(e), str(e))

    assert run(messagecodec._node_state) == run(messagecodec._node_state_checked)


def test_big_push_pull_decode_is_memoised_and_equal() -> None:
    nodes = tuple(
        PushNodeState(f"n{i:04d}", bytes([10, 0, i >> 8, i & 255]), 7946, b"", i, NodeState.ALIVE)
        for i in range(400)
    )
    body = wire.encode(PushPull(True, nodes, b"\x81state"))
    assert len(body) >= messagecodec._BIG_BODY
    first = wire.decode(body)
    assert first == PushPull(True, nodes, b"\x81state")
    assert wire.decode(bytes(body)) is first


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_installs_in_the_given_order_without_gossip_and_staggers_push_pull() -> None:
    n = 300
    names = [f"m{i:03d}" for i in range(n)]
    members = [_member(i) for i in range(n)]
    cores = [Swim(CFG, names[i], (members[i].addr, 7946), rng=random.Random(i), now=0.0) for i in range(4)]
    shared = {c.local.name: c.local for c in cores} | {m.name: m for m in members[4:]}
    for c in cores:
        c.bootstrap_members(0.0, shared)
        c.check_invariants()
        assert [m.name for m in c.members()] == list(shared)  # one order: identical push/pulls
        assert len(c._broadcasts) == 0  # everyone already knows us
    # Converged tables in one order encode identically (the stream memo then hits).
    assert _plain_push_pull(cores[0], False) == _plain_push_pull(cores[1], False)
    # The push/pull timer is re-drawn over the scaled interval (150 s at 300 members).
    first_pp = [min(t[0] for t in c._timers.entries()
                    if t[2] is TimerKind.PUSH_PULL_TICK and t[3] == c._sync.generation) for c in cores]
    assert all(0.0 <= t <= 150.0 for t in first_pp)


def test_bootstrap_probe_order_is_a_lazy_permutation_of_every_member() -> None:
    s = _swim()
    s.bootstrap_members(0.0, [_member(i) for i in range(50)])
    probed = []
    for _ in range(50):
        target = s._table.next_probe_target()
        assert target is not None
        probed.append(target.name)
        s.check_invariants()
    assert sorted(probed) == sorted(f"m{i:03d}" for i in range(50))  # each once per round
    assert probed != sorted(probed)  # in a random order
    lazy = s._table.lazily_shuffled_from()
    assert lazy is None or lazy >= 50


def test_bootstrap_keeps_what_we_know_and_queues_our_alive_if_not_known() -> None:
    s = _swim()
    s.set_meta(0.0, b"x")
    s.bootstrap_members(0.0, [_member(i) for i in range(5)] + [_member(99, inc=7)])
    assert s.local.meta == b"x"
    assert s._broadcasts.pending("a")  # the given members do not know our meta yet
    assert s.member("m099").incarnation == 7  # type: ignore[union-attr]


def test_lzw_big_input_memo_is_by_content() -> None:
    big = b"\x87\xa4Addr\xc4\x04\n\x00\x00\x01\xabIncarnation\x00" * 1000
    other = big[:-1] + b"\x01"
    a = lzw.compress(big)
    assert lzw.compress(bytes(bytearray(big))) is a  # same content: remembered
    b = lzw.compress(other)
    assert b != a and lzw.decompress(b) == other
    assert lzw.compress(big) is a
    assert lzw._compress(big) == a and lzw._compress(other) == b
