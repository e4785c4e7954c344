"""Configuration and counters of the replicated tables.

Owns: ``TablesConfig`` (timings, fan-out, IPAM and VNI parameters, validated on
construction) and ``TablesStats``. Does no I/O. See docs/tables.md for the
reasoning behind each default.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

VNI_MAX = (1 << 24) - 1
"""The largest VXLAN network identifier (24 bits); ``gossip.tables.ipam`` re-exports it."""


@dataclass(frozen=True, slots=True)
class TablesConfig:
    """Durations in float seconds; None means "take it from the Swim config"."""

    tombstone_ttl: float = 1800.0
    """How long a delete is remembered (networkdb: 30 min). A partition longer than
    this can bring back a deleted network (endpoints are protected by their owner)."""
    owner_reap: float = 1800.0
    """Rows of a member that died or left are hidden at once and dropped after this."""
    gossip_interval: float | None = None
    """Network-scoped gossip round (None: the Swim gossip_interval)."""
    gossip_nodes: int = 3
    """Network peers per gossip round (networkdb: 3)."""
    gossip_miss: float = 1e-3
    """Target probability that network gossip leaves some member of a network without a
    row (it then waits for the bulk sync): each node sends a row at least as often as
    ``sync.transmit_limit`` derives from it (about ln((n-1)/gossip_miss) times)."""
    gossip_coalesce: float = 0.02
    """An event queued on an idle network queue goes out this long after it was queued
    (rows arriving together share a message), but never less than one gossip interval
    after the previous round, so steady load sends no more rounds than before."""
    bulk_sync_interval: float | None = None
    """Per-network anti-entropy with one random network peer (None: push_pull_interval)."""
    fresh_peers: int = 32
    """A row this node just wrote (an endpoint created, renamed or removed) goes at once,
    in a message of its own, to every peer of the network when it has at most this many,
    else to this many random ones; the regular gossip rounds still send it their
    ``transmit_limit`` times. 0: no such push (the write waits for a gossip round to
    ``gossip_nodes`` peers, the behaviour before this option)."""
    join_sync_peers: int = 3
    """Peers asked for a full sync when this node joins a network."""
    sync_retry: float = 1.0
    """How often a joined network that has not been synced yet retries."""
    reap_period: float = 5.0
    udp_payload: int = 1300
    """Upper bound of one network-gossip message (the core adds framing, CRC, crypto)."""
    default_mtu: int | None = None
    """MTU of networks created without one; None: derived by the dataplane from the
    underlay (1450 on a 1500-byte IPv4 underlay, less when encrypted)."""
    vni_min: int = 4096
    """Automatic VNIs come from [vni_min, vni_max] (Docker swarm starts at 4096)."""
    vni_max: int = VNI_MAX
    ipam_block: int = 16
    """Addresses per IPAM block (a power of two) ..."""
    ipam_min_blocks: int = 64
    """... halved (down to 4) until a subnet has at least this many blocks."""
    scoped: bool = True
    """False: every node takes part in every network (whole-cluster endpoint gossip,
    the baseline the simulator compares scoping with). Not for production."""

    def __post_init__(self) -> None:
        if self.ipam_block < 4 or self.ipam_block & (self.ipam_block - 1):
            raise ValueError("ipam_block must be a power of two >= 4")
        if not 1 <= self.vni_min <= self.vni_max <= VNI_MAX:
            raise ValueError(f"VNI range must lie within 1-{VNI_MAX}")
        if self.tombstone_ttl <= 0 or self.owner_reap <= 0 or self.reap_period <= 0:
            raise ValueError("tombstone_ttl, owner_reap and reap_period must be positive")
        if self.gossip_nodes < 0 or self.join_sync_peers < 0 or self.fresh_peers < 0 or self.sync_retry <= 0:
            raise ValueError("gossip_nodes, join_sync_peers and fresh_peers must be >= 0, sync_retry > 0")
        if not 0 < self.gossip_miss < 1 or self.gossip_coalesce < 0:
            raise ValueError("gossip_miss must lie in (0, 1) and gossip_coalesce be >= 0")
        if self.udp_payload < 200:
            raise ValueError("udp_payload must be at least 200 bytes")

    def with_(self, **changes: object) -> TablesConfig:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(slots=True)
class TablesStats:
    """Counters for the agent's stats and the simulator's bytes-per-node figures."""

    gossip_sent: int = 0
    gossip_bytes: int = 0
    bulk_sent: int = 0
    bulk_bytes: int = 0
    piggyback_bytes: int = 0
    """Broadcasts handed to the core to piggyback, with its per-part framing overhead."""
    state_bytes: int = 0
    """Push/pull user state handed to the core."""
    fresh_sent: int = 0
    """Messages that carried a freshly written local row at once (``fresh_peers``)."""
    rows_applied: int = 0
    reasserts: int = 0
    decode_errors: int = 0
