"""The member table (gossip/membertable.py): order, gone set, random choices, expiry."""

from __future__ import annotations

import random

import pytest

from gossip.members import Member, Status
from gossip.membertable import MemberImage, MemberTable, NameIndex
from tests.unit.membertable_reference import ReferenceTable


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


# ---------------------------------------------------------------- compact layout


def _mm(i: int, inc: int = 1, status: Status = Status.ALIVE, at: float = 0.0) -> Member:
    return Member(f"m{i}", f"10.0.{i // 250}.{i % 250}", 7946, inc, status, b"", b"", at)


def _same(ref: ReferenceTable, t: MemberTable) -> None:
    assert list(t.members) == list(ref.members)
    assert t.members.values() == list(ref.members.values())
    assert [m.name for m in t.gone()] == [m.name for m in ref.gone()]
    assert [m.name for m in t.others()] == [m.name for m in ref.others()]
    assert len(t.members) == len(ref.members)
    assert t.lazily_shuffled_from() == ref.lazily_shuffled_from()
    t.check_invariants()


def _state_of(m: Member) -> bytes:
    return f"{m.name}:{m.incarnation}:{int(m.status)};".encode()


def _joined(t: MemberTable) -> bytes | None:
    """The table's states joined as a push/pull half builds them from a shared image."""
    patches = t.image_patches(_state_of)
    if patches is None:
        return None
    image, changes = patches
    return image.patched_states(_state_of, changes)


def _drive(ref: ReferenceTable, t: MemberTable, ops: random.Random, n: int, steps: int) -> int:
    """The same random calls on both tables; every answer must be equal. Returns how
    many steps the table's joined states came from a shared image."""
    now = 0.0
    patched = 0
    names = [f"m{j}" for j in range(n + 20)]
    for _ in range(steps):
        now += 1.0
        before, version = t.members.items(), t.version
        op = ops.randrange(100)
        i = ops.randrange(n + 20)
        if op < 30:
            a, b = ref.next_probe_target(), t.next_probe_target()
            assert a == b
        elif op < 50:
            k = ops.randrange(5)
            assert ref.k_random(k, lambda m: m.status != Status.DEAD) == \
                t.k_random(k, lambda m: m.status != Status.DEAD)
        elif op < 70 and f"m{i}" != ref.me:
            cur = ref.get(f"m{i}")
            status = Status(ops.randrange(4))
            new = _mm(i, (cur.incarnation if cur else 0) + ops.randrange(2), status, now)
            assert (cur is None) == (t.get(new.name) is None)
            if cur is None:
                ref.add(new)
                t.add(new)
            else:
                ref.set(new)
                t.set(new)
        elif op < 74:
            assert [m.name for m in ref.expire(now, 30.0, 10.0)] == [m.name for m in t.expire(now, 30.0, 10.0)]
        elif op < 78:
            victim = ref.evictable()
            assert victim == t.evictable()
            if victim is not None and victim.name != ref.me:
                assert ref.remove(victim.name) == t.remove(victim.name)
        elif op < 85:
            ref.mark_heard(f"m{i}")
            t.mark_heard(f"m{i}")
        elif op < 87:
            given = [_mm(j) for j in ops.sample(range(n + 20), 10)]
            assert ref.install(given) == t.install(given)
        else:
            addr = (f"10.0.{i // 250}.{i % 250}", 7946 if op % 2 else 1)
            assert t.knows_address(addr) == any(m.address == addr for m in ref.members.values())
        assert ref.get(f"m{i}") == t.get(f"m{i}")
        assert (f"m{i}" in ref.members) == (f"m{i}" in t.members)
        # A batch lookup answers as one get per name; a change of the members (values
        # or order) always changes the version a push/pull merge relies on.
        assert t.get_many(names) == [ref.get(x) for x in names]
        if t.members.items() != before:
            assert t.version != version
        # A push/pull half from the shared image's joined states, the overlay patched in,
        # is the states of every member in order.
        joined = _joined(t)
        if joined is not None:
            patched += 1
            assert joined == b"".join(map(_state_of, ref.members.values()))
    _same(ref, t)
    return patched


@pytest.mark.parametrize("seed", range(6))
def test_compact_table_answers_every_call_like_the_dict_table(seed: int) -> None:
    ref = ReferenceTable(_mm(0), random.Random(seed))
    t = MemberTable(_mm(0), random.Random(seed))
    _drive(ref, t, random.Random(100 + seed), 40, 1500)


@pytest.mark.parametrize("seed", range(6))
def test_tables_installed_from_one_image_behave_like_dict_tables(seed: int) -> None:
    """The simulator's start: many tables share one image and one name index, then
    each changes on its own (overlay, lazy swaps, copied out when they grow)."""
    index = NameIndex(shared=True)
    n = 100 + 30 * seed
    members = [_mm(i) for i in range(n)]
    if seed % 2:
        members[7] = _mm(7, status=Status.DEAD)  # a converged table that holds a dead one
    image = MemberImage(index, members)
    pairs = []
    for node in (0, 3, n - 1):
        ref = ReferenceTable(members[node], random.Random(f"{seed}:{node}"))
        t = MemberTable(members[node], random.Random(f"{seed}:{node}"))
        t.share_names(index)
        assert ref.install({m.name: m for m in members}) == t.install(image)
        _same(ref, t)
        pairs.append((ref, t))
    patched = 0
    for k, (ref, t) in enumerate(pairs):
        patched += _drive(ref, t, random.Random(seed * 10 + k), n, 400 + 300 * seed)
    assert patched > 0  # the image's joined states were used, overlay and all
    assert image.values() == [m for m in members]  # nobody wrote into the shared image


def test_an_unshared_index_gives_rows_back_so_it_stays_as_small_as_the_table() -> None:
    t = MemberTable(_mm(0), random.Random(1))
    for rnd in range(50):
        for i in range(1, 11):
            t.add(_mm(rnd * 10 + i, status=Status.DEAD, at=float(rnd)))
        t.expire(float(rnd) + 100.0, 50.0)
    assert len(t.members) == 1 and len(t._index.rows) == 1 and len(t._index.names) <= 11
    t.check_invariants()


def test_a_table_sharing_an_image_stores_only_what_changed() -> None:
    index = NameIndex(shared=True)
    members = [_mm(i) for i in range(1000)]
    image = MemberImage(index, members)
    t = MemberTable(members[5], random.Random(1))
    t.share_names(index)
    t.install(image)
    for i in range(10, 20):
        t.set(_mm(i, 2, Status.SUSPECT))
    for _ in range(30):
        t.next_probe_target()
    assert t._vals is image.vals and t._seq is image.order and len(t._over) == 10
    assert t.members.values()[10:20] == [_mm(i, 2, Status.SUSPECT) for i in range(10, 20)]
    assert t.knows_address(("10.0.0.30", 7946)) and not t.knows_address(("10.9.0.1", 7946))
    joined = _joined(t)
    assert joined == b"".join(map(_state_of, t.members.values()))
    assert image.joined_states(_state_of)[0] == b"".join(map(_state_of, members))
    assert t._vals is image.vals  # reading the states copied nothing out
