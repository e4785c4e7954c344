"""The bucketed broadcast queue selects exactly what memberlist's sorted queue selects."""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.broadcasts import Broadcasts


@dataclass
class _RefItem:
    key: str
    data: bytes
    order: int
    transmits: int = 0


class _Reference:
    """The previous implementation: sort the whole queue for every packet."""

    def __init__(self) -> None:
        self.items: dict[str, _RefItem] = {}
        self.order = 0

    def queue(self, key: str, data: bytes) -> None:
        self.order += 1
        self.items.pop(key, None)
        self.items[key] = _RefItem(key, data, self.order)

    def take(self, overhead: int, budget: int, limit: int) -> list[bytes]:
        if not self.items or budget <= overhead:
            return []
        ranked = sorted(self.items.values(), key=lambda it: (it.transmits, -len(it.data), -it.order))
        taken: list[bytes] = []
        used = 0
        for item in ranked:
            cost = len(item.data) + overhead
            if used + cost > budget:
                continue
            used += cost
            taken.append(item.data)
            item.transmits += 1
            if item.transmits >= limit:
                del self.items[item.key]
        return taken


def test_order_fewest_transmits_then_larger_then_newer() -> None:
    q = Broadcasts()
    q.queue("a", b"aa")
    q.queue("b", b"bbbb")
    q.queue("c", b"cc")
    assert q.take(0, 100, 5) == [b"bbbb", b"cc", b"aa"]  # larger first, newer among equals
    q.queue("d", b"d")
    # d has never been sent: it goes before everything sent once.
    assert q.take(0, 100, 5) == [b"d", b"bbbb", b"cc", b"aa"]


def test_skips_what_does_not_fit_and_takes_smaller_ones() -> None:
    q = Broadcasts()
    q.queue("big", b"x" * 10)
    q.queue("mid", b"y" * 6)
    q.queue("small", b"z" * 3)
    assert q.take(2, 12, 5) == [b"x" * 10]
    assert q.take(2, 13, 5) == [b"y" * 6, b"z" * 3]  # big (sent once) does not fit


def test_one_item_is_not_taken_twice_in_a_packet() -> None:
    q = Broadcasts()
    q.queue("a", b"a")
    assert q.take(0, 100, 5) == [b"a"]
    assert q.take(0, 100, 5) == [b"a"]


def test_replacing_a_sent_item_resets_its_transmits_and_limit_drops() -> None:
    q = Broadcasts()
    q.queue("k", b"old")
    q.queue("j", b"jjj")
    assert sorted(q.take(0, 100, 2)) == [b"jjj", b"old"]
    q.queue("k", b"new")
    assert q.take(0, 3, 2) == [b"new"]  # transmits 0 beats j's 1
    assert q.take(0, 100, 2) == [b"new", b"jjj"]  # equal transmits and size: newer first
    assert len(q) == 0 and not q.pending("k")


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_same_selection_as_the_sorting_reference(seed: int) -> None:
    rng = random.Random(seed)
    q, ref = Broadcasts(), _Reference()
    keys = [f"k{i}" for i in range(rng.randrange(1, 40))]
    for _ in range(200):
        if rng.random() < 0.5:
            key = rng.choice(keys)
            data = bytes([rng.randrange(256)]) * rng.randrange(0, 30)
            q.queue(key, data)
            ref.queue(key, data)
        else:
            overhead = rng.randrange(0, 4)
            budget = rng.randrange(0, 120)
            limit = rng.randrange(1, 6)
            assert q.take(overhead, budget, limit) == ref.take(overhead, budget, limit)
        assert len(q) == len(ref.items)
        for key in keys:
            assert q.pending(key) == (key in ref.items)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_same_selection_with_mostly_equal_sizes(seed: int) -> None:
    """Failure gossip is mostly messages of one length: exercises the whole-bucket and
    equal-length shortcuts of ``take`` (and budgets that cut a bucket anywhere)."""
    rng = random.Random(seed)
    q, ref = Broadcasts(), _Reference()
    keys = [f"k{i}" for i in range(rng.randrange(1, 60))]
    sizes = [20, 20, 20, 20, 33, rng.randrange(1, 50)]
    for _ in range(300):
        if rng.random() < 0.6:
            key = rng.choice(keys)
            data = bytes([rng.randrange(256)]) * rng.choice(sizes)
            q.queue(key, data)
            ref.queue(key, data)
        elif rng.random() < 0.1:
            key = rng.choice(keys)
            q.discard(key)
            ref.items.pop(key, None)
        else:
            overhead = rng.randrange(0, 4)
            budget = rng.randrange(0, 400)
            limit = rng.randrange(1, 8)
            assert q.take(overhead, budget, limit) == ref.take(overhead, budget, limit)
        assert len(q) == len(ref.items)


def test_discard_forgets_a_pending_message() -> None:
    q = Broadcasts()
    q.queue("a", b"aa")
    q.queue("b", b"bb")
    q.take(0, 2, 5)  # "b" (newer) sent once
    q.discard("b")
    q.discard("missing")
    assert not q.pending("b") and len(q) == 1
    assert q.take(0, 100, 5) == [b"aa"]
    q.discard("a")
    assert q.take(0, 100, 5) == [] and len(q) == 0
