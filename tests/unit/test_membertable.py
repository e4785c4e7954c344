"""The member table (gossip/membertable.py): order, gone set, random choices, expiry."""

from __future__ import annotations

import random

from gossip.members import Member, Status
from gossip.membertable import MemberTable


def _m(i: int, status: Status = Status.ALIVE, at: float = 0.0) -> Member:
    return Member(f"m{i}", f"10.0.0.{i}", 7946, 1, status, b"", b"", at)


def _table(n: int) -> MemberTable:
    t = MemberTable(_m(0), random.Random(1))
    for i in range(1, n):
        t.add(_m(i))
    t.check_invariants()
    return t


def test_each_round_probes_every_live_member_once_and_never_us() -> None:
    t = _table(8)
    t.set(_m(3, Status.DEAD))
    for _ in range(3):
        names = [t.next_probe_target().name for _ in range(6)]  # type: ignore[union-attr]
        assert sorted(names) == [f"m{i}" for i in (1, 2, 4, 5, 6, 7)]


def test_k_random_is_distinct_filtered_and_not_us() -> None:
    t = _table(10)
    chosen = t.k_random(4, lambda m: m.name != "m5")
    assert len(chosen) == 4 and len({m.name for m in chosen}) == 4
    assert all(m.name not in ("m0", "m5") for m in chosen)
    assert _table(1).k_random(3, lambda m: True) == []


def test_expire_removes_long_gone_members_from_the_order_too() -> None:
    t = _table(6)
    t.set(_m(2, Status.DEAD, at=0.0))
    t.set(_m(4, Status.LEFT, at=50.0))
    assert [m.name for m in t.gone()] == ["m2", "m4"]
    assert [m.name for m in t.expire(100.0, after=60.0)] == ["m2"]
    t.check_invariants()
    assert t.get("m2") is None and len(t.members) == 5


def test_install_keeps_ours_appends_the_rest_and_says_whether_we_were_known() -> None:
    t = MemberTable(_m(0), random.Random(1))
    given = {m.name: m for m in (_m(5), _m(0), _m(6))}
    assert t.install(given) is True
    assert list(t.members) == ["m5", "m0", "m6"]
    other = MemberTable(_m(0), random.Random(1))
    assert other.install([_m(5)]) is False
    assert list(other.members) == ["m5", "m0"]
    other.check_invariants()
    assert other.lazily_shuffled_from() == 0


def test_remove_keeps_the_probe_round_whole_and_unheard_members_are_evicted_first() -> None:
    t = _table(10)
    t.install([_m(i) for i in range(10)])  # lazily shuffled from here
    first = [t.next_probe_target().name for _ in range(3)]  # type: ignore[union-attr]
    for name in ("m1", "m9"):
        t.mark_heard(name)
    t.set(_m(4, Status.DEAD))
    victim = t.evictable()
    assert victim is not None and victim.name == "m4"  # gone and never heard: first
    t.remove("m4")
    t.remove(first[0])  # one already probed this round
    t.check_invariants()
    # 7 others left, 2 of them probed already: the round's other 5 follow.
    rest = [t.next_probe_target().name for _ in range(5)]  # type: ignore[union-attr]
    assert set(first[1:]) | set(rest) == {f"m{i}" for i in range(1, 10)} - {"m4", first[0]}
    evicted = t.evictable()
    assert evicted is not None and evicted.name not in ("m0", "m1", "m9")
