"""The member table as it was before the compact layout (dict + list, commit d014354),
kept verbatim as the reference the compact ``gossip.membertable.MemberTable`` must
match call for call (tests/unit/test_membertable.py). Not used by the agent."""

from __future__ import annotations

import operator
import random
from collections.abc import Callable, Iterable, Iterator, Mapping

from gossip.members import Member, Status

_DEAD = Status.DEAD  # a module constant: compared on the hot path
_SUSPECT = Status.SUSPECT
_status_of = operator.attrgetter("status")


class ReferenceTable:
    """See the module docstring. ``members`` may be read directly; change it only
    through ``set``, ``add``, ``install`` and ``expire``."""

    __slots__ = ("_gone", "_heard", "_index", "_order", "_rng", "_unshuffled_from", "me", "members")

    def __init__(self, me: Member, rng: random.Random) -> None:
        self.me = me.name
        self._rng = rng
        self.members: dict[str, Member] = {me.name: me}
        self._gone: dict[str, None] = {}
        """Names of dead and left members, insertion-ordered."""
        self._heard: set[str] = set()
        """Names of members that answered a probe of ours (``mark_heard``)."""
        self._order: list[str] = [me.name]
        self._index = 0
        """The next position of ``_order`` to probe."""
        self._unshuffled_from: int | None = None
        """After ``install``: ``_order[i:]`` is not shuffled yet and each probe draws
        its target from it (a lazy Fisher-Yates), so installing 10,000 members does
        not shuffle 10,000 names up front. None: fully shuffled."""

    def get(self, name: str) -> Member | None:
        return self.members.get(name)

    def others(self) -> Iterator[Member]:
        me = self.me
        return (m for m in self.members.values() if m.name != me)

    def gone(self) -> Iterator[Member]:
        """The dead and left members, in the order they went."""
        return map(self.members.__getitem__, self._gone)

    # ------------------------------------------------------------------ changes

    def set(self, member: Member) -> None:
        """A known member's new value (or a new member already placed in the order)."""
        self.members[member.name] = member
        if member.status >= _DEAD:
            self._gone[member.name] = None
        else:
            self._gone.pop(member.name, None)

    def add(self, member: Member) -> None:
        """A new member, at a random place of the order not yet probed this round."""
        self.set(member)
        pos = self._rng.randint(self._index, len(self._order))
        self._order.insert(pos, member.name)

    def install(self, members: Mapping[str, Member] | Iterable[Member]) -> bool:
        """Take the given members, in the given order (ours win; members unknown to the
        given ones are appended); the rest of this probe round is drawn lazily.
        Returns whether the given members already held us as we are."""
        table = dict(members) if isinstance(members, Mapping) else {m.name: m for m in members}
        knows_us = table.get(self.me) == self.members[self.me]
        for name, m in self.members.items():
            table[name] = m
        self.members = table
        # The scans below run once per node over N members (N² at start-up): a C-level
        # pass first, the Python filters only when they can find something.
        if max(map(_status_of, table.values()), default=Status.ALIVE) >= _DEAD:
            self._gone = {name: None for name, m in table.items() if m.status >= _DEAD}
        else:
            self._gone = {}
        done = self._order[: self._index]
        if done:
            seen = set(done)
            self._order = done + [name for name in table if name not in seen]
        else:
            self._order = list(table)
        self._unshuffled_from = self._index
        return knows_us

    def mark_heard(self, name: str) -> None:
        """``name`` answered us directly (a probe's ack): it existed, not just in gossip."""
        self._heard.add(name)

    def heard(self, name: str) -> bool:
        return name in self._heard

    def evictable(self) -> Member | None:
        """A member to forget for a newcomer when the table is full: the first that
        never answered us (only heard of), dead or left ones first, then suspected ones
        (probed and silent: spoofs), then alive ones (not probed yet: a real member may
        be among them, so last)."""
        heard = self._heard
        for m in self.gone():
            if m.name not in heard:
                return m
        first: Member | None = None
        for m in self.others():
            if m.name not in heard:
                if m.status == _SUSPECT:
                    return m
                if first is None:
                    first = m
        return first

    def remove(self, name: str) -> Member:
        """Forget one member (``evictable``); returns it. One C-level pass over the order."""
        m = self.members.pop(name)
        self._gone.pop(name, None)
        self._heard.discard(name)
        pos = self._order.index(name)
        del self._order[pos]
        if pos < self._index:
            self._index -= 1
        if self._unshuffled_from is not None and pos < self._unshuffled_from:
            self._unshuffled_from -= 1
        return m

    def expire(self, now: float, after: float, unheard_after: float | None = None) -> list[Member]:
        """Remove the members dead or left for ``after`` seconds, or for ``unheard_after``
        if they never answered us (``mark_heard``); returns them."""
        heard = self._heard
        short = after if unheard_after is None else min(after, unheard_after)
        expired = [
            m for m in self.gone()
            if now - m.changed_at >= (after if m.name in heard else short)
        ]
        if expired:
            self._drop(expired)
        return expired

    def _drop(self, gone: list[Member]) -> None:
        for m in gone:
            del self.members[m.name]
            del self._gone[m.name]
            self._heard.discard(m.name)
        names = {m.name for m in gone}
        rest = self._order[self._index :]
        self._order = [n for n in self._order if n not in names]
        self._index = len(self._order) - len([n for n in rest if n not in names])
        if self._unshuffled_from is not None:
            self._unshuffled_from = self._index

    # ------------------------------------------------------------------ choosing

    def next_probe_target(self) -> Member | None:
        """The next alive or suspect member in the probe order (None: nobody to probe)."""
        order = self._order
        for _ in range(len(order)):
            if self._index >= len(order):
                self._new_round()
                order = self._order
            lazy = self._unshuffled_from
            if lazy is not None and self._index >= lazy:
                i = self._index
                j = self._rng.randrange(i, len(order))
                order[i], order[j] = order[j], order[i]
                self._unshuffled_from = i + 1
            name = order[self._index]
            self._index += 1
            m = self.members.get(name)
            if m is None or name == self.me:
                continue
            if m.status in (Status.ALIVE, Status.SUSPECT):
                return m
        return None

    def _new_round(self) -> None:
        self._unshuffled_from = None
        self._rng.shuffle(self._order)
        self._index = 0

    def k_random(self, k: int, accept: Callable[[Member], bool]) -> list[Member]:
        """Up to ``k`` distinct random members (not us) passing ``accept`` (memberlist's
        kRandomNodes: bounded random tries, so it stays O(k) at 10,000 members)."""
        order = self._order
        n = len(order)
        chosen: list[Member] = []
        if n <= 1 or k <= 0:
            return chosen
        members = self.members
        me = self.me
        randrange = self._rng.randrange
        names: list[str] = []  # names are unique in the table: cheaper than Member.__eq__
        for _ in range(3 * n if n <= 64 else 6 * k + 20):
            if len(chosen) >= k:
                break
            name = order[randrange(n)]
            if name == me or name in names:
                continue
            m = members[name]
            if not accept(m):
                continue
            chosen.append(m)
            names.append(name)
        return chosen

    # ------------------------------------------------------------------ checks

    def check_invariants(self) -> None:
        """For tests and the simulator: the order and the gone set match the members."""
        assert self.me in self.members
        assert set(self._order) == set(self.members), "probe order out of sync"
        assert set(self._gone) == {n for n, m in self.members.items() if m.status >= _DEAD}

    def lazily_shuffled_from(self) -> int | None:
        """Where the unshuffled rest of the probe order starts (tests)."""
        return self._unshuffled_from
