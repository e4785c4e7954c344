"""The harness against serf alone: a serf-only cluster joins, is seen through both
the native RPC and the CLI, and detects a SIGKILLed agent. If this fails, the
mixed-cluster tests cannot be trusted."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.lab.netlab import Lab
from bench.cluster import Cluster, all_alive
from bench.serfnode import members_cli, serf_binary
from gossip.config import Config, suspicion_bounds

pytestmark = [pytest.mark.netns, pytest.mark.interop]


def test_serf_only_cluster_converges_and_detects_a_kill(
    lab_cluster: Callable[[int], tuple[Lab, Cluster]],
) -> None:
    lab, cl = lab_cluster(3)
    seed = cl.start_serf(lab.hosts[0], "s0", tags={"role": "seed"})
    cl.wait_ready([seed], timeout=10)
    nodes = [seed] + [cl.start_serf(h, f"s{h.index}", join=[seed.bind]) for h in lab.hosts[1:]]
    cl.wait_for(nodes, all_alive(["s0", "s1", "s2"]), timeout=40, what="serf join")

    serf = serf_binary()
    assert serf is not None
    rows = {m.name: m for m in members_cli(lab, lab.hosts[2], serf)}
    assert rows["s0"].tags == {"role": "seed"}
    assert rows["s0"].addr == lab.hosts[0].addr and rows["s0"].port == 7946

    cl.kill(nodes[2])
    _, high = suspicion_bounds(Config.lan(), 3)
    cl.wait_for(nodes[:2], lambda v: v.get("s2") == "failed", timeout=high + 10, what="s2 failed")
