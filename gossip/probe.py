"""SWIM's probe cycle with Lifeguard: probe, indirect probe, nack, verdict.

Owns: the one probe in flight, as memberlist's probeNode: a direct ping (for a
suspect target, with Lifeguard's buddy-system suspect beside it so it can refute at
once); after ``probe_timeout`` without an ack, indirect pings through
``indirect_checks`` alive helpers (asking those that speak protocol 4+ for a nack)
and a TCP ping; at the end of the probe interval, which local health scales, the
verdict: a failed probe makes the target suspect. Lifeguard's local health
(``awareness``): a success lowers it, a failure raises it by the nacks that did not
come (or by one), and so does a refute. The other side of the protocol: acks to
pings, and pings relayed for other members' indirect probes (the ack passed back,
a nack when asked for and the relayed ping timed out). A probe whose target's port
answers ICMP unreachable fails at once (``Config.fail_probe_on_unreachable``).
Does not: pick targets or helpers (``gossip/membertable.py``), change member state
(the core's ``_suspect`` decides), pack and send packets (the core's ``_send``
piggybacks broadcasts) or keep time (the core's timer heap calls back by
``TimerKind``; stale timers find another probe or none and do nothing).
Reference: memberlist 0.2.2 ``state.go`` (probeNode, handleIndirectPing,
awareness); Lifeguard (arXiv 1707.00788) §IV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gossip.effects import Address, Effect
from gossip.members import Member, Status, ip_bytes, ip_text
from gossip.timers import TimerKind
from gossip.wire import codec as wire
from gossip.wire.messages import Ack, IndirectPing, Nack, Ping, Suspect

if TYPE_CHECKING:
    from gossip.swim import Swim

MAX_RELAYS = 1024
"""Pings relayed for others at a time; more indirect ping requests are dropped."""


@dataclass(slots=True)
class Probe:
    """The probe in flight."""

    seq: int
    target: str
    incarnation: int
    started: float
    acked: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    rtt: float | None = None


@dataclass(slots=True)
class _Relay:
    requester: Address
    orig_seq: int
    nack: bool


def reply_address(src: Address, source_addr: bytes | None, source_port: int | None) -> Address | None:
    """Where to answer a ping: its Source fields if set (protocol 4+), else the sender."""
    if source_addr and source_port:
        try:
            return (ip_text(source_addr), source_port)
        except ValueError:
            return None
    return src


class Prober:
    """The probe cycle of one ``Swim`` node (a part of it: it uses the core's member
    table, sender, timers and ``_suspect``)."""

    __slots__ = ("_relays", "_swim", "awareness", "current")

    def __init__(self, swim: Swim) -> None:
        self._swim = swim
        self.awareness = 0
        """Lifeguard's local health score: 0 is healthy; probes wait (awareness + 1)
        probe intervals for their verdict."""
        self.current: Probe | None = None
        self._relays: dict[int, _Relay] = {}
        """Pings we relay for others, by the seq no of our ping."""

    # ------------------------------------------------------------ timers

    def tick(self, now: float, effects: list[Effect]) -> None:
        """``PROBE_TICK``: probe the next member, and set the next tick."""
        swim = self._swim
        interval = swim.config.probe_interval * (self.awareness + 1)
        target = swim._table.next_probe_target()
        if target is not None:
            self._start(now, target, interval, effects)
        swim._timers.set(now + interval, TimerKind.PROBE_TICK, None)

    def _start(self, now: float, target: Member, interval: float, effects: list[Effect]) -> None:
        swim = self._swim
        swim.stats.probes += 1
        seq = swim._next_seq()
        self.current = Probe(seq, target.name, target.incarnation, now)
        parts = [wire.encode(self._ping(seq, target.name))]
        if target.status == Status.SUSPECT and swim.config.lifeguard:
            # Buddy system: tell the suspect directly so it can refute at once.
            parts.append(wire.encode(Suspect(target.incarnation, target.name, swim.name)))
        swim._out.send(target, parts, effects)
        swim._timers.set(now + swim.config.probe_timeout, TimerKind.PROBE_TIMEOUT, seq)
        swim._timers.set(now + interval, TimerKind.PROBE_END, seq)

    def _ping(self, seq: int, node: str) -> Ping:
        me = self._swim.local
        return Ping(seq, node, ip_bytes(me.addr), me.port, me.name)

    def timeout(self, now: float, seq: object, effects: list[Effect]) -> None:
        """``PROBE_TIMEOUT``: no ack yet; ask helpers, and try TCP."""
        probe = self.current
        if probe is None or probe.seq != seq or probe.acked:
            return
        swim = self._swim
        target = swim._table.get(probe.target)
        if target is None:
            return
        swim.stats.indirect_probes += 1
        config = swim.config
        helpers = swim._table.k_random(
            config.indirect_checks,
            lambda m: m.status == Status.ALIVE and m.name != probe.target,
        )
        me = swim.local
        for helper in helpers:
            want_nack = config.lifeguard and helper.pmax >= 4
            if want_nack:
                probe.expected_nacks += 1
            ind = IndirectPing(probe.seq, ip_bytes(target.addr), target.port, target.name, want_nack,
                               ip_bytes(me.addr), me.port, me.name)
            swim._send(helper.address, wire.encode(ind), effects, helper)
        if not config.disable_tcp_pings and target.pmax >= 3:
            data = swim._encode_stream(self._ping(probe.seq, target.name))
            effects.append(swim._open_stream("tcp_ping", target.address, data, seq=probe.seq))

    def end(self, now: float, seq: object, effects: list[Effect]) -> None:
        """``PROBE_END``: the verdict."""
        probe = self.current
        if probe is None or probe.seq != seq:
            return
        self.current = None
        if probe.acked:
            self._swim._table.mark_heard(probe.target)
            self.adjust_awareness(-1)
            return
        swim = self._swim
        swim.stats.failed_probes += 1
        if probe.expected_nacks > 0:
            self.adjust_awareness(probe.expected_nacks - probe.nacks)
        else:
            self.adjust_awareness(1)
        target = swim._table.get(probe.target)
        if target is not None and target.status in (Status.ALIVE, Status.SUSPECT):
            swim._suspect(now, target.name, target.incarnation, swim.name, effects)

    def relay_timeout(self, now: float, seq: object, effects: list[Effect]) -> None:
        """``RELAY_TIMEOUT``: a ping relayed for another member got no ack."""
        assert isinstance(seq, int)
        relay = self._relays.pop(seq, None)
        if relay is not None and relay.nack:
            self._swim._send(relay.requester, wire.encode(Nack(relay.orig_seq)), effects)

    # ------------------------------------------------------------ messages

    def on_ping(self, src: Address, msg: Ping, effects: list[Effect]) -> None:
        swim = self._swim
        if msg.node and msg.node != swim.name:
            return
        to = reply_address(src, msg.source_addr, msg.source_port)
        if to is not None:
            # The pinger, if we know it there: acks carry our piggybacked broadcasts.
            peer = swim._table.get(msg.source_node) if msg.source_node else None
            if peer is not None and peer.address != to:
                peer = None
            swim._send(to, wire.encode(Ack(msg.seq_no, swim._serf.ack_payload())), effects, peer)

    def on_ack(self, now: float, seq: int, payload: bytes | None, effects: list[Effect]) -> None:
        probe = self.current
        if probe is not None and probe.seq == seq:
            if not probe.acked:
                probe.acked = True
                probe.rtt = now - probe.started
                swim = self._swim
                swim.stats.last_rtt = probe.rtt
                if payload:  # only a direct ack carries one (relays send none): serf's coordinate
                    swim._serf.ping_complete(swim.name, probe.target, probe.rtt, payload)
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._swim._send(relay.requester, wire.encode(Ack(relay.orig_seq, None)), effects)

    def on_nack(self, seq: int) -> None:
        probe = self.current
        if probe is not None and probe.seq == seq:
            probe.nacks += 1

    def on_tcp_ack(self, seq: int) -> None:
        """The TCP ping of probe ``seq`` was acked."""
        probe = self.current
        if probe is not None and probe.seq == seq:
            probe.acked = True

    def on_indirect_ping(self, now: float, src: Address, msg: IndirectPing, effects: list[Effect]) -> None:
        requester = reply_address(src, msg.source_addr, msg.source_port)
        try:
            target = (ip_text(msg.target), msg.port)
        except ValueError:
            return
        if requester is None or len(self._relays) >= MAX_RELAYS:
            return
        swim = self._swim
        seq = swim._next_seq()
        self._relays[seq] = _Relay(requester, msg.seq_no, msg.nack)
        swim._send(target, wire.encode(self._ping(seq, msg.node)), effects)
        swim._timers.set(now + swim.config.probe_timeout, TimerKind.RELAY_TIMEOUT, seq)

    def unreachable(self, now: float, addr: Address, effects: list[Effect]) -> None:
        """ICMP port unreachable from ``addr``: if that is the probe's target, it fails
        now. Local health is not raised: the answer shows our own network works."""
        swim = self._swim
        probe = self.current
        if not swim.config.fail_probe_on_unreachable or probe is None or probe.acked:
            return
        target = swim._table.get(probe.target)
        if target is None or target.address != addr:
            return
        self.current = None  # its timeout and end timers find another probe (or none)
        swim.stats.failed_probes += 1
        swim.stats.unreachable_probes += 1
        if target.status in (Status.ALIVE, Status.SUSPECT):
            swim._suspect(now, target.name, target.incarnation, swim.name, effects)

    # ------------------------------------------------------------ helpers

    def adjust_awareness(self, delta: int) -> None:
        config = self._swim.config
        if not config.lifeguard:
            return
        top = config.awareness_max_multiplier - 1
        self.awareness = min(top, max(0, self.awareness + delta))

    def target_at(self, to: Address) -> Member | None:
        """The member being probed, if it is at ``to`` (replies go to addresses, not
        names; this is the common case worth knowing without a scan)."""
        probe = self.current
        if probe is not None:
            m = self._swim._table.get(probe.target)
            if m is not None and m.address == to:
                return m
        return None
