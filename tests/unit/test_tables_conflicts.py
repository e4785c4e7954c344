"""Deterministic conflict resolution: every node holding the same rows agrees."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from gossip.tables import ipam
from gossip.tables.conflicts import resolve_addresses, resolve_networks
from gossip.tables.rows import Endpoint, Network

_NAMES = ["a", "b", "c"]
_SUBNETS = [("10.1.0.0/24",), ("10.1.0.0/16",), ("10.2.0.0/24",), ("fd00::/64",), ("10.3.0.0/24", "fd00::/64")]


@st.composite
def _networks(draw: st.DrawFn) -> list[Network]:
    n = draw(st.integers(0, 6))
    return [
        Network(f"{i:064x}", draw(st.sampled_from(_NAMES)), draw(st.sampled_from(_SUBNETS)),
                draw(st.sampled_from([5000, 5001, 5002])), False, None, 0.0,
                draw(st.sampled_from(["n1", "n2"])), draw(st.integers(1, 4)))
        for i in range(n)
    ]


@st.composite
def _endpoints(draw: st.DrawFn) -> list[Endpoint]:
    n = draw(st.integers(0, 8))
    out = []
    for i in range(n):
        v4 = draw(st.sampled_from([None, "10.1.0.2", "10.1.0.3"]))
        v6 = draw(st.sampled_from([None, "fd00::2"])) if v4 else "fd00::3"
        mac = draw(st.sampled_from(["02:42:0a:01:00:02", "02:00:00:00:00:09", f"02:00:00:00:01:{i:02x}"]))
        out.append(Endpoint(f"{i:064x}", f"e{i}", "ab" * 32, v4, v6, mac,
                            draw(st.sampled_from(["n1", "n2"])), "192.0.2.1", draw(st.integers(1, 4))))
    return out


@given(_networks(), st.randoms())
def test_network_resolution_ignores_order_and_leaves_no_clash(nets: list[Network], rnd: random.Random) -> None:
    winners, lost = resolve_networks(nets)
    shuffled = list(nets)
    rnd.shuffle(shuffled)
    assert resolve_networks(shuffled) == (winners, lost)
    assert len(winners) + len(lost) == len(nets)
    assert len({n.name for n in winners}) == len(winners)
    assert len({n.vni for n in winners}) == len(winners)
    for i, a in enumerate(winners):
        for b in winners[i + 1 :]:
            assert not any(ipam.overlapping(x, y) for x in a.subnets for y in b.subnets)
    for c in lost:
        keeper = next(n for n in winners if n.id == c.winner)
        loser = next(n for n in nets if n.id == c.loser)
        assert (keeper.created, keeper.creator, keeper.id) < (loser.created, loser.creator, loser.id)


@given(_endpoints(), st.randoms())
def test_address_resolution_ignores_order_and_programs_no_duplicate(eps: list[Endpoint], rnd: random.Random) -> None:
    losers, found = resolve_addresses(eps)
    shuffled = list(eps)
    rnd.shuffle(shuffled)
    assert resolve_addresses(shuffled) == (losers, found)
    kept = [e for e in eps if e.id not in losers]
    for attr in ("ipv4", "ipv6", "mac"):
        values = [getattr(e, attr) for e in kept if getattr(e, attr)]
        assert len(values) == len(set(values))
    assert sorted(c.loser for c in found) == sorted(losers)
    # The earliest creation keeps a contested value.
    for c in found:
        w = next(e for e in eps if e.id == c.winner)
        lo = next(e for e in eps if e.id == c.loser)
        assert (w.created, w.owner, w.id) < (lo.created, lo.owner, lo.id)
