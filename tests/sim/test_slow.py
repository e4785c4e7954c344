"""Bigger simulations (tens of seconds to minutes of wall time): run with ``-m slow``."""

from __future__ import annotations

import pytest

from gossip.config import Config, suspicion_bounds
from sim.run import RunSpec, execute

pytestmark = pytest.mark.slow


def test_1000_nodes_crash_1pct_detected_everywhere() -> None:
    config = Config.lan()
    low, high = suspicion_bounds(config, 1000)
    spec = RunSpec(nodes=1000, duration=5 + high + 10, scenario="crash-1pct", seed=3,
                   overrides=(("enable_compression", "false"),))
    r = execute(spec).result
    det = r["detection"]
    assert det["crashed"] == 10 and det["undetected_pairs"] == 0
    assert det["latency"]["max"] <= 5 + high + 5
    assert det["latency"]["p50"] <= low + 5
    assert r["false_positives"]["deaths"] == 0
    assert r["convergence"]["converged_at_end"]


def test_lifeguard_reduces_false_deaths_under_heavy_loss() -> None:
    deaths = {}
    for lifeguard in ("true", "false"):
        total = 0
        for seed in (1, 2):
            spec = RunSpec(nodes=50, duration=300, scenario="converged,loss:p=0.25", seed=seed,
                           overrides=(("lifeguard", lifeguard),))
            total += int(execute(spec).result["false_positives"]["deaths"])
        deaths[lifeguard] = total
    assert deaths["true"] * 3 < deaths["false"], deaths
