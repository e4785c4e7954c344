"""Issue 18 in the gossip core: incarnations at the uint32 ceiling (item 1), remote names and
meta (item 10), the member-table bound and the short reap of members never heard from
directly (item 6), and what one datagram may inflate to (item 5)."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from gossip import limits
from gossip.config import Config
from gossip.delegate import NullDelegate
from gossip.effects import Effect, Log, MemberReaped
from gossip.errors import DecodeError
from gossip.members import Member, Status, ip_bytes, supersedes
from gossip.swim import Swim
from gossip.wire import codec as wire
from gossip.wire import lzw
from gossip.wire.messages import Alive, Dead, NodeState, PushNodeState, PushPull, Suspect, UserMsg
from tests.unit.swimharness import Harness

U32 = limits.INCARNATION_MAX
VSN = bytes((1, 5, 2, 0, 0, 0))
CFG = Config.local().with_(relay_at_once=True)


def packet(*msgs: object) -> bytes:
    return wire.encode_packet([wire.encode(m) for m in msgs], compress=False, crc=False, keyring=None)  # type: ignore[arg-type]


def alive(name: str, inc: int, addr: tuple[str, int], meta: bytes = b"") -> Alive:
    return Alive(inc, name, ip_bytes(addr[0]), addr[1], meta, VSN)


def cluster(n: int = 3, config: Config = CFG) -> Harness:
    h = Harness(config)
    for i in range(n):
        h.add(f"n{i}", incarnation=1)
    h.join_all()
    h.wait(lambda: h.converged(list(h.nodes)), 30)
    return h


ATTACKER = ("192.0.2.66", 7946)


# ---------------------------------------------------------------- item 1: incarnations


def test_supersedes_at_the_ceiling_lets_an_alive_win_and_still_lets_a_suspicion_win() -> None:
    for status in (Status.SUSPECT, Status.DEAD, Status.LEFT):
        held = Member("x", "10.0.0.1", 7946, U32, status, b"", VSN, 0.0)
        assert supersedes(Status.ALIVE, U32, held)
        below = Member("x", "10.0.0.1", 7946, U32 - 1, status, b"", VSN, 0.0)
        assert not supersedes(Status.ALIVE, U32 - 1, below)  # unchanged below the ceiling
    live = Member("x", "10.0.0.1", 7946, U32, Status.ALIVE, b"", VSN, 0.0)
    assert not supersedes(Status.ALIVE, U32, live)
    assert supersedes(Status.SUSPECT, U32, live) and supersedes(Status.DEAD, U32, live)


def test_claims_at_the_top_of_the_uint32_space_never_lock_a_node_out() -> None:
    """Alives about n1 at 0xFFFFFFFE and 0xFFFFFFFF, then a dead at 0xFFFFFFFF: n1 refutes
    at the ceiling (never 2^32, which cannot be sent) and its peers take it back."""
    h = cluster()
    n1 = h.addr("n1")
    for inc in (U32 - 1, U32):
        for target in ("n0", "n1"):
            h.perform(target, h.nodes[target].handle_packet(h.now, ATTACKER, packet(alive("n1", inc, n1))))
    h.perform("n0", h.nodes["n0"].handle_packet(h.now, ATTACKER, packet(Dead(U32, "n1", "n0"))))
    assert h.status("n0", "n1") == "dead"
    h.wait(lambda: h.status("n0", "n1") == "alive" and h.status("n2", "n1") == "alive", 30)
    h.run_for(20)
    assert h.converged(["n0", "n1", "n2"])
    assert h.nodes["n1"].local.incarnation == U32
    # A suspicion at the ceiling is refuted too; a dead is, again and again.
    h.perform("n2", h.nodes["n2"].handle_packet(h.now, ATTACKER, packet(Suspect(U32, "n1", "n2"))))
    h.perform("n0", h.nodes["n0"].handle_packet(h.now, ATTACKER, packet(Dead(U32, "n1", "n0"))))
    h.wait(lambda: h.converged(["n0", "n1", "n2"]), 30)


def test_a_restart_at_the_ceiling_brings_the_node_back() -> None:
    h = cluster()
    n1 = h.addr("n1")
    h.perform("n1", h.nodes["n1"].handle_packet(h.now, ATTACKER, packet(alive("n1", U32, n1))))
    h.perform("n0", h.nodes["n0"].handle_packet(h.now, ATTACKER, packet(Dead(U32, "n1", "n0"))))
    h.down.add("n1")
    h.wait(lambda: h.status("n0", "n1") == "dead" and h.status("n2", "n1") == "dead", 60)
    h.run_for(5)
    node = h.restart("n1", incarnation=U32)  # what agent/store/records.py announces: min(last + 1, U32)
    h.perform("n1", node.join(h.now, [h.addr("n0")]))
    h.wait(lambda: h.converged(["n0", "n1", "n2"]), 30)


def test_own_incarnation_never_leaves_uint32() -> None:
    with pytest.raises(ValueError):
        Swim(CFG, "a", ("10.0.0.1", 7946), rng=random.Random(1), now=0.0, incarnation=U32 + 1)
    node = Swim(CFG, "a", ("10.0.0.1", 7946), rng=random.Random(1), now=0.0, incarnation=U32)
    node.set_meta(1.0, b"x")
    assert node.local.incarnation == U32
    node.handle_packet(2.0, ATTACKER, packet(Suspect(U32, "a", "b")))
    assert node.local.incarnation == U32 and node.local.status == Status.ALIVE


# ---------------------------------------------------------------- item 10: names and meta


HOSTILE_NAMES = ["", "a b", "evil\n", "x" * 10_000, "x" * (limits.NAME_MAX + 1), "tab\there", "nul\x00"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_refused_at_decode_time(name: str) -> None:
    for msg in (alive(name, 1, ("10.0.0.9", 7946)), Suspect(1, name, "n0"), Dead(1, name, "n0"),
                Suspect(1, "n0", name), Dead(1, "n0", name)):
        with pytest.raises(DecodeError, match="member name"):
            wire.decode(wire.encode(msg))  # type: ignore[arg-type]


def test_names_serf_may_use_and_meta_up_to_512_bytes_are_accepted() -> None:
    for name in ("serf-1", "node.example.com", "a", "x" * limits.NAME_MAX, "host_1", "höst"):
        assert limits.valid_name(name)
        assert wire.decode(wire.encode(alive(name, 1, ("10.0.0.9", 7946), b"m" * limits.META_MAX))).node == name  # type: ignore[union-attr]
    with pytest.raises(DecodeError, match="meta"):
        wire.decode(wire.encode(alive("fat", 1, ("10.0.0.9", 7946), b"m" * (limits.META_MAX + 1))))


def test_hostile_members_are_not_admitted_and_the_rest_of_the_packet_is() -> None:
    node = Swim(CFG, "a", ("10.0.0.1", 7946), rng=random.Random(1), now=0.0)
    spoofs = [alive(name, 1, ("198.51.100.7", 20000 + k)) for k, name in enumerate(HOSTILE_NAMES)]
    spoofs.append(alive("fat-meta", 1, ("198.51.100.8", 7946), b"m" * 60_000))
    spoofs.append(alive("fine", 1, ("198.51.100.9", 7946)))
    parts = [wire.encode(m) for m in spoofs]
    node.handle_packet(1.0, ATTACKER, wire.encode_compound([p for p in parts if len(p) <= 0xFFFF]))
    with pytest.raises(DecodeError, match="meta"):  # too fat for a compound: sent bare
        node.handle_packet(1.0, ATTACKER, parts[-2])
    assert {m.name for m in node.members()} == {"a", "fine"}


def test_a_push_pull_leaves_out_only_its_inadmissible_members() -> None:
    good = PushNodeState("good", ip_bytes("10.0.0.2"), 7946, b"", 3, NodeState.ALIVE, VSN)
    bad = [
        PushNodeState("a b", ip_bytes("10.0.0.3"), 7946, b"", 1, NodeState.ALIVE, VSN),
        PushNodeState("fat", ip_bytes("10.0.0.4"), 7946, b"m" * 600, 1, NodeState.ALIVE, VSN),
    ]
    data = wire.encode_stream(PushPull(False, (bad[0], good, bad[1]), b""), compress=False, keyring=None)
    msg = wire.decode_stream(data, None)
    assert isinstance(msg, PushPull) and msg.nodes == (good,)


# ---------------------------------------------------------------- item 6: the member table


def test_the_member_table_is_bounded_and_says_so_once() -> None:
    node = Swim(CFG.with_(max_members=5), "a", ("10.0.0.1", 7946), rng=random.Random(1), now=0.0)
    effects = []
    for k in range(0, 40, 10):
        batch = [alive(f"spoof{i}", 1, ("198.51.100.1", 10000 + i)) for i in range(k, k + 10)]
        effects += node.handle_packet(1.0, ATTACKER, packet(*batch))
    assert node.num_members() == 5
    said = [e for e in effects if isinstance(e, Log) and "member table full" in e.message]
    assert len(said) == 1 and "max_members" in said[0].message
    assert node.stats.refused_members == 36
    node.check_invariants()


def test_a_full_table_still_takes_a_joiner_that_speaks_for_itself() -> None:
    """The table full of spoofed members (never heard from): an alive that comes from the
    member's own address (a joiner) takes the place of one of them; at most one per
    message, and a spoofed member's alive sent from elsewhere still does not."""
    node = Swim(CFG.with_(max_members=4), "a", ("10.0.0.1", 7946), rng=random.Random(1), now=0.0)
    node.handle_packet(1.0, ATTACKER, packet(*[alive(f"spoof{i}", 1, ("198.51.100.1", 10000 + i)) for i in range(6)]))
    assert node.num_members() == 4
    joiner = ("10.0.0.7", 7946)
    effects = node.handle_packet(2.0, joiner, packet(alive("joiner", 1, joiner), alive("joiner2", 1, ("10.0.0.7", 7947))))
    names = {m.name for m in node.members()}
    assert "joiner" in names and "joiner2" not in names and node.num_members() == 4
    assert sum(isinstance(e, MemberReaped) for e in effects) == 1
    node.check_invariants()


def test_a_full_table_never_evicts_a_peer_that_spoke_to_us_over_tcp() -> None:
    """A real peer that joined us by push/pull (TCP) but was not probed yet is not the one
    a joiner displaces: spoofed members (never heard, suspected first) go instead. This
    was a real failure: the peer was evicted and its network rows went with it."""
    node = Swim(CFG.with_(max_members=6), "a", ("10.0.0.1", 7946), rng=random.Random(1), now=0.0)
    peer = ("10.0.0.2", 7946)
    push = PushPull(True, (PushNodeState("peer", ip_bytes(peer[0]), peer[1], b"", 1, NodeState.ALIVE),), b"")
    reply, _ = node.handle_stream(0.5, ("10.0.0.2", 40001), wire.encode_stream(push, compress=False, keyring=None))
    assert reply is not None and node.member("peer") is not None
    node.handle_packet(1.0, ATTACKER, packet(*[alive(f"spoof{i}", 1, ("198.51.100.1", 10000 + i)) for i in range(8)]))
    assert node.num_members() == 6
    node.handle_packet(1.5, ATTACKER, packet(Suspect(1, "spoof3", "x")))
    for k, joiner in enumerate((("10.0.0.7", 7946), ("10.0.0.8", 7946))):
        effects = node.handle_packet(2.0 + k, joiner, packet(alive(f"joiner{k}", 1, joiner)))
        gone = [e.member.name for e in effects if isinstance(e, MemberReaped)]
        assert gone == (["spoof3"] if k == 0 else ["spoof0"])  # suspected first, then the oldest
    assert node.member("peer") is not None
    node.check_invariants()


def test_a_push_pull_cannot_mark_a_spoofed_member_heard() -> None:
    """A host that opens TCP to us and claims a spoofed member is at its own IP must not
    make that member (held elsewhere in our table) count as heard."""
    node = Swim(CFG.with_(max_members=4), "a", ("10.0.0.1", 7946), rng=random.Random(1), now=0.0)
    node.handle_packet(1.0, ATTACKER, packet(*[alive(f"spoof{i}", 1, ("198.51.100.1", 10000 + i)) for i in range(3)]))
    for i in range(3):
        claim = PushPull(False, (PushNodeState(f"spoof{i}", ip_bytes(ATTACKER[0]), 7946, b"", 1, NodeState.ALIVE),), b"")
        node.handle_stream(1.5, (ATTACKER[0], 40000 + i), wire.encode_stream(claim, compress=False, keyring=None))
    joiner = ("10.0.0.7", 7946)
    effects = node.handle_packet(2.0, joiner, packet(alive("joiner", 1, joiner)))
    assert node.member("joiner") is not None
    assert sum(isinstance(e, MemberReaped) for e in effects) == 1


class _Watching(NullDelegate):
    def __init__(self) -> None:
        super().__init__()
        self.changes: list[tuple[str, Status | None, Status]] = []

    def on_member_change(self, now: float, old: Member | None, new: Member) -> list[Effect]:
        self.changes.append((new.name, old.status if old else None, new.status))
        return []


def test_an_evicted_member_that_was_up_is_reported_gone_to_the_delegate() -> None:
    """The tables show an owner's rows while the delegate last heard it was up: an
    eviction must say it went, or its rows stay shown (and are never reaped)."""
    watch = _Watching()
    node = Swim(CFG.with_(max_members=3), "a", ("10.0.0.1", 7946), rng=random.Random(1), now=0.0, delegate=watch)
    node.handle_packet(1.0, ATTACKER, packet(*[alive(f"spoof{i}", 1, ("198.51.100.1", 10000 + i)) for i in range(2)]))
    watch.changes.clear()
    joiner = ("10.0.0.7", 7946)
    node.handle_packet(2.0, joiner, packet(alive("joiner", 1, joiner)))
    assert ("spoof0", Status.ALIVE, Status.DEAD) in watch.changes
    assert ("joiner", None, Status.ALIVE) in watch.changes


def test_the_default_bound_leaves_room_for_10000_node_clusters() -> None:
    assert Config().max_members >= 4 * 10_000 and Config.wan().max_members == Config().max_members


def test_members_never_heard_from_directly_are_reaped_sooner() -> None:
    """A member learnt only through gossip (as spoofed ones are) and then dead goes after
    ``reap_unheard_interval``; one that answered our probes keeps ``reap_interval``."""
    config = CFG.with_(reap_interval=3000.0, reap_unheard_interval=120.0)
    h = cluster(3, config)
    h.run_for(30)  # n0 probes n1 and n2: both answered
    ghost = ("198.51.100.5", 7946)
    h.perform("n0", h.nodes["n0"].handle_packet(h.now, ATTACKER, packet(alive("ghost", 1, ghost))))
    h.perform("n0", h.nodes["n0"].handle_packet(h.now, ATTACKER, packet(Dead(1, "ghost", "n2"))))
    h.down.add("n1")
    h.wait(lambda: h.status("n0", "n1") == "dead", 60)
    h.run_for(200)
    reaped = {e.member.name for _, who, e in h.events if who == "n0" and isinstance(e, MemberReaped)}
    assert reaped == {"ghost"}
    assert h.status("n0", "n1") == "dead"
    h.nodes["n0"].check_invariants()


# ---------------------------------------------------------------- item 5: LZW on datagrams


def test_a_datagram_may_inflate_to_the_udp_limit_and_no_further() -> None:
    wire.clear_caches()
    limit = limits.UDP_DECOMPRESS_MAX
    fits = wire.encode_compress(b"\x08\x80" + bytes(limit - 2))
    assert wire.decode_packet(fits, None) == [UserMsg(b"\x80" + bytes(limit - 2))]
    over = wire.encode_compress(b"\x08\x80" + bytes(limit - 1))
    with pytest.raises(DecodeError, match="exceeds"):
        wire.decode_packet(over, None)
    # The same bytes inflate fine as a stream (its limit is the 40 MiB one).
    stream = wire.encode_stream(UserMsg(b"\x80" + bytes(limit)), compress=True, keyring=None)
    assert wire.decode_stream(stream, None) == UserMsg(b"\x80" + bytes(limit))
    wire.clear_caches()


@pytest.mark.parametrize("native", [False, True])
def test_both_lzw_decoders_stop_at_the_limit(native: bool) -> None:
    """A bomb inflating to 8 MiB, decoded with a 256 KiB limit: the output never grows
    much past the limit (memory traced), so the work stops there too."""
    if native and not lzw.native_available():
        pytest.skip("the C accelerator is not built")
    bomb = lzw.compress(bytes(8 * 1024 * 1024))
    was = lzw.native_in_use()
    try:
        lzw.use_native(native)
        tracemalloc.start()
        try:
            with pytest.raises(DecodeError, match="exceeds"):
                lzw.decompress(bomb, limits.UDP_DECOMPRESS_MAX)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        lzw.use_native(was)
    assert peak <= 3 * limits.UDP_DECOMPRESS_MAX, peak
