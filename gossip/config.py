"""Gossip configuration: memberlist's three profiles and the pure scaling formulas.

Owns: timing/fan-out knobs and the formulas memberlist derives from them
(suspicion bounds, retransmit limit, push/pull scaling). Does no I/O.
Reference: memberlist 0.2.2 ``config.go`` (DefaultLANConfig, DefaultWANConfig,
DefaultLocalConfig) and ``util.go`` (suspicionTimeout, retransmitLimit, pushPullScale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

Profile = Literal["lan", "wan", "local"]


@dataclass(frozen=True, slots=True)
class Config:
    """All durations in float seconds."""

    tcp_timeout: float = 10.0
    indirect_checks: int = 3
    retransmit_mult: int = 4
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    push_pull_interval: float = 30.0
    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    disable_tcp_pings: bool = False
    awareness_max_multiplier: int = 8
    gossip_nodes: int = 3
    gossip_interval: float = 0.2
    gossip_to_the_dead_time: float = 30.0
    enable_compression: bool = True
    udp_buffer_size: int = 1400
    # Beyond memberlist 0.2.2 (issue: memberlist#253, #222).
    reap_interval: float = 24 * 3600.0
    """Dead and left members are forgotten this long after their last state change."""
    rejoin_interval: float = 30.0
    """How often seeds and recently failed members are re-joined so partitions heal."""
    rejoin_failed_for: float = 24 * 3600.0
    """How long a failed member keeps being re-joined."""
    lifeguard: bool = True
    """Lifeguard's local health, nacks, suspicion confirmations and buddy system."""
    relay_at_once: bool = True
    """News that arrives while a node has nothing else to gossip goes out at once, not at
    the next beat of the gossip ticker (quiet nodes skip beats). False reproduces
    memberlist's timing (the simulator's comparisons with serf use it)."""
    fail_probe_on_unreachable: bool = True
    """When the shell reports that a probed member's address answered with ICMP port
    unreachable (its host is up, nothing listens: the agent crashed or was killed), the
    probe fails at once instead of at the end of the probe interval. The suspicion and
    its timeout are unchanged, so a restarting agent still refutes in time. memberlist
    ignores ICMP."""
    compressed_packing: bool = True
    """With compression on, fill gossip packets by their compressed size rather than
    their raw size (memberlist counts raw bytes, so a compressed 1,400-byte budget
    leaves most of the datagram empty): several times the news per packet during
    joins and failures. A packet that still compresses above the budget is split."""
    max_members: int = 65536
    """The most members one table holds, itself included (issue 18: spoofed alives are
    otherwise all admitted). An alive about a new member beyond it is refused, with one
    warning per episode. The default leaves room for 10,000-node clusters several times
    over; memberlist has no bound."""
    reap_unheard_interval: float = 3600.0
    """Dead and left members that never answered a probe of ours (only heard of through
    gossip, as spoofed members are) are forgotten after this long instead of
    ``reap_interval``."""
    dead_node_reclaim_time: float = 0.0
    """A dead member may come back under the same name from a new address after this
    long (0 = only once it is dead/left at all; memberlist's default 0 means never,
    which breaks restarted nodes that get a new address)."""

    @classmethod
    def lan(cls) -> Config:
        return cls()

    @classmethod
    def wan(cls) -> Config:
        return cls(
            tcp_timeout=30.0,
            suspicion_mult=6,
            push_pull_interval=60.0,
            probe_interval=5.0,
            probe_timeout=3.0,
            gossip_nodes=4,
            gossip_interval=0.5,
            gossip_to_the_dead_time=60.0,
        )

    @classmethod
    def local(cls) -> Config:
        return cls(
            tcp_timeout=1.0,
            indirect_checks=1,
            retransmit_mult=2,
            suspicion_mult=3,
            push_pull_interval=15.0,
            probe_timeout=0.2,
            gossip_interval=0.1,
            gossip_to_the_dead_time=15.0,
        )

    @classmethod
    def profile(cls, name: str) -> Config:
        if name == "lan":
            return cls.lan()
        if name == "wan":
            return cls.wan()
        if name == "local":
            return cls.local()
        raise ValueError(f"unknown profile {name!r} (expected lan, wan or local)")

    def with_(self, **changes: object) -> Config:
        return replace(self, **changes)  # type: ignore[arg-type]


def suspicion_bounds(config: Config, n: int) -> tuple[float, float]:
    """(min, max) suspicion timeout for a cluster of ``n`` known nodes.

    memberlist uses log10(N) floored at 1 (its doc comment's log(N+1) is wrong),
    rounded to milliseconds.
    """
    node_scale = max(1.0, math.log10(max(1, n)))
    low = round(config.suspicion_mult * node_scale * config.probe_interval * 1000) / 1000
    return low, low * config.suspicion_max_timeout_mult


def expected_confirmations(config: Config, n: int) -> int:
    """Independent suspicions needed to shrink the timeout to its minimum (Lifeguard k)."""
    k = config.suspicion_mult - 2
    if not config.lifeguard or n - 2 < k:
        return 0
    return k


def suspicion_timeout(low: float, high: float, k: int, confirmations: int) -> float:
    """Lifeguard's LHA-suspicion: the timeout shrinks logarithmically with confirmations."""
    if k <= 0:
        return low
    frac = math.log(confirmations + 1) / math.log(k + 1)
    return max(low, high - frac * (high - low))


def retransmit_limit(config: Config, n: int) -> int:
    """Transmissions of each broadcast: RetransmitMult × ceil(log10(N + 1))."""
    return config.retransmit_mult * math.ceil(math.log10(n + 1))


def push_pull_scale(interval: float, n: int) -> float:
    """memberlist's pushPullScale: back off push/pull above 32 nodes."""
    threshold = 32
    if n <= threshold:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(threshold)) + 1
    return multiplier * interval
