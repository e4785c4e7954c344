"""Lifeguard suspicion: a timer whose deadline shrinks with independent confirmations.

Owns: the bookkeeping of one suspicion (who confirmed, current deadline).
Does not: set timers or declare anyone dead (``gossip/swim.py``; its ``_suspect``
inlines ``confirm`` on the hot path), or compute the bounds (``config.py``).
Reference: Lifeguard (arXiv 1707.00788) §IV-B; memberlist 0.2.2 ``suspicion.go``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gossip.config import suspicion_timeout


@dataclass(slots=True)
class Suspicion:
    incarnation: int
    start: float
    low: float
    high: float
    k: int
    confirmers: list[str] = field(default_factory=list)
    """The accuser first, then each distinct confirmer (the accuser does not count)."""

    @property
    def confirmations(self) -> int:
        return max(0, len(self.confirmers) - 1)

    @property
    def deadline(self) -> float:
        return self.start + suspicion_timeout(self.low, self.high, self.k, self.confirmations)

    def confirm(self, from_: str) -> bool:
        """Record an independent confirmation; True if it was new and counted."""
        if self.confirmations >= self.k or from_ in self.confirmers:
            return False
        self.confirmers.append(from_)
        return True
