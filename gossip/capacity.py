"""How many members one node keeps, and for how long: the member table's bounds.

Owns: admission when the table is full (``Config.max_members``: a newcomer speaking
for itself takes the place of a member that never answered us; others are refused,
with one warning per episode), and reaping: dead and left members are forgotten after
``reap_interval``, or after ``reap_unheard_interval`` if they never answered a probe
of ours (spoofed members never do). Beyond memberlist 0.2.2, which keeps every member
it hears of (issue 18, item 6; docs/design.md).
Does not: decide about members' status (``gossip/swim.py``) or keep the table
(``gossip/membertable.py``, which knows who answered us).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gossip.effects import Effect, Log, MemberReaped
from gossip.members import Status
from gossip.timers import TimerKind

if TYPE_CHECKING:
    from gossip.swim import Swim


class Capacity:
    """The table bounds of one ``Swim`` node (a part of it: it uses the core's table,
    suspicions, timers and stats)."""

    __slots__ = ("_full_said", "_swim", "speaker")

    def __init__(self, swim: Swim) -> None:
        self._swim = swim
        self._full_said = False
        self.speaker: str | None = None
        """The IP address the message being handled came from (set by the entry points)."""

    def make_room(self, addr: str, name: str, effects: list[Effect]) -> bool:
        """Whether new member ``name`` at ``addr`` may be added now. Called only when the
        table is full. A newcomer whose alive came from its own address (a joiner, or a
        member gossiping about itself) takes the place of the first member that never
        answered us, at most one per message; others are refused."""
        swim = self._swim
        victim = swim._table.evictable() if addr == self.speaker else None
        if victim is not None:
            self.speaker = None
            swim._suspicions.pop(victim.name, None)
            effects.append(MemberReaped(swim._table.remove(victim.name)))
            if victim.status in (Status.ALIVE, Status.SUSPECT):
                # The delegate last heard it was up: tell it that it went (as dead), or
                # the tables keep showing its rows and never reap them.
                now = swim._now
                effects.extend(swim.delegate.on_member_change(
                    now, victim, victim.evolve(status=Status.DEAD, changed_at=now)))
            return True
        swim.stats.refused_members += 1
        if not self._full_said:
            self._full_said = True
            effects.append(Log("warning", f"member table full: {swim.config.max_members} members "
                               f"(max_members); refusing new member {name!r} and further ones"))
        return False

    def period(self) -> float:
        """How often ``reap`` runs."""
        return max(1.0, min(self._swim.config.reap_interval / 4, 60.0))

    def reap(self, now: float, effects: list[Effect]) -> None:
        """``REAP_TICK``: forget the members dead or left long enough."""
        swim = self._swim
        config = swim.config
        swim._timers.set(now + self.period(), TimerKind.REAP_TICK, None)
        for m in swim._table.expire(now, config.reap_interval, config.reap_unheard_interval):
            effects.append(MemberReaped(m))
        if len(swim._table.members) < config.max_members:
            self._full_said = False
