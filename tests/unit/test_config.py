from __future__ import annotations

import pytest

from gossip.broadcasts import Broadcasts
from gossip.config import (
    Config,
    expected_confirmations,
    push_pull_scale,
    retransmit_limit,
    suspicion_bounds,
    suspicion_timeout,
)
from gossip.suspicion import Suspicion


def test_suspicion_bounds_match_memberlist_table() -> None:
    lan = Config.lan()
    assert suspicion_bounds(lan, 6) == (4.0, 24.0)
    assert suspicion_bounds(lan, 100) == (8.0, 48.0)
    low, high = suspicion_bounds(lan, 30)
    assert low == pytest.approx(5.908) and high == pytest.approx(35.448)
    assert suspicion_bounds(Config.local(), 1000) == (9.0, 54.0)
    assert suspicion_bounds(Config.wan(), 10000) == (120.0, 720.0)


def test_lifeguard_worked_example_one_confirmation_is_11_4_seconds() -> None:
    lan = Config.lan()
    low, high = suspicion_bounds(lan, 6)
    k = expected_confirmations(lan, 6)
    assert k == 2
    assert suspicion_timeout(low, high, k, 0) == 24.0
    assert suspicion_timeout(low, high, k, 1) == pytest.approx(11.38, abs=0.01)
    assert suspicion_timeout(low, high, k, 2) == 4.0


def test_confirmations_disabled_without_lifeguard_or_in_tiny_clusters() -> None:
    assert expected_confirmations(Config.lan(), 3) == 0
    assert expected_confirmations(Config.lan().with_(lifeguard=False), 50) == 0


def test_retransmit_and_push_pull_scaling() -> None:
    lan = Config.lan()
    assert retransmit_limit(lan, 5) == 4
    assert retransmit_limit(lan, 10) == 8
    assert retransmit_limit(lan, 10000) == 20
    assert push_pull_scale(30.0, 32) == 30.0
    assert push_pull_scale(30.0, 33) == 60.0
    assert push_pull_scale(30.0, 100) == 90.0


def test_unknown_profile_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        Config.profile("fast")


def test_suspicion_counts_each_confirmer_once_and_not_the_accuser() -> None:
    s = Suspicion(incarnation=1, start=10.0, low=4.0, high=24.0, k=2, confirmers=["a"])
    assert s.deadline == 34.0
    assert not s.confirm("a")
    assert s.confirm("b")
    assert not s.confirm("b")
    assert s.deadline == pytest.approx(10.0 + 11.38, abs=0.01)
    assert s.confirm("c")
    assert not s.confirm("d")  # k reached
    assert s.deadline == 14.0


def test_broadcasts_replace_by_key_and_respect_limit_and_budget() -> None:
    q = Broadcasts()
    q.queue("x", b"old")
    q.queue("x", b"new!")
    q.queue("y", b"yy")
    assert len(q) == 2
    first = q.take(overhead=2, budget=100, limit=2)
    assert sorted(first) == [b"new!", b"yy"]
    second = q.take(overhead=2, budget=100, limit=2)
    assert sorted(second) == [b"new!", b"yy"]
    assert len(q) == 0
    q.queue("big", b"x" * 50)
    assert q.take(overhead=2, budget=40, limit=3) == []
    assert len(q) == 1
