"""The key-rotation scenario: the real core's keyrings, queries and encryption in the world."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gossip.swim import Swim
from sim import scenarios
from sim.keyrotation import K1, K2, KeyRotate
from sim.metrics import Metrics
from sim.network import Network
from sim.run import Outcome, RunSpec, execute
from sim.scenarios import ScenarioError
from sim.world import World
from tests.sim.fakecore import FakeFactory

N = 40


def run(spec: str, n: int = N, duration: float = 40.0, seed: int = 1) -> Outcome:
    return execute(RunSpec(nodes=n, duration=duration, scenario=spec, seed=seed))


def rings(o: Outcome) -> list[tuple[bytes, ...]]:
    out = []
    for node in o.world.nodes:
        assert isinstance(node.core, Swim) and node.core.keyring is not None
        out.append(node.core.keyring.keys)
    return out


def assert_clean_rotation(o: Outcome, n: int = N) -> dict[str, Any]:
    kr: dict[str, Any] = o.result["key_rotation"]
    assert all(r == (K2,) for r in rings(o)), "every node ends with only K2, as its primary"
    assert kr["final"] == {"live": n, "only_k2": n, "primary_k2": n, "holding_k1": 0, "missing_k2": 0}
    for st in kr["steps"]:
        assert st["ran"] and st["applied"] == n and st["t100"] is not None, st["action"]
    assert kr["decode_errors"] == {"before_rotation": 0, "from_rotation_on": 0}
    fp = kr["false_positives_from_rotation_on"]
    assert fp["suspicions"] == 0 and fp["deaths"] == 0
    assert o.result["false_positives"]["deaths"] == 0
    return kr


def test_every_node_starts_encrypted_with_k1() -> None:
    o = run("converged,keyrotate:at=100", duration=5.0)
    assert all(r == (K1,) for r in rings(o))
    assert o.result["core"]["decode_errors"] == 0
    assert o.result["convergence"]["converged_at_end"]


def test_query_rotation_reaches_everyone_cleanly() -> None:
    # Members relay the query like serf members, so it reaches the whole cluster. N = 100:
    # each member passes it on 4 × ceil(log10(N + 1)) = 12 times; with 8 (N = 10-99) some
    # node misses a step in many runs (14 of 30 seeds at N = 60, docs/simulation.md).
    n = 100
    kr = assert_clean_rotation(run("converged,keyrotate:at=5:gap=2", n=n), n)
    for st in kr["steps"]:
        q = st["query"]
        # The agent's report: every other member acked and answered "applied".
        assert q["finished"] and q["acks"] == n - 1 and q["responses"] == n - 1
        assert q["applied_reported"] == n and q["failed"] == 0 and q["no_answer"] == 0
        assert st["t100"] < 2.0  # an epidemic, not the querier's own retransmissions
    starts = [st["start"] for st in kr["steps"]]
    returned = [st["returned"] for st in kr["steps"]]
    # wait=1: each step starts `gap` s after the previous query finished.
    assert starts[1] == pytest.approx(returned[0] + 2.0) and starts[2] == pytest.approx(returned[1] + 2.0)


def test_loop_over_hosts_rotation_is_clean_after_a_bootstrap() -> None:
    kr = assert_clean_rotation(run("bootstrap:seeds=2,keyrotate:at=10:gap=2:loop=1:spread=3"))
    assert "query" not in kr["steps"][0] and kr["mode"] == "loop"


def test_query_remove_right_after_use_leaves_k1_and_the_report_says_where() -> None:
    # `remove K1` 0.1 s after `use K2`: nodes that get `remove` first refuse it (K1 is
    # still their primary) and keep K1; their answers, encrypted with K1, cannot be read
    # by the querier, which no longer holds K1. The metrics must match the keyrings.
    # In a quiet cluster of prompt nodes `use` now reaches everyone in ~60 ms (news after
    # a quiet spell is relayed at once), so the race needs laggards: 20 % slow hosts.
    o = run("converged,slow:pct=20:delay=0.3,keyrotate:at=5:gap=2:early=0.1", duration=30.0)
    kr = o.result["key_rotation"]
    remove = kr["steps"][2]
    holders = sum(1 for r in rings(o) if K1 in r)
    assert holders > 0 and kr["final"]["holding_k1"] == holders
    assert kr["decode_errors"]["from_rotation_on"] > 0
    assert remove["applied"] == N - holders
    q = remove["query"]
    assert q["applied_reported"] == N - holders  # the querier's report counts no holder as done
    assert q["failed"] + q["no_answer"] == holders


def test_removing_k1_too_early_shows_failed_decrypts_and_leftover_k1() -> None:
    o = run("converged,keyrotate:at=5:gap=2:loop=1:spread=10:early=1", duration=40.0)
    kr = o.result["key_rotation"]
    assert kr["decode_errors"]["from_rotation_on"] > 0
    assert o.result["core"]["decode_errors"] >= kr["decode_errors"]["from_rotation_on"]
    # Nodes told to remove K1 while it was still their primary refused, and kept it.
    assert kr["final"]["holding_k1"] > 0
    assert "the primary key cannot be removed; use another key first" in kr["steps"][2]["loop_errors"]


def test_same_seed_same_trace_and_different_seed_differs() -> None:
    spec = "converged,loss:p=0.05,keyrotate:at=3:gap=1:early=0.5"
    a = run(spec, n=30, duration=20.0)
    b = run(spec, n=30, duration=20.0)
    c = run(spec, n=30, duration=20.0, seed=2)
    assert a.result["trace_hash"] == b.result["trace_hash"]
    assert a.result["key_rotation"] == b.result["key_rotation"]
    assert a.result["trace_hash"] != c.result["trace_hash"]


def test_spec_round_trip_and_errors() -> None:
    comps = scenarios.parse("keyrotate:at=3:gap=1:early=0.5:loop=1")
    assert isinstance(comps[1], KeyRotate) and comps[1].early == 0.5 and comps[1].loop
    assert scenarios.parse(scenarios.canonical(comps)) == comps
    for bad in ("keyrotate:bogus=1", "keyrotate:relay=1"):  # relay: the core relays now
        with pytest.raises(ScenarioError, match="unknown parameter"):
            scenarios.parse(bad)
    with pytest.raises(ScenarioError, match="negative"):
        run("keyrotate:gap=-1", n=5, duration=1.0)
    with pytest.raises(ScenarioError, match="out of range"):
        run("keyrotate:node=7", n=5, duration=1.0)
    w = World(5, FakeFactory(5), Network(5, random.Random(1)), Metrics(5, 10.0, 1.0), tcp_timeout=10.0)
    with pytest.raises(ScenarioError, match="real core"):
        scenarios.install(scenarios.parse("keyrotate"), w, 1, 10.0)
