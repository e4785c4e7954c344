"""The graceful leave of one ``Swim`` node, in serf's order.

Owns: the leave sequence: the serf leave intent first (queued and told directly to
every live member); once it has been gossiped (or after ``LEAVE_INTENT_TIMEOUT``),
memberlist's dead-about-self, told the same way; then ``LEAVE_PROPAGATE`` more
seconds of gossip before ``Swim.leave_done``. Sending both at once lets some serf
peers see the dead first and show us ``failed``.
Does not: decide when the shell stops (``Swim.leave_done``), or gossip itself (the
core's beat carries the queued news). A part of ``Swim`` (it uses the core's table,
broadcast queue, outbox and timers), moved out of ``gossip/swim.py`` unchanged.
Reference: serf's ``Leave`` (leave intent, then memberlist's ``Leave``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gossip.effects import Effect
from gossip.members import Status
from gossip.serf.layer import (
    LEAVE_INTENT_KEY,
    LEAVE_INTENT_MIN,
    LEAVE_INTENT_TIMEOUT,
    LEAVE_PROPAGATE,
)
from gossip.timers import TimerKind
from gossip.wire import codec as wire
from gossip.wire.messages import Dead, UserMsg

if TYPE_CHECKING:
    from gossip.swim import Swim

_LEAVE_FANOUT = 512


def begin(swim: Swim, now: float) -> list[Effect]:
    """``Swim.leave`` after its clock update: the intent queued, told, gossiped."""
    effects: list[Effect] = []
    if swim.leaving:
        return effects
    swim.leaving = True
    swim._leave_phase = 1
    swim._leave_at = now
    me = swim.local
    intent = wire.encode(UserMsg(swim._serf.leave_intent(swim.name, me.incarnation)))
    swim._broadcasts.queue(LEAVE_INTENT_KEY, intent)
    swim._table.set(me.evolve(status=Status.LEFT, changed_at=now))
    # Told directly to every live member as well: random gossip may pick just
    # recently dead members, and a serf peer that hears the dead before the intent
    # shows us failed. A leave is rare, so the fan-out is affordable.
    tell_everyone(swim, intent, effects)
    effects.extend(swim._gossip(now))
    return effects


def tell_everyone(swim: Swim, part: bytes, effects: list[Effect]) -> None:
    live = [m for m in swim._table.others() if m.status in (Status.ALIVE, Status.SUSPECT)]
    if len(live) > _LEAVE_FANOUT:
        live = swim.rng.sample(live, _LEAVE_FANOUT)
    for peer in live:
        swim._out.emit(peer.address, [part], peer, effects)


def advance(swim: Swim, now: float, effects: list[Effect]) -> None:
    """Each gossip beat while leaving: the next phase once the last one's news is out."""
    if swim._leave_phase == 1 and (
        (
            not swim._broadcasts.pending(LEAVE_INTENT_KEY)
            and now - swim._leave_at >= LEAVE_INTENT_MIN
        )
        or now - swim._leave_at >= LEAVE_INTENT_TIMEOUT
    ):
        me = swim.local
        dead = wire.encode(Dead(me.incarnation, swim.name, swim.name))
        swim._broadcasts.queue(swim.name, dead)
        tell_everyone(swim, dead, effects)
        swim._leave_phase = 2
    elif swim._leave_phase == 2 and not swim._broadcasts.pending(swim.name):
        swim._leave_phase = 3
        swim._leave_at = now + LEAVE_PROPAGATE
        swim._timers.set(swim._leave_at, TimerKind.GOSSIP_TICK, "leave")
