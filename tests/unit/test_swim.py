"""Deterministic core tests: Swim instances driven with explicit time, no sockets."""

from __future__ import annotations

import pytest

from gossip.config import Config, suspicion_bounds
from gossip.effects import MemberFailed, MemberLeft, Send
from gossip.errors import DecodeError
from gossip.members import ip_bytes
from gossip.wire import codec as wire
from gossip.wire.messages import Alive, IndirectPing, Nack, PushPull, Suspect
from tests.unit.swimharness import Harness

NAMES = [f"n{i}" for i in range(5)]


def cluster(n: int = 5, config: Config | None = None, seed: int = 1) -> Harness:
    h = Harness(config or Config.local(), seed=seed)
    for i in range(n):
        h.add(f"n{i}")
    h.join_all()
    h.wait(lambda: h.converged(list(h.nodes)), timeout=10)
    return h


def test_join_through_one_seed_converges() -> None:
    h = cluster(5)
    for node in h.nodes.values():
        node.check_invariants()
        assert {m.name for m in node.members()} == set(NAMES)


def test_crashed_member_is_declared_dead_by_everyone_within_the_lifeguard_bound() -> None:
    cfg = Config.local()
    h = cluster(5, cfg)
    h.down.add("n4")
    others = NAMES[:4]
    _, high = suspicion_bounds(cfg, 5)
    # Worst case: a full probe round to reach n4, then the suspicion max, then gossip.
    bound = 5 * cfg.probe_interval + high + 2.0
    took = h.wait(lambda: all(h.status(o, "n4") == "dead" for o in others), timeout=bound)
    assert took > cfg.probe_timeout
    failed = [e for _, who, e in h.events if isinstance(e, MemberFailed)]
    assert {e.member.name for e in failed} == {"n4"}


def test_no_false_positives_in_a_healthy_cluster() -> None:
    h = cluster(5)
    h.run_for(60)
    assert h.converged(NAMES)
    assert all(node.stats.suspicions == 0 for node in h.nodes.values())


def test_suspect_about_self_same_incarnation_is_refuted() -> None:
    h = cluster(3)
    n1 = h.nodes["n1"]
    before = n1.local.incarnation
    packet = wire.encode_packet(
        [wire.encode(Suspect(before, "n1", "n0"))], compress=False, crc=False, keyring=None
    )
    h.perform("n1", n1.handle_packet(h.now, h.addr("n0"), packet))
    assert n1.local.incarnation == before + 1
    assert n1.local.status.label == "alive"
    h.run_for(2)
    assert all(h.nodes[o].member("n1").incarnation == before + 1 for o in ("n0", "n2"))  # type: ignore[union-attr]


def test_alive_about_self_with_higher_incarnation_is_refuted_above_it() -> None:
    h = cluster(2)
    n0 = h.nodes["n0"]
    me = n0.local
    fake = Alive(me.incarnation + 5, "n0", ip_bytes(me.addr), me.port, b"other", me.vsn)
    data = wire.encode_packet([wire.encode(fake)], compress=False, crc=False, keyring=None)
    n0.handle_packet(h.now, h.addr("n1"), data)
    assert n0.local.incarnation == me.incarnation + 6


def test_indirect_probe_keeps_member_alive_when_only_the_direct_path_is_cut() -> None:
    h = cluster(4)
    h.cut.update({("n0", "n1"), ("n1", "n0")})
    h.run_for(20)
    assert h.status("n0", "n1") == "alive"
    assert h.nodes["n0"].stats.indirect_probes > 0


def test_helper_sends_nack_when_target_does_not_answer() -> None:
    h = cluster(3)
    h.down.add("n2")
    n1 = h.nodes["n1"]
    target = h.nodes["n2"].local
    req = IndirectPing(77, ip_bytes(target.addr), target.port, "n2", True, ip_bytes("10.0.0.2"), 7946, "n0")
    data = wire.encode_packet([wire.encode(req)], compress=False, crc=False, keyring=None)
    n1.handle_packet(h.now, h.addr("n0"), data)
    effects = n1.tick(h.now + Config.local().probe_timeout + 0.01)
    nacks = [
        m
        for e in effects
        if isinstance(e, Send) and e.to == h.addr("n0")
        for m in wire.decode_packet(e.data, None)
        if isinstance(m, Nack)
    ]
    assert [m.seq_no for m in nacks] == [77]


def test_graceful_leave_shows_left_not_dead() -> None:
    h = cluster(4)
    h.perform("n3", h.nodes["n3"].leave(h.now))
    h.wait(lambda: h.nodes["n3"].leave_done(), timeout=5)
    h.wait(lambda: all(h.status(o, "n3") == "left" for o in NAMES[:3]), timeout=5)
    assert not [e for _, _, e in h.events if isinstance(e, MemberFailed)]
    assert [e.member.name for _, _, e in h.events if isinstance(e, MemberLeft)].count("n3") == 3


def test_restarted_node_with_same_name_rejoins_above_its_old_incarnation() -> None:
    h = cluster(4)
    h.down.add("n3")
    h.wait(lambda: all(h.status(o, "n3") == "dead" for o in NAMES[:3]), timeout=40)
    old = h.nodes["n0"].member("n3").incarnation  # type: ignore[union-attr]
    n3 = h.restart("n3")
    h.perform("n3", n3.join(h.now, [h.addr("n0")]))
    h.wait(lambda: h.converged(NAMES[:4]), timeout=10)
    assert n3.local.incarnation > old


def test_partition_longer_than_the_suspicion_timeout_heals_by_itself() -> None:
    cfg = Config.local().with_(rejoin_interval=5.0)
    h = cluster(6, cfg)
    left, right = NAMES[:3], [f"n{i}" for i in range(3, 6)]
    h.partition(left, right)
    h.wait(lambda: all(h.status(a, b) == "dead" for a in left for b in right), timeout=60)
    h.wait(lambda: all(h.status(b, a) == "dead" for a in left for b in right), timeout=60)
    h.heal()
    h.wait(lambda: h.converged(left + right), timeout=60)


def _start_during_a_cut(cfg: Config) -> Harness:
    """Four hosts, each configured with every other as a seed, started while the
    network is cut in two: each half joins the seeds it can reach and stops there."""
    h = Harness(cfg, seed=3)
    for name in NAMES[:4]:
        h.add(name)
    h.partition(NAMES[:2], NAMES[2:4])
    for name in NAMES[:4]:
        h.perform(name, h.nodes[name].join(h.now, [h.addr(o) for o in NAMES[:4] if o != name]))
    h.wait(lambda: h.converged(NAMES[:2]) and h.converged(NAMES[2:4]), timeout=5)
    return h


def test_halves_that_started_during_a_cut_merge_once_it_is_removed() -> None:
    cfg = Config.local().with_(rejoin_interval=5.0)
    h = _start_during_a_cut(cfg)
    h.run_for(20)
    # Neither half knows the other, not even as failed: only the seeds lead there.
    assert h.status("n0", "n2") is None and h.status("n2", "n0") is None
    h.heal()
    took = h.wait(lambda: h.converged(NAMES[:4]), timeout=3 * cfg.rejoin_interval)
    assert took <= 2 * cfg.rejoin_interval


def test_seeds_that_are_known_members_get_no_rejoins() -> None:
    cfg = Config.local().with_(rejoin_interval=5.0)
    h = _start_during_a_cut(cfg)
    h.heal()
    h.wait(lambda: h.converged(NAMES[:4]), timeout=15)
    start = h.now
    h.run_for(60)
    joins: list[float] = []
    pushpulls: list[float] = []
    for at, who, req in h.streams:
        if who == "n0" and at >= start:
            msg = wire.decode_stream(req.data, None)
            assert isinstance(msg, PushPull)
            (joins if msg.join else pushpulls).append(at)
    # Every seed is a live member: only the periodic (non-join) push/pulls remain.
    assert pushpulls and not joins


def test_dead_members_are_reaped_after_the_reap_interval() -> None:
    cfg = Config.local().with_(reap_interval=30.0)
    h = cluster(4, cfg)
    h.down.add("n3")
    h.wait(lambda: h.status("n0", "n3") == "dead", timeout=40)
    h.wait(lambda: h.status("n0", "n3") is None, timeout=30 + 30 / 4 + 2)
    h.nodes["n0"].check_invariants()


def test_garbage_packet_raises_decode_error_and_changes_nothing() -> None:
    h = cluster(3)
    n0 = h.nodes["n0"]
    before = [(m.name, m.status, m.incarnation) for m in n0.members()]
    deadline = n0.next_deadline()
    for junk in (b"", b"\x07\x01\x00\x00", b"\x0c\x00\x00\x00\x00", b"\x04\x81\xa4Node", b"\xff" * 40):
        with pytest.raises(DecodeError):
            n0.handle_packet(h.now, h.addr("n1"), junk)
    assert [(m.name, m.status, m.incarnation) for m in n0.members()] == before
    assert n0.next_deadline() == deadline


def test_failed_probes_raise_local_health_and_acks_lower_it() -> None:
    h = cluster(3)
    n0 = h.nodes["n0"]
    h.down.update({"n1", "n2"})
    h.run_for(6)
    raised = n0.awareness
    assert raised >= 1
    h.down.difference_update({"n1", "n2"})
    h.run_for(30)
    assert n0.awareness < raised


def test_lifeguard_off_keeps_local_health_at_zero() -> None:
    h = cluster(3, Config.local().with_(lifeguard=False))
    h.down.update({"n1", "n2"})
    h.run_for(6)
    assert h.nodes["n0"].awareness == 0


def test_same_seed_gives_the_same_history() -> None:
    def history(seed: int) -> list[tuple[float, str, str]]:
        h = cluster(5, seed=seed)
        h.down.add("n2")
        h.run_for(30)
        return [(round(t, 6), who, type(e).__name__) for t, who, e in h.events]

    assert history(3) == history(3)


def test_join_to_a_seed_that_is_not_up_yet_is_retried_soon() -> None:
    from gossip.effects import JoinFinished

    h = Harness(Config.lan())
    h.add("n0")
    h.add("n1")
    h.down.add("n0")
    h.perform("n1", h.nodes["n1"].join(h.now, [h.addr("n0")]))
    assert [e.contacted for _, _, e in h.events if isinstance(e, JoinFinished)] == [0]
    h.run_for(0.2)
    h.down.discard("n0")
    took = h.wait(lambda: h.converged(["n0", "n1"]), timeout=5)
    assert took < Config.lan().rejoin_interval


def test_encrypt_outgoing_off_sends_plaintext_while_accepting_encrypted() -> None:
    import random

    from crypto.keyring import Keyring
    from gossip.wire.encryption import EncryptionMode

    h = cluster(2)
    key = bytes(16)
    for node in h.nodes.values():
        node.encryption.enable(Keyring([key], nonce_source=random.Random(0).randbytes))
        assert node.encryption.mode is EncryptionMode.ACCEPT
    n0 = h.nodes["n0"]
    effects = n0.set_meta(h.now, b"x") + n0.tick(n0.next_deadline())
    sends = [e for e in effects if isinstance(e, Send)]
    assert sends and all(wire.decode_packet(e.data, None) for e in sends)
    n0.encryption.command("encrypt")
    n0.set_meta(h.now, b"y")
    sealed = [e for e in n0.tick(n0.next_deadline() + 1.0) if isinstance(e, Send)]
    assert sealed
    for e in sealed:
        with pytest.raises(DecodeError):
            wire.decode_packet(e.data, None)
