"""Convergence of membership views: does each running node see the truth?

Owns: an N×N byte matrix "observer o sees subject x up (alive or suspect)",
fed by the member events each node reports, and the ground truth "x is
running". A view is correct when it shows every running node up and every
stopped node down or absent. Counters are kept incrementally, so asking "what
fraction of nodes has a correct view" is O(1) and can be sampled every
simulated second even at 10,000 nodes (the matrix is 100 MB there).

Suspect counts as up, as in ``serf members``: it is the view an operator reads.
"""

from __future__ import annotations

import itertools


class Views:
    """Incremental correctness counts over an N×N view matrix."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.view = bytearray(n * n)
        self.truth = bytearray(n)
        """1 while a node is running (paused nodes are running)."""
        self.wrong = [0] * n
        """For a running observer: how many subjects it sees wrongly."""
        self.running = 0
        self.bad = 0
        """Running observers with at least one wrong entry."""
        self.wrong_pairs = 0
        self._ones = b"\x01" * n

    # -- queries --------------------------------------------------------------

    def converged_fraction(self) -> float:
        return (self.running - self.bad) / self.running if self.running else 1.0

    def wrong_fraction(self) -> float:
        """Wrong (observer, subject) pairs over all running observer pairs."""
        pairs = self.running * max(0, self.n - 1)
        return self.wrong_pairs / pairs if pairs else 0.0

    def converged(self) -> bool:
        return self.bad == 0

    # -- bookkeeping ----------------------------------------------------------

    def _inc(self, o: int) -> None:
        w = self.wrong[o]
        if w == 0:
            self.bad += 1
        self.wrong[o] = w + 1
        self.wrong_pairs += 1

    def _dec(self, o: int) -> None:
        w = self.wrong[o] - 1
        self.wrong[o] = w
        if w == 0:
            self.bad -= 1
        self.wrong_pairs -= 1

    def see(self, o: int, x: int, up: int) -> None:
        """Observer ``o`` now sees subject ``x`` up (1) or down/absent (0)."""
        if o == x:
            return
        i = o * self.n + x
        if self.view[i] == up:
            return
        self.view[i] = up
        if not self.truth[o]:
            return
        if up == self.truth[x]:
            self._dec(o)
        else:
            self._inc(o)

    def _column_mask(self, x: int, want_view: int) -> bytes:
        """Bytes with 1 where a running observer's view of ``x`` equals ``want_view``."""
        n = self.n
        col = int.from_bytes(self.view[x::n], "big")
        if not want_view:
            col ^= int.from_bytes(self._ones, "big")
        both = col & int.from_bytes(self.truth, "big")
        return both.to_bytes(n, "big")

    def start(self, x: int, knows_all: bool = False) -> None:
        """``x`` starts running with an empty view (or, pre-converged, a correct one)."""
        if self.truth[x]:
            return
        n = self.n
        # As a subject: running observers that do not see x up are now wrong, and
        # those that (wrongly) still saw it up are now right.
        for o in itertools.compress(range(n), self._column_mask(x, 0)):
            if o != x:
                self._inc(o)
        for o in itertools.compress(range(n), self._column_mask(x, 1)):
            if o != x:
                self._dec(o)
        self.truth[x] = 1
        self.running += 1
        # As an observer: its row is reset.
        row = x * n
        if knows_all:
            self.view[row : row + n] = self.truth
            wrong = 0
        else:
            self.view[row : row + n] = bytes(n)
            wrong = self.running - 1
        self.view[row + x] = 1
        self.wrong[x] = wrong
        self.wrong_pairs += wrong
        if wrong:
            self.bad += 1

    def stop(self, x: int) -> None:
        """``x`` stops running (crash or completed leave)."""
        if not self.truth[x]:
            return
        w = self.wrong[x]
        if w:
            self.bad -= 1
            self.wrong_pairs -= w
        self.wrong[x] = 0
        self.truth[x] = 0
        self.running -= 1
        # As a subject: running observers that still see x up are now wrong; the
        # others (which, wrongly, already saw it down) are now right.
        for o in itertools.compress(range(self.n), self._column_mask(x, 1)):
            if o != x:
                self._inc(o)
        for o in itertools.compress(range(self.n), self._column_mask(x, 0)):
            if o != x:
                self._dec(o)

    def start_all_converged(self) -> None:
        """Every node running and seeing every other up (the pre-converged start)."""
        n = self.n
        self.view = bytearray(self._ones) * n
        self.truth = bytearray(self._ones)
        self.wrong = [0] * n
        self.running = n
        self.bad = 0
        self.wrong_pairs = 0

    def check(self) -> None:
        """Recompute every counter from the matrix (tests only; O(N²))."""
        n = self.n
        bad = pairs = 0
        for o in range(n):
            if not self.truth[o]:
                continue
            w = sum(
                1 for x in range(n) if x != o and self.view[o * n + x] != self.truth[x]
            )
            assert w == self.wrong[o], (o, w, self.wrong[o])
            pairs += w
            bad += 1 if w else 0
        assert bad == self.bad and pairs == self.wrong_pairs, (bad, self.bad, pairs, self.wrong_pairs)
        assert self.running == sum(self.truth)
