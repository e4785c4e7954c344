"""How a replica tells the outside that it changed: a counter, its subscribers, the conflict log.

Owns: ``version`` (the replica bumps it on every change that may alter what a node
shows: networks, endpoints, peers, conflicts), the subscribers called once at the end
of every entry point after which ``version`` or the IPsec key rows' own version moved,
and the ``Log`` effects for conflicts that appeared or went away.
Does not: decide what counts as a change (``gossip.tables.replica`` calls ``bump``),
compute conflicts (``gossip.tables.visibility``).

Why subscribers and not an effect: a change is not something the shell must
perform, it is a local observation that every consumer wants at once, in the same
step: the agent pokes its reconcilers, the simulator times the moment a row becomes
visible at that node's simulated ``now``. An effect would have to travel through
``Swim``'s effect lists (which the simulator hashes into its trace) and every driver
would have to know it; a subscriber costs nothing when nobody listens. Still
sans-IO: listeners are called synchronously with the entry point's ``now``, and
must not call the replica's write API (they may read it).
"""

from __future__ import annotations

from collections.abc import Callable

from gossip.effects import Effect, Log
from gossip.tables.ipsecrows import IpsecKeyStore
from gossip.tables.rows import Conflict

Listener = Callable[[float], None]
"""Called with the ``now`` of the entry point that changed the replica."""


class Changes:
    """The change signal of one replica. See the module docstring."""

    def __init__(self, ipsec: IpsecKeyStore) -> None:
        self.version = 0
        self._ipsec = ipsec
        self._listeners: list[Listener] = []
        self._told = (0, 0)
        """(version, IPsec rows' version) when the listeners were last called."""
        self._reported: dict[str, Conflict] = {}
        self._reported_version = 0

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def bump(self) -> None:
        self.version += 1

    def finish(self, now: float, conflicts: Callable[[], list[Conflict]], effects: list[Effect]) -> None:
        """End of an entry point: log conflicts that appeared or went away, then ``announce``."""
        if self.version != self._reported_version:
            self._reported_version = self.version
            current = {c.text: c for c in conflicts()}
            for text in current:
                if text not in self._reported:
                    effects.append(Log("warning", f"tables: {text}"))
            for text in self._reported:
                if text not in current:
                    effects.append(Log("info", f"tables: resolved: {text}"))
            self._reported = current
        self.announce(now)

    def announce(self, now: float) -> None:
        """Call the listeners if anything moved since they were last called."""
        seen = (self.version, self._ipsec.version)
        if seen != self._told:
            self._told = seen
            for listener in self._listeners:
                listener(now)
