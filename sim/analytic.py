"""Closed-form predictions the simulator's measurements are compared with.

Owns: the SWIM paper's expected time to first detection (Das, Gupta, Motivala,
DSN 2002), the formula of serf's convergence simulator page (serf's documentation, a
JavaScript model, not a measurement) and memberlist's suspicion timeouts, retransmit
limit and push/pull interval for N (``gossip.config``, memberlist's formulas).
docs/simulation.md §5 compares them with what the simulator measures.
"""

from __future__ import annotations

import math

from gossip.config import Config, push_pull_scale, retransmit_limit, suspicion_bounds


def swim_first_detection_periods(alive_fraction: float = 1.0) -> float:
    """SWIM: expected protocol periods until some member first probes a crashed one.

    1 / (1 − e^(−q_f)), ≈ 1.58 when almost every member is alive.
    """
    return 1.0 / (1.0 - math.exp(-alive_fraction))


def serf_rounds(n: int, q: float, fanout: int = 3, loss: float = 0.0, failed: float = 0.0) -> float:
    """Serf's convergence page: gossip rounds until a fraction ``q`` is infected.

    Infected fraction after x rounds = 1 / (1 + (N+1)·e^(−βNx)), with
    β = fanout/N · (1 − loss) · (1 − failed) · 0.5; solved for x.
    """
    if not 0.0 < q < 1.0:
        raise ValueError("q must be in (0, 1)")
    beta_n = fanout * (1.0 - loss) * (1.0 - failed) * 0.5
    return math.log((n + 1) * q / (1.0 - q)) / beta_n


def serf_time(n: int, q: float, config: Config, loss: float = 0.0) -> float:
    """Seconds to reach fraction ``q`` by serf's page: whole rounds × gossip interval."""
    return math.ceil(serf_rounds(n, q, config.gossip_nodes, loss)) * config.gossip_interval


def predictions(config: Config, n: int) -> dict[str, float | int]:
    low, high = suspicion_bounds(config, n)
    return {
        "swim_first_detection_periods": swim_first_detection_periods(),
        "swim_first_detection_s": swim_first_detection_periods() * config.probe_interval,
        "suspicion_min_s": low,
        "suspicion_max_s": high,
        "retransmit_limit": retransmit_limit(config, n),
        "push_pull_interval_s": push_pull_scale(config.push_pull_interval, n),
        "serf_t50_s": serf_time(n, 0.5, config),
        "serf_t99_s": serf_time(n, 0.99, config),
        "serf_t9999_s": serf_time(n, 0.9999, config),
        "steady_msgs_per_node_per_s": 2.0 / config.probe_interval,
    }
