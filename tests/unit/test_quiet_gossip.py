"""Gossip ticks are skipped while a node has no news (no wake-ups every gossip interval
in a quiet cluster); news after a quiet spell goes out at once, then on the beat."""

from __future__ import annotations

import dataclasses
import random

from gossip.config import Config, retransmit_limit
from gossip.effects import Send
from gossip.swim import Swim
from gossip.wire import codec as wire
from gossip.wire.messages import Alive
from tests.unit.swimharness import Harness

CONFIG = Config.lan()


def quiet_cluster() -> Harness:
    h = Harness(CONFIG)
    for name in ("a", "b", "c", "d"):
        h.add(name)
    h.join_all("a")
    h.wait(lambda: h.converged(["a", "b", "c", "d"]), timeout=10)
    h.run_for(5.0)  # the join broadcasts run out
    return h


def wakeups(node: Swim, start: float, seconds: float) -> list[float]:
    """The deadlines ``node`` asks to be woken at, running its timers alone."""
    times: list[float] = []
    while (t := node.next_deadline()) <= start + seconds:
        times.append(t)
        node.tick(max(t, start))
    return times


def test_a_quiet_node_wakes_for_probes_only() -> None:
    h = quiet_cluster()
    b = h.nodes["b"]
    seconds = 10.0
    times = wakeups(b, h.now, seconds)
    beats = seconds / CONFIG.gossip_interval
    # A probe round is a tick, a timeout and an end: about 3 per probe interval; a gossip
    # beat every 200 ms alone would be 50 here.
    assert len(times) <= 3 * seconds / CONFIG.probe_interval + 2 < beats


def test_news_after_a_quiet_spell_goes_out_at_once_then_on_the_beat() -> None:
    h = quiet_cluster()
    b = h.nodes["b"]
    now = h.now
    assert b.next_deadline() > now
    # News arrives: an alive about a member nobody knew.
    news = Alive(1, "e", bytes([10, 0, 0, 99]), 7946, b"")
    b.handle_packet(now, h.addr("a"), wire.encode(news))
    assert b.next_deadline() <= now
    first = [e for e in b.tick(now) if isinstance(e, Send)]
    carried = [e for e in first if any(m == news for m in wire.decode_packet(e.data, None))]
    assert len(carried) == CONFIG.gossip_nodes
    # Then on the beat (the next one is at most an interval away) until the message has
    # been sent its retransmit limit of times; then quiet again.
    assert b.next_deadline() - now <= CONFIG.gossip_interval + 1e-9
    sends = len(carried)
    t = now
    while (t := max(t, b.next_deadline())) <= now + 2.0:
        sends += sum(
            1 for e in b.tick(t) if isinstance(e, Send)
            and any(m == news for m in wire.decode_packet(e.data, None))
        )
    assert sends == retransmit_limit(CONFIG, b.num_members())
    assert len(b._broadcasts) == 0  # quiet again


def test_relay_at_once_off_waits_for_the_next_beat_as_memberlist() -> None:
    config = dataclasses.replace(CONFIG, relay_at_once=False)
    h = Harness(config)
    for name in ("a", "b", "c", "d"):
        h.add(name)
    h.join_all("a")
    h.wait(lambda: h.converged(["a", "b", "c", "d"]), timeout=10)
    h.run_for(5.0)
    b = h.nodes["b"]
    now = h.now + 0.0123  # off the beat
    b.handle_packet(now, h.addr("a"), wire.encode(Alive(1, "e", bytes([10, 0, 0, 99]), 7946, b"")))
    beat = b.next_deadline()
    assert now < beat <= now + CONFIG.gossip_interval
    assert [e for e in b.tick(beat) if isinstance(e, Send)]


def test_a_lone_node_keeps_its_news_for_its_first_peer_and_sends_it_at_once() -> None:
    node = Swim(CONFIG, "lone", ("10.0.0.1", 7946), rng=random.Random(3), now=0.0)
    times = wakeups(node, 0.0, 5.0)  # its own alive is pending, but nobody to tell
    assert len(times) < 5.0 / CONFIG.gossip_interval / 2
    now = 5.0 + 0.0123
    peer = Alive(1, "peer", bytes([10, 0, 0, 2]), 7946, b"")
    node.handle_packet(now, ("10.0.0.2", 7946), wire.encode(peer))
    assert node.next_deadline() <= now
    sent = [e for e in node.tick(now) if isinstance(e, Send)]
    assert [e.to for e in sent] == [("10.0.0.2", 7946)]
    assert any(isinstance(m, Alive) and m.node == "lone" for m in wire.decode_packet(sent[0].data, None))
