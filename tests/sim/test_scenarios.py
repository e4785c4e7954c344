"""The scenario language and what each component does to a world (with the fake core)."""

from __future__ import annotations

import random

import pytest

from sim import scenarios
from sim.components import Bootstrap, Converged, Crash, Loss, ScenarioError
from sim.metrics import Metrics
from sim.network import Network
from sim.scenarios import parse
from sim.world import OFF, PAUSED, UP, World
from tests.sim.fakecore import FakeFactory


def world(n: int = 20) -> World:
    return World(n, FakeFactory(n), Network(n, random.Random(1)), Metrics(n, 100.0, 1.0),
                 tcp_timeout=10.0)


def install(spec: str, n: int = 20, seed: int = 1, duration: float = 100.0) -> World:
    w = world(n)
    scenarios.install(parse(spec), w, seed, duration)
    return w


def test_presets_expand_and_converged_is_the_default_start() -> None:
    comps = parse("crash-1pct")
    assert isinstance(comps[0], Converged) and isinstance(comps[1], Crash)
    assert comps[1].pct == 1.0 and comps[1].at == 5.0
    comps = parse("loss:p=0.2")
    assert isinstance(comps[0], Converged) and isinstance(comps[1], Loss) and comps[1].p == 0.2


def test_start_component_goes_first() -> None:
    comps = parse("crash:count=2,bootstrap:seeds=3")
    assert isinstance(comps[0], Bootstrap) and comps[0].seeds == 3


def test_canonical_spec_round_trips() -> None:
    comps = parse("stalls,partition:oneway=1:bridge=10,meta:at=3")
    again = parse(scenarios.canonical(comps))
    assert again == comps


@pytest.mark.parametrize(("spec", "message"), [
    ("nosuch", "unknown scenario component"),
    ("crash:foo=1", "unknown parameter"),
    ("crash:pct", "unknown parameter"),
    ("crash:pct=abc", "not a valid float"),
    ("partition:oneway=maybe", "not a valid bool"),
    ("converged,bootstrap", "one start component"),
])
def test_bad_specs_are_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse(spec)


def test_crash_picks_count_nodes_never_node_0_and_deterministically() -> None:
    w = install("crash:count=3:at=2", n=20)
    w.run(3.0)
    down = [i for i, node in enumerate(w.nodes) if node.state == OFF]
    assert len(down) == 3 and 0 not in down
    w2 = install("crash:count=3:at=2", n=20)
    w2.run(3.0)
    assert [i for i, node in enumerate(w2.nodes) if node.state == OFF] == down
    w3 = install("crash:count=3:at=2", n=20, seed=2)
    w3.run(3.0)
    assert [i for i, node in enumerate(w3.nodes) if node.state == OFF] != down


def test_crash_percentage_rounds_and_restarts() -> None:
    w = install("crash:pct=10:at=1:restart=5", n=20)
    w.run(2.0)
    assert sum(1 for node in w.nodes if node.state == OFF) == 2
    w.run(7.0)
    assert all(node.state == UP for node in w.nodes)
    assert w.metrics.crash_count == 2


def test_too_many_crashes_is_an_error() -> None:
    with pytest.raises(ScenarioError, match="cannot pick"):
        install("crash:count=50", n=20)


def test_bootstrap_starts_seeds_first_then_everyone_within_spread() -> None:
    w = install("bootstrap:seeds=2:spread=1", n=10)
    w.run(0.0)
    assert [node.state for node in w.nodes[:2]] == [UP, UP]
    w.run(1.1)
    assert all(node.state == UP for node in w.nodes)


def test_partition_cuts_both_ways_and_heals() -> None:
    w = install("partition:at=1:heal=3:frac=0.5", n=10)
    w.run(1.5)
    assert len(w.net.cuts) == 2
    a = [i for i in range(10) if w.net.cuts[0].src[i]]
    b = [i for i in range(10) if w.net.cuts[0].dst[i]]
    assert len(a) == 5 and len(b) == 5 and not set(a) & set(b)
    w.run(3.5)
    assert w.net.cuts == []


def test_partial_partition_leaves_a_bridge() -> None:
    w = install("partition:at=1:heal=0:bridge=20:oneway=1", n=10)
    w.run(2.0)
    [cut] = w.net.cuts
    sides = sum(cut.src) + sum(cut.dst)
    assert sides == 8


def test_stall_pauses_a_fixed_subset_repeatedly() -> None:
    w = install("stall:count=2:dur=1:gap=2:start=0", n=10, duration=30.0)
    stalling = [i for i in range(10) if w.metrics.stalling[i]]
    assert len(stalling) == 2
    paused_seen: set[int] = set()
    for step in range(300):
        w.run(step * 0.1)
        paused_seen |= {i for i, node in enumerate(w.nodes) if node.state == PAUSED}
    assert paused_seen == set(stalling)


def test_churn_keeps_crashing_and_restarting() -> None:
    w = install("churn:every=2:pct=10:down=3:start=1", n=20, duration=20.0)
    w.run(20.0)
    assert w.metrics.crash_count == 10 * 2  # 10 rounds × 2 nodes
    assert w.nodes[0].state == UP


def test_loss_dup_latency_slow_configure_the_network() -> None:
    w = install("loss:p=0.3:at=1:until=2,dup:p=0.1,latency:median=0.01:sigma=0:floor=0,slow:pct=10:delay=0.5")
    assert w.net.duplicate == 0.1
    assert w.net.latency.median == 0.01
    assert sum(1 for d in w.net.inbound_delay if d == 0.5) == 2
    w.run(1.5)
    assert w.net.loss == 0.3
    w.run(2.5)
    assert w.net.loss == 0.0


def test_meta_update_registers_a_watch() -> None:
    w = install("meta:at=1:node=4", n=10)
    w.run(2.0)
    [watch] = w.metrics.watches
    assert watch.subject == 4 and watch.at == 1.0 and watch.meta is not None


def test_describe_lists_every_component() -> None:
    text = scenarios.describe()
    for name in scenarios.COMPONENTS:
        assert name in text
