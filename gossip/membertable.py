"""The member table of one node: every member it knows (itself included) and their order.

Owns: the members by name (``Member`` values, replaced on every change), the names
of the dead and left ones (so reaping and rejoining do not scan 10,000 members),
the names of those that ever answered one of our probes (only they keep the full
reap interval once gone: the rest were only ever heard of second-hand),
and memberlist's node order: probed round-robin, reshuffled each round, new
members inserted at a random place not yet probed this round, and the list
``k_random`` draws from (memberlist's ``kRandomNodes``). After ``install`` the
rest of the order is shuffled lazily, one draw per probe.
Also owns the compact layout behind it (below): interned names (``NameIndex``) and
``MemberImage``, one converged table many tables start from.
Does not: decide about members (``gossip/swim.py`` compares news with
``members.supersedes``), report events or send anything. Its randomness is the
node's ``rng``, drawn in the same order as the core always drew it.

Layout (why: a simulator holds 10,000 tables of 10,000 members in one process; a dict
per table cost ~29 bytes per (node, member) pair, the order list 8 more). Every name
has a row number in a ``NameIndex`` (one per table in the agent; one for all the
simulated nodes). A table is: the members by row (a list, ``None`` where absent), the
rows in insertion order (``array``: the iteration order a dict had, so push/pulls
encode byte for byte as before) and the probe order (rows, ``array``). A table
installed from a ``MemberImage`` shares the image's three sequences until it changes
them: changed members go to a small per-table overlay (row -> member), and the lazy
shuffle's swaps to a small per-table dict (position -> row); either is copied out into
the table's own sequences once it grows past an eighth of the table, or when a member
is inserted or removed. A converged 10,000-node simulation then costs a few hundred
bytes per node for its tables instead of ~370 kB. Rows only serve lookups: every
order a caller can observe (iteration, probe order, random choices) is the order the
dict-and-list table had, drawn with the same random numbers.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import accumulate, compress, repeat
from operator import is_not

from gossip.members import Member, Status

_DEAD = Status.DEAD  # a module constant: compared on the hot path
_SUSPECT = Status.SUSPECT
_UP = (Status.ALIVE, Status.SUSPECT)


def _rows(values: Iterable[int] = ()) -> array[int]:
    return array("i", values)


class NameIndex:
    """Member names interned as row numbers. ``shared``: used by many tables (the
    simulator), rows are never given back; otherwise the one table that owns it gives
    a row back when it forgets the member, so an agent's index stays as small as its
    table however many names come and go."""

    __slots__ = ("_free", "names", "rows", "shared")

    def __init__(self, shared: bool = False) -> None:
        self.rows: dict[str, int] = {}
        self.names: list[str] = []
        self._free: list[int] = []
        self.shared = shared

    def row(self, name: str) -> int:
        """``name``'s row, interning it if new."""
        r = self.rows.get(name)
        if r is None:
            if self._free:
                r = self._free.pop()
                self.names[r] = name
            else:
                r = len(self.names)
                self.names.append(name)
            self.rows[name] = r
        return r

    def release(self, name: str) -> None:
        """No table of this (unshared) index holds ``name`` any more."""
        if not self.shared:
            r = self.rows.pop(name)
            self.names[r] = ""
            self._free.append(r)


class MemberImage(Mapping[str, Member]):
    """A fixed, converged member table (the given order) that many tables install
    (``MemberTable.install``) without copying it: the simulator's converged start."""

    __slots__ = ("_at_address", "_positions", "_state_ends", "_states", "_states_of", "any_gone", "index",
                 "order", "vals")

    def __init__(self, index: NameIndex, members: Iterable[Member]) -> None:
        self.index = index
        self.order = _rows()
        self.vals: list[Member | None] = []
        vals = self.vals
        for m in members:
            r = index.row(m.name)
            if r >= len(vals):
                vals.extend([None] * (r + 1 - len(vals)))
            if vals[r] is None:
                self.order.append(r)
            vals[r] = m  # a repeated name: the last value, the first place (a dict's rule)
        self.any_gone = any(m.status >= _DEAD for m in self.values())
        self._at_address: dict[tuple[str, int], list[int]] | None = None
        self._positions: dict[int, int] | None = None
        self._states_of: Callable[[Member], bytes] | None = None
        self._states = b""
        self._state_ends = array("q")

    def joined_states(self, state_of: Callable[[Member], bytes]) -> tuple[bytes, array[int]]:
        """``state_of`` of every member in order, joined, and where each one ends (built
        once per ``state_of``, on first use): the body of a push/pull that a table
        sharing this image patches its changes into (``patched_states``)."""
        if self._states_of is not state_of:
            states = list(map(state_of, self.values()))
            self._states = b"".join(states)
            self._state_ends = array("q", accumulate(map(len, states)))
            self._states_of = state_of
        return self._states, self._state_ends

    def patched_states(self, state_of: Callable[[Member], bytes], changes: tuple[tuple[int, bytes], ...]) -> bytes:
        """The joined states with ``changes`` (``(position, state)`` in position order)
        in place of the image's states at those positions."""
        blob, ends = self.joined_states(state_of)
        if not changes:
            return blob
        parts: list[bytes] = []
        done = 0
        for p, state in changes:
            parts.append(blob[done : ends[p - 1] if p else 0])
            parts.append(state)
            done = ends[p]
        parts.append(blob[done:])
        return b"".join(parts)

    def positions(self) -> dict[int, int]:
        """Row -> its position in ``order`` (built once, on first use)."""
        if self._positions is None:
            self._positions = {r: i for i, r in enumerate(self.order)}
        return self._positions

    def rows_at(self, address: tuple[str, int]) -> list[int]:
        """The rows of the members at ``address`` (built once, on first use)."""
        if self._at_address is None:
            at: dict[tuple[str, int], list[int]] = {}
            for r in self.order:
                m = self.vals[r]
                assert m is not None
                at.setdefault((m.addr, m.port), []).append(r)
            self._at_address = at
        return self._at_address.get(address, [])

    def __getitem__(self, name: str) -> Member:
        r = self.index.rows.get(name)
        m = self.vals[r] if r is not None and r < len(self.vals) else None
        if m is None:
            raise KeyError(name)
        return m

    def __iter__(self) -> Iterator[str]:
        return map(self.index.names.__getitem__, self.order)

    def __len__(self) -> int:
        return len(self.order)

    def values(self) -> list[Member]:  # type: ignore[override]
        return list(map(self.vals.__getitem__, self.order))  # type: ignore[arg-type]


class Members(Mapping[str, Member]):
    """The read-only mapping view of a table (``MemberTable.members``): name -> member
    in insertion order, as the dict it replaces. ``values``/``items`` are lists (a
    snapshot), so is iteration."""

    __slots__ = ("_t",)

    def __init__(self, table: MemberTable) -> None:
        self._t = table

    def get(self, name: str, default: Member | None = None) -> Member | None:  # type: ignore[override]
        t = self._t
        r = t._index.rows.get(name)
        if r is None:
            return default
        over = t._over
        if over:
            m = over.get(r)
            if m is not None:
                return m
        vals = t._vals
        m = vals[r] if r < len(vals) else None
        return default if m is None else m

    def __getitem__(self, name: str) -> Member:
        m = self.get(name)
        if m is None:
            raise KeyError(name)
        return m

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __len__(self) -> int:
        return len(self._t._seq)

    def __iter__(self) -> Iterator[str]:
        return iter(list(map(self._t._index.names.__getitem__, self._t._seq)))

    def values(self) -> list[Member]:  # type: ignore[override]
        return self._t._values()

    def items(self) -> list[tuple[str, Member]]:  # type: ignore[override]
        return [(m.name, m) for m in self._t._values()]


class MemberTable:
    """See the module docstring. ``members`` may be read directly (a ``Mapping``);
    change the table only through ``set``, ``add``, ``install``, ``remove`` and ``expire``."""

    __slots__ = (
        "_gone", "_heard", "_image", "_index", "_me_row", "_order", "_over", "_pos", "_rng", "_seq",
        "_seq_shared", "_swaps", "_unshuffled_from", "_vals", "_vals_shared", "me", "members", "version",
    )

    def __init__(self, me: Member, rng: random.Random, index: NameIndex | None = None) -> None:
        self.me = me.name
        self._rng = rng
        self._index = index if index is not None else NameIndex()
        self._me_row = self._index.row(me.name)
        self._vals: list[Member | None] = [None] * (self._me_row + 1)
        self._vals[self._me_row] = me
        self._vals_shared = False
        self._image: MemberImage | None = None
        """The image ``_vals`` is shared with, while it is."""
        self._over: dict[int, Member] = {}
        """Changed members while ``_vals`` is an image's (row -> member)."""
        self._seq = _rows([self._me_row])
        """Rows in insertion order (the order a dict iterates)."""
        self._seq_shared = False
        self.members = Members(self)
        self.version = 0
        """Bumped by every change of the members (not of the probe order): a batch of
        lookups (``get_many``) is still valid while it is unchanged."""
        self._gone: dict[str, None] = {}
        """Names of dead and left members, insertion-ordered."""
        self._heard: set[str] = set()
        """Names of members that answered a probe of ours (``mark_heard``)."""
        self._order = _rows([self._me_row])
        """The probe order (rows)."""
        self._swaps: dict[int, int] | None = None
        """Not None while ``_order`` is an image's: the positions changed since (the lazy
        shuffle's swaps), position -> row."""
        self._pos = 0
        """The next position of ``_order`` to probe."""
        self._unshuffled_from: int | None = None
        """After ``install``: ``_order[i:]`` is not shuffled yet and each probe draws
        its target from it (a lazy Fisher-Yates), so installing 10,000 members does
        not shuffle 10,000 names up front. None: fully shuffled."""

    def share_names(self, index: NameIndex) -> None:
        """Use ``index`` (shared with other tables) from now on. Only on a table that
        holds nothing but us (just built), before ``install``."""
        if len(self._seq) != 1 or self._swaps is not None or self._vals_shared:
            raise RuntimeError("share_names: only on a new table")
        me = self._vals[self._me_row]
        assert me is not None
        self._index = index
        self._me_row = index.row(self.me)
        self._vals = [None] * (self._me_row + 1)
        self._vals[self._me_row] = me
        self._seq = _rows([self._me_row])
        self._order = _rows([self._me_row])
        self.version += 1

    # ------------------------------------------------------------------ reading

    def get(self, name: str) -> Member | None:
        return self.members.get(name)

    def get_many(self, names: list[str]) -> list[Member | None]:
        """``[get(n) for n in names]`` with C-level passes (a push/pull merge looks up
        every one of 10,000 names; a Python call each was most of the merge)."""
        rs = list(map(self._index.rows.get, names))
        vals = self._vals
        if None in rs or (rs and max(rs) >= len(vals)):  # type: ignore[type-var,operator]
            return list(map(self.members.get, names))  # names we never held: rare
        out: list[Member | None] = list(map(vals.__getitem__, rs))  # type: ignore[arg-type]
        over = self._over
        if over:
            patched = list(map(over.get, rs))  # type: ignore[arg-type]
            # Only the overlay's few: found by a C-level pass, not a Python one over all.
            for j in compress(range(len(patched)), map(is_not, patched, repeat(None))):
                out[j] = patched[j]
        return out

    def _at(self, r: int) -> Member | None:
        over = self._over
        if over:
            m = over.get(r)
            if m is not None:
                return m
        vals = self._vals
        return vals[r] if r < len(vals) else None

    def _values(self) -> list[Member]:
        vals = self._vals
        over = self._over
        if not over:
            return list(map(vals.__getitem__, self._seq))  # type: ignore[arg-type]
        image = self._image
        if self._seq_shared and image is not None:
            # The image's order with the overlay's few members patched in at their
            # places: a C-level copy instead of a Python pass over every row (a
            # push/pull's states at 10,000 members, once the crash storm has changed
            # a hundred of them on every node).
            out = list(map(vals.__getitem__, self._seq))
            pos = image.positions()
            for r, m in over.items():
                out[pos[r]] = m
            return out  # type: ignore[return-value]
        get = over.get
        return [get(r) or vals[r] for r in self._seq]  # type: ignore[misc]

    def image_patches(
        self, state_of: Callable[[Member], bytes]
    ) -> tuple[MemberImage, tuple[tuple[int, bytes], ...]] | None:
        """While the table shares an image's order: the image, and where this table's
        members differ from it as ``(position, state_of(member))`` in position order
        (the overlay's few members). None when the table has its own order. Together
        they determine the table's joined states, ``image.patched_states(state_of,
        changes)``, without touching the other members (a push/pull half at 10,000
        members, built ~10,000 times in a crash storm's minute), and are a cheap key for
        a memo of push/pull halves. ``state_of`` must be a pure function of the member."""
        image = self._image
        if not self._seq_shared or image is None:
            return None
        over = self._over
        if not over:
            return image, ()
        pos = image.positions()
        return image, tuple(sorted(zip(map(pos.__getitem__, over), map(state_of, over.values()), strict=True)))

    def others(self) -> Iterator[Member]:
        me = self._me_row
        vals = self._vals
        over = self._over
        if not over:
            return (vals[r] for r in self._seq if r != me)  # type: ignore[misc]
        get = over.get
        return (get(r) or vals[r] for r in self._seq if r != me)  # type: ignore[misc]

    def knows_address(self, address: tuple[str, int]) -> bool:
        """Whether a member (us included) is at ``address``. While the table shares an
        image this costs the overlay, not a pass over every member."""
        image = self._image
        if image is None:
            return any(m.address == address for m in self._values())
        over = self._over
        # Every row of a shared image is in the table (removing copies it out).
        if any(r not in over for r in image.rows_at(address)):
            return True
        return any(m.address == address for m in over.values())

    @property
    def gone_names(self) -> Mapping[str, None]:
        """The names of the dead and left members (the same object for the table's life,
        kept up to date): the core's hot path tests news against it without a call."""
        return self._gone

    def gone(self) -> Iterator[Member]:
        """The dead and left members, in the order they went."""
        return map(self.members.__getitem__, list(self._gone))

    # ------------------------------------------------------------------ layout

    def _own_vals(self) -> None:
        """Copy a shared image's members out into our own list, with the overlay."""
        vals = list(self._vals)
        need = len(self._index.names)
        if len(vals) < need:
            vals.extend([None] * (need - len(vals)))
        for r, m in self._over.items():
            vals[r] = m
        self._vals = vals
        self._over = {}
        self._vals_shared = False
        self._image = None

    def _own_seq(self) -> None:
        if self._seq_shared:
            self._seq = _rows(self._seq)
            self._seq_shared = False

    def _own_order(self) -> None:
        swaps = self._swaps
        if swaps is not None:
            order = _rows(self._order)
            for p, r in swaps.items():
                order[p] = r
            self._order = order
            self._swaps = None

    def _own_all(self) -> None:
        if self._vals_shared:
            self._own_vals()
        self._own_seq()
        self._own_order()

    def _put(self, r: int, member: Member) -> None:
        if self._vals_shared:
            over = self._over
            over[r] = member
            if len(over) > 64 + (len(self._seq) >> 3):
                self._own_vals()
            return
        vals = self._vals
        if r >= len(vals):
            vals.extend([None] * (len(self._index.names) - len(vals)))
        vals[r] = member

    # ------------------------------------------------------------------ changes

    def set(self, member: Member) -> None:
        """A known member's new value (or a new member already placed in the order)."""
        name = member.name
        r = self._index.row(name)
        self.version += 1
        if self._at(r) is None:
            self._own_seq()
            self._seq.append(r)
        self._put(r, member)
        if member.status >= _DEAD:
            self._gone[name] = None
        else:
            self._gone.pop(name, None)

    def add(self, member: Member) -> None:
        """A new member, at a random place of the order not yet probed this round."""
        self.set(member)
        pos = self._rng.randint(self._pos, len(self._order))
        self._own_order()
        self._order.insert(pos, self._index.row(member.name))

    def install(self, members: Mapping[str, Member] | Iterable[Member]) -> bool:
        """Take the given members, in the given order (ours win; members unknown to the
        given ones are appended); the rest of this probe round is drawn lazily.
        Returns whether the given members already held us as we are."""
        ours = self._values()
        self.version += 1
        if isinstance(members, MemberImage) and members.index is self._index:
            knows_us = members.get(self.me) == self.members[self.me]
            self._install_image(members, ours)
            return knows_us
        table = dict(members) if isinstance(members, Mapping) else {m.name: m for m in members}
        knows_us = table.get(self.me) == self.members[self.me]
        for m in ours:
            table[m.name] = m
        index = self._index
        seq = _rows(map(index.row, table))
        vals: list[Member | None] = [None] * len(index.names)
        for r, m in zip(seq, table.values(), strict=True):
            vals[r] = m
        self._vals, self._vals_shared, self._over, self._image = vals, False, {}, None
        self._seq, self._seq_shared = seq, False
        self._after_install(any(m.status >= _DEAD for m in table.values()))
        return knows_us

    def _install_image(self, image: MemberImage, ours: list[Member]) -> None:
        self._vals, self._vals_shared, self._over, self._image = image.vals, True, {}, image
        self._seq, self._seq_shared = image.order, True
        row = self._index.row
        for m in ours:
            r = row(m.name)
            if self._at(r) is None:
                self._own_seq()
                self._seq.append(r)
            if self._at(r) is not m:
                self._over[r] = m
        self._after_install(image.any_gone or any(m.status >= _DEAD for m in ours))

    def _after_install(self, any_gone: bool) -> None:
        # The scans below run once per node over N members (N² at start-up): only when
        # they can find something.
        # Refilled in place: the dict is ``gone_names`` for the table's whole life.
        self._gone.clear()
        if any_gone:
            self._gone.update((m.name, None) for m in self._values() if m.status >= _DEAD)
        if self._pos:
            self._own_order()
            done = self._order[: self._pos]
            seen = set(done)
            done.extend(r for r in self._seq if r not in seen)
            self._order, self._swaps = done, None
        elif self._seq_shared:
            self._order, self._swaps = self._seq, {}
        else:
            self._order, self._swaps = _rows(self._seq), None
        self._unshuffled_from = self._pos

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
        """Forget one member (``evictable``); returns it. C-level passes over the rows."""
        m = self.members[name]
        self._own_all()
        self.version += 1
        r = self._index.rows[name]
        self._vals[r] = None
        del self._seq[self._seq.index(r)]
        self._gone.pop(name, None)
        self._heard.discard(name)
        pos = self._order.index(r)
        del self._order[pos]
        if pos < self._pos:
            self._pos -= 1
        if self._unshuffled_from is not None and pos < self._unshuffled_from:
            self._unshuffled_from -= 1
        self._index.release(name)
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
        self._own_all()
        self.version += 1
        index = self._index
        rows: set[int] = set()
        for m in gone:
            r = index.rows[m.name]
            rows.add(r)
            self._vals[r] = None
            del self._gone[m.name]
            self._heard.discard(m.name)
        rest = self._order[self._pos :]
        self._order = _rows(r for r in self._order if r not in rows)
        self._pos = len(self._order) - len([r for r in rest if r not in rows])
        if self._unshuffled_from is not None:
            self._unshuffled_from = self._pos
        self._seq = _rows(r for r in self._seq if r not in rows)
        for m in gone:
            index.release(m.name)

    # ------------------------------------------------------------------ choosing

    def next_probe_target(self) -> Member | None:
        """The next alive or suspect member in the probe order (None: nobody to probe)."""
        n = len(self._order)
        for _ in range(n):
            if self._pos >= n:
                self._new_round()
            i = self._pos
            lazy = self._unshuffled_from
            swaps = self._swaps
            order = self._order
            if lazy is not None and i >= lazy:
                j = self._rng.randrange(i, n)
                if swaps is None:
                    order[i], order[j] = order[j], order[i]
                else:
                    oi = swaps.get(i, order[i])
                    swaps[i] = swaps.get(j, order[j])
                    swaps[j] = oi
                    if len(swaps) > 64 + (n >> 3):
                        self._own_order()
                        swaps, order = None, self._order
                self._unshuffled_from = i + 1
            r = order[i] if not swaps else swaps.get(i, order[i])
            self._pos = i + 1
            m = self._at(r)
            if m is None or r == self._me_row:
                continue
            if m.status in _UP:
                return m
        return None

    def _new_round(self) -> None:
        self._unshuffled_from = None
        self._own_order()
        self._rng.shuffle(self._order)  # type: ignore[arg-type]
        self._pos = 0

    def k_random(self, k: int, accept: Callable[[Member], bool]) -> list[Member]:
        """Up to ``k`` distinct random members (not us) passing ``accept`` (memberlist's
        kRandomNodes: bounded random tries, so it stays O(k) at 10,000 members)."""
        order = self._order
        swaps = self._swaps
        n = len(order)
        chosen: list[Member] = []
        if n <= 1 or k <= 0:
            return chosen
        me = self._me_row
        at = self._at
        randrange = self._rng.randrange
        rows: list[int] = []  # rows are unique in the table: cheaper than Member.__eq__
        for _ in range(3 * n if n <= 64 else 6 * k + 20):
            if len(chosen) >= k:
                break
            p = randrange(n)
            r = order[p] if not swaps else swaps.get(p, order[p])
            if r == me or r in rows:
                continue
            m = at(r)
            assert m is not None
            if not accept(m):
                continue
            chosen.append(m)
            rows.append(r)
        return chosen

    # ------------------------------------------------------------------ checks

    def check_invariants(self) -> None:
        """For tests and the simulator: the order and the gone set match the members."""
        names = self._index.names
        assert self.me in self.members
        order = list(self._order)
        if self._swaps:
            for p, r in self._swaps.items():
                order[p] = r
        assert len(order) == len(self._seq), "probe order out of sync"
        assert {names[r] for r in order} == {names[r] for r in self._seq}, "probe order out of sync"
        assert len(set(self._seq)) == len(self._seq)
        assert all(self._at(r) is not None for r in self._seq)
        assert set(self._gone) == {n for n, m in self.members.items() if m.status >= _DEAD}

    def lazily_shuffled_from(self) -> int | None:
        """Where the unshuffled rest of the probe order starts (tests)."""
        return self._unshuffled_from
