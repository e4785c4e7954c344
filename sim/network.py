"""The simulated network: how long a datagram or a TCP exchange takes, and whether it arrives.

Owns: the link model (latency distribution, random loss, duplication, per-node
inbound delay for slow hosts), directed "cuts" that make asymmetric and partial
partitions, and the timing of TCP exchanges (handshake, retransmission
timeouts). Does not own: node state (crashed, paused: see ``world.py``) or any
protocol behaviour.

Every random decision comes from one seeded ``random.Random`` and is taken in
the order the world asks, so a run is a pure function of its seed. ``transit``
is on the hot path (one call per datagram): no allocation, no logging.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

DROPPED = -1.0
"""What ``transit`` returns for a datagram that never arrives."""

SYN_RTO = 1.0
"""Linux's initial SYN retransmission timeout (RFC 6298 §2.1 allows 1 s)."""
DATA_RTO = 0.2
"""Linux's minimum data retransmission timeout (TCP_RTO_MIN)."""


@dataclass(frozen=True, slots=True)
class Latency:
    """One-way latency: ``floor`` plus a lognormal with the given median and sigma.

    A lognormal has the long right tail that measured LAN/DC latencies show;
    sigma 0 makes it constant. The default (≈0.5 ms median, rare ms outliers)
    matches a bridge between network namespaces on one host.
    """

    floor: float = 0.0001
    median: float = 0.0004
    sigma: float = 0.5

    def __post_init__(self) -> None:
        if self.floor < 0 or self.median < 0 or self.sigma < 0:
            raise ValueError("latency floor, median and sigma must be >= 0")

    def sample(self, rng: random.Random) -> float:
        if self.sigma == 0.0 or self.median == 0.0:
            return self.floor + self.median
        return self.floor + self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0))


class Cut:
    """Datagrams from any node in ``src`` to any node in ``dst`` are lost with ``loss``.

    A cut is directed: a symmetric partition is two cuts, an asymmetric one is
    a single cut, and a partial (non-transitive) partition leaves a bridge group
    that is in neither set. Membership is a bytearray indexed by node for a
    constant-time check on the hot path.
    """

    __slots__ = ("dst", "loss", "name", "src")

    def __init__(self, name: str, n: int, src: list[int], dst: list[int], loss: float = 1.0) -> None:
        if not 0.0 <= loss <= 1.0:
            raise ValueError(f"cut loss must be in [0, 1], got {loss}")
        self.name = name
        self.src = bytearray(n)
        self.dst = bytearray(n)
        for i in src:
            self.src[i] = 1
        for i in dst:
            self.dst[i] = 1
        self.loss = loss


class Network:
    """Delivery times for datagrams and TCP exchanges between node indices."""

    def __init__(
        self,
        n: int,
        rng: random.Random,
        *,
        latency: Latency | None = None,
        loss: float = 0.0,
        duplicate: float = 0.0,
    ) -> None:
        self.n = n
        self.rng = rng
        self.latency = latency or Latency()
        self.loss = 0.0
        self.duplicate = 0.0
        self.set_loss(loss)
        self.set_duplicate(duplicate)
        self.inbound_delay = [0.0] * n
        """Extra delay before a slow node handles what arrives (overloaded host)."""
        self.cuts: list[Cut] = []
        self.dropped = 0
        self.duplicated = 0

    # -- configuration (scenario actions) ---------------------------------

    def set_loss(self, loss: float) -> None:
        if not 0.0 <= loss <= 1.0:
            raise ValueError(f"loss must be in [0, 1], got {loss}")
        self.loss = loss

    def set_duplicate(self, p: float) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"duplication must be in [0, 1], got {p}")
        self.duplicate = p

    def add_cut(self, cut: Cut) -> None:
        self.cuts.append(cut)

    def remove_cut(self, name: str) -> None:
        self.cuts = [c for c in self.cuts if c.name != name]

    # -- datagrams (hot path) ---------------------------------------------

    def lost(self, src: int, dst: int) -> bool:
        """One independent loss decision for a segment from ``src`` to ``dst``."""
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            return True
        for cut in self.cuts:
            if cut.src[src] and cut.dst[dst] and (cut.loss >= 1.0 or rng.random() < cut.loss):
                return True
        return False

    def transit(self, src: int, dst: int) -> float:
        """Seconds until a datagram from ``src`` reaches ``dst``, or ``DROPPED``."""
        if (self.loss or self.cuts) and self.lost(src, dst):
            self.dropped += 1
            return DROPPED
        return self.latency.sample(self.rng) + self.inbound_delay[dst]

    def icmp_transit(self, src: int, dst: int) -> float:
        """Seconds until an ICMP error from ``src`` reaches ``dst``: the median latency,
        drawing nothing from the RNG (so runs whose cores ignore ICMP stay identical to
        runs without it). On a lossy or cut network it is not modelled: ``DROPPED``."""
        if self.loss or self.cuts:
            return DROPPED
        return self.latency.floor + self.latency.median + self.inbound_delay[dst]

    def duplicates(self) -> bool:
        """Whether the datagram just sent arrives a second time (caller re-samples transit)."""
        if self.duplicate and self.rng.random() < self.duplicate:
            self.duplicated += 1
            return True
        return False

    # -- TCP ----------------------------------------------------------------

    def _segment(self, src: int, dst: int, rto: float, budget: float) -> float:
        """Time for one TCP segment to get through, retransmitting with exponential backoff.

        Returns ``math.inf`` when it cannot arrive within ``budget`` seconds.
        """
        spent = 0.0
        while spent <= budget:
            if not self.lost(src, dst):
                return spent + self.latency.sample(self.rng)
            spent += rto
            rto *= 2.0
        return math.inf

    def stream_request(self, src: int, dst: int, budget: float) -> float:
        """Seconds from connect() until ``dst`` has the whole request: SYN, SYN-ACK, data.

        ``math.inf`` if it cannot complete within ``budget`` (e.g. a full cut):
        the caller turns that into a timeout failure.
        """
        spent = self._segment(src, dst, SYN_RTO, budget)
        spent += self._segment(dst, src, SYN_RTO, budget - spent)
        spent += self._segment(src, dst, DATA_RTO, budget - spent)
        return spent + self.inbound_delay[dst]

    def stream_reply(self, src: int, dst: int, budget: float) -> float:
        """Seconds for the reply written by ``src`` to reach the initiator ``dst``."""
        return self._segment(src, dst, DATA_RTO, budget) + self.inbound_delay[dst]

    def round_trip(self, src: int, dst: int) -> float:
        """One plain round trip (e.g. the SYN / RST of a refused connection)."""
        return self.latency.sample(self.rng) + self.latency.sample(self.rng)
