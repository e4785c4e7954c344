"""The simulator driving the real gossip core: bounds that must hold, and determinism.

These runs are small (N = 20…200, tens of simulated seconds) and take seconds.
Bounds come from the configuration (memberlist's formulas, docs/wire.md), not from timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gossip.config import Config, suspicion_bounds
from sim.run import RunSpec, execute

ROOT = Path(__file__).resolve().parents[2]


def run(nodes: int, duration: float, scenario: str, seed: int = 1, **overrides: str) -> dict[str, Any]:
    spec = RunSpec(nodes=nodes, duration=duration, scenario=scenario, seed=seed,
                   overrides=tuple(overrides.items()))
    return execute(spec).result


def detection_bound(n: int, config: Config) -> float:
    """Worst case for every live node to mark a crash failed: some node probes the crashed
    one within a few periods, the suspicion runs to its maximum (no confirmations), and the
    dead message needs a few gossip rounds to reach everyone."""
    _, high = suspicion_bounds(config, n)
    return 5 * config.probe_interval + high + 20 * config.gossip_interval


@pytest.mark.parametrize("n", [20, 100])
def test_crash_is_detected_by_every_live_node_within_the_bound(n: int) -> None:
    config = Config.lan()
    bound = detection_bound(n, config)
    r = run(n, 5 + bound + 1, f"converged,crash:count={max(1, n // 20)}:at=5")
    det = r["detection"]
    assert det["crashed"] == max(1, n // 20)
    assert det["undetected_pairs"] == 0
    assert det["latency"]["max"] <= bound
    # With Lifeguard, independent suspicions shrink the timeout towards its minimum.
    low, _ = suspicion_bounds(config, n)
    assert det["latency"]["p50"] <= low + 5 * config.probe_interval
    assert r["convergence"]["converged_at_end"]


def test_no_false_positives_without_loss() -> None:
    r = run(200, 40, "converged,crash:count=2:at=5,meta:at=10")
    fp = r["false_positives"]
    assert fp["suspicions"] == 0 and fp["deaths"] == 0
    assert r["core"]["decode_errors"] == 0


def test_bootstrap_converges() -> None:
    r = run(50, 30, "bootstrap:seeds=1:spread=1")
    conv = r["convergence"]
    assert conv["converged_at_end"]
    # Everyone started within 1 s; the views are all correct a few gossip rounds later.
    assert conv["all_started_at"] <= 1.01
    assert conv["join_converged_at"] is not None and conv["join_converged_at"] < 5
    assert r["core"]["joins_failed"] == 0


def test_meta_update_reaches_everyone() -> None:
    r = run(100, 20, "converged,meta:at=2")
    [d] = r["dissemination"]
    assert d["reached"] == 1.0 and d["t100"] is not None and d["t100"] < 10


def test_graceful_leave_is_seen_as_left_not_failed() -> None:
    r = run(30, 20, "converged,leave:at=3:count=2")
    # Every one of the 28 others hears of both leaves (a leaver may hear of the other too).
    assert 2 * 28 <= r["member_events"]["left"] <= 2 * 29
    assert r["member_events"]["failed"] == 0
    assert r["convergence"]["converged_at_end"]


def test_partition_longer_than_suspicion_heals() -> None:
    # 40 s apart: both sides declare the other dead; the re-join of failed members heals it.
    r = run(30, 120, "converged,partition:at=5:heal=45")
    assert r["convergence"]["converged_at_end"]
    assert r["member_events"]["failed"] > 0


def test_crash_and_restart_rejoins() -> None:
    r = run(30, 60, "converged,crash:count=2:at=5:restart=20")
    assert r["nodes_running_at_end"] == 30
    assert r["convergence"]["converged_at_end"]


def _subprocess_hash(hashseed: str, tmp: Path) -> str:
    out = tmp / f"h{hashseed}"
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    spec = "converged,crash:count=2:at=3,meta:at=4,loss:p=0.05,partition:at=8:heal=14:bridge=10,stall:count=2:dur=1"
    subprocess.run(
        [sys.executable, "-m", "sim", "--nodes", "30", "--duration", "25", "--seed", "7",
         "--scenario", spec, "--out", str(out), "--no-plots", "--no-progress"],
        check=True, cwd=ROOT, env=env, capture_output=True, timeout=300,
    )
    result = json.loads((out / "result.json").read_text())
    assert result["trace_records"] > 1000
    return str(result["trace_hash"])


def test_same_seed_same_trace_under_different_hash_seeds(tmp_path: Path) -> None:
    assert _subprocess_hash("1", tmp_path) == _subprocess_hash("2", tmp_path)


def test_different_seed_different_trace() -> None:
    a = run(20, 10, "crash-1pct", seed=1)["trace_hash"]
    b = run(20, 10, "crash-1pct", seed=2)["trace_hash"]
    assert a != b
    assert run(20, 10, "crash-1pct", seed=1)["trace_hash"] == a
