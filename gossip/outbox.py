"""Packing a node's messages into datagrams for one peer at a time.

Owns: the packet budget (the UDP buffer less the compound header, the encryption
and CRC overheads), piggybacking queued broadcasts and then the delegate's user
data in the space a message leaves (the delegate's only to peers that run our
agent: a serf peer would log every byte of it), the retransmit limit for the
current cluster size, compressed packing (``Config.compressed_packing``: fill by
the compression recent full packets achieved, the ``squeeze``; split a packet that
still compresses past the buffer, and one of more parts than serf reads), and the
``Send`` effect with its statistics.
Does not: choose peers (the core's gossip round, the prober), decide what news is
(``broadcasts.py`` orders it), or frame bytes (``wire/codec.py``).
Reference: memberlist 0.2.2 ``net.go`` (sendMsg, getBroadcasts), ``broadcast.go``.
"""

from __future__ import annotations

from typing import Protocol

from gossip.broadcasts import Broadcasts
from gossip.config import Config, retransmit_limit
from gossip.delegate import Delegate, NullDelegate
from gossip.effects import Address, Effect, Send
from gossip.members import Member
from gossip.membertable import MemberTable
from gossip.wire import codec as wire
from gossip.wire.encryption import GossipEncryption

_COMPOUND_HEADER = 2
_USER_OVERHEAD = 1
_SQUEEZE_MAX = 4.0
"""At most this many raw bytes are packed per byte of a packet's budget."""
_SQUEEZE_MARGIN = 0.85
"""Packing aims this far below the observed compression, so that splits stay rare."""


class SendStats(Protocol):
    """Counters of what was sent (``SwimStats`` has them)."""

    packets_sent: int
    bytes_sent: int


class Outbox:
    """See the module docstring. One per node; it shares the node's broadcast queue,
    member table (for the cluster size), delegate, encryption and statistics."""

    __slots__ = (
        "_broadcasts", "_config", "_delegate", "_encryption", "_limit", "_limit_n", "_stats", "_table",
        "squeeze",
    )

    def __init__(
        self,
        config: Config,
        table: MemberTable,
        broadcasts: Broadcasts,
        delegate: Delegate,
        encryption: GossipEncryption,
        stats: SendStats,
    ) -> None:
        self._config = config
        self._table = table
        self._broadcasts = broadcasts
        self._delegate = delegate
        self._encryption = encryption
        self._stats = stats
        self.squeeze = 1.0
        """Raw bytes to pack per budget byte: the compression recent full packets
        achieved, times a margin. 1.0 packs like memberlist."""
        self._limit_n = -1
        self._limit = 0
        """``retransmit_limit`` for a table of ``_limit_n`` members."""

    def has_news(self) -> bool:
        """Broadcasts are queued or the delegate may have some."""
        return bool(self._broadcasts) or self.delegate_may_broadcast()

    def delegate_may_broadcast(self) -> bool:
        # Delegates that carry no application data (NullDelegate) never broadcast.
        delegate = self._delegate
        return type(delegate) is not NullDelegate and delegate.has_broadcasts()

    def fill_budget(self, peer: Member | None) -> int:
        """Raw bytes of messages to pack into one packet for ``peer``."""
        budget = self._config.udp_buffer_size - _COMPOUND_HEADER
        if self._encryption.outgoing() is not None:
            budget -= wire.ENCRYPT_OVERHEAD
        if peer is not None and peer.pmax >= 5:
            budget -= wire.CRC_OVERHEAD
        if self.squeeze > 1.0:
            return int(budget * self.squeeze)
        return budget

    def take(self, budget: int, used: int, peer: Member | None) -> list[bytes]:
        """News for ``peer`` in ``budget - used`` bytes: broadcasts, then the delegate's."""
        n = len(self._table.members)
        if n != self._limit_n:  # memoised per table size: this runs for every packet
            self._limit_n = n
            self._limit = retransmit_limit(self._config, n)
        parts = self._broadcasts.take(wire.COMPOUND_PART_OVERHEAD, budget - used, self._limit)
        delegate = self._delegate
        if peer is None or not delegate.accepts_user_data(peer):
            return parts  # serf (or unknown): it would log every delegate byte it gets
        used += sum(map(len, parts)) + 2 * len(parts)
        for payload in delegate.take_broadcasts(2 + _USER_OVERHEAD, budget - used):
            if payload:
                parts.append(b"\x08" + payload)
        return parts

    def send(
        self, peer: Member | None, parts: list[bytes], effects: list[Effect], to: Address | None = None
    ) -> None:
        """Send ``parts`` to ``to`` (default: ``peer``'s address) with news piggybacked."""
        budget = self.fill_budget(peer)
        used = sum(map(len, parts)) + 2 * len(parts)
        if used < budget and self.has_news():
            parts = parts + self.take(budget, used, peer)
        dest = to if to is not None else (peer.address if peer is not None else None)
        if dest is None:
            return
        self.emit(dest, parts, peer, effects)

    def gossip_to(self, peer: Member, effects: list[Effect]) -> bool:
        """One gossip packet of news for ``peer``; False if there was none for it."""
        parts = self.take(self.fill_budget(peer), 0, peer)
        if not parts:
            return False
        self.emit(peer.address, parts, peer, effects)
        return True

    def emit(self, to: Address, parts: list[bytes], peer: Member | None, effects: list[Effect]) -> None:
        """Exactly ``parts``, in one datagram (two if packing overshot)."""
        config = self._config
        packing = config.enable_compression and config.compressed_packing
        if packing and len(parts) > wire.SERF_SAFE_COMPOUND_PARTS:
            self._emit_halves(to, parts, peer, effects)
            return
        data = wire.encode_packet(
            parts,
            compress=config.enable_compression,
            crc=peer is not None and peer.pmax >= 5,
            keyring=self._encryption.outgoing(),
        )
        if packing and len(parts) > 1:
            raw = 2 + sum(map(len, parts)) + 2 * len(parts)
            if len(data) > config.udp_buffer_size:
                # Packed beyond what this content compresses to: send it as two packets
                # (each stands alone) and pack less from now on.
                self.squeeze = max(1.0, self.squeeze * _SQUEEZE_MARGIN)
                self._emit_halves(to, parts, peer, effects)
                return
            if 2 * raw >= config.udp_buffer_size:  # full enough to tell how news compresses
                seen = min(_SQUEEZE_MAX, max(1.0, raw / len(data) * _SQUEEZE_MARGIN))
                self.squeeze += (seen - self.squeeze) * 0.5
        stats = self._stats
        stats.packets_sent += 1
        stats.bytes_sent += len(data)
        effects.append(Send(to, data))

    def _emit_halves(
        self, to: Address, parts: list[bytes], peer: Member | None, effects: list[Effect]
    ) -> None:
        """Send ``parts`` as two packets (each stands alone; the first keeps a leading
        ping or ack)."""
        half = len(parts) // 2
        self.emit(to, parts[:half], peer, effects)
        self.emit(to, parts[half:], peer, effects)
