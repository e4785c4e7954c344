"""Storage of the replicated rows with the last-writer-wins merge.

Owns: the four row dictionaries, ``merge`` (apply a row if it supersedes what is
held), the leave epoch (a node's leave of a network obsoletes its older endpoint
rows there) and reaping. Knows nothing about gossip, clocks, the local node or
membership: callers decide what may be stored and when rows are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from gossip.tables.rows import AnyRow, ClaimRow, EndpointRow, MemberRow, NetworkRow, newer

ClaimKey = tuple[int, int, str]
"""(family, block, node)"""
EndpointKey = tuple[str, str]
"""(owner, endpoint id)"""


@dataclass(slots=True)
class TableStore:
    networks: dict[str, NetworkRow] = field(default_factory=dict)
    members: dict[str, dict[str, MemberRow]] = field(default_factory=dict)
    """net id -> node -> row"""
    claims: dict[str, dict[ClaimKey, ClaimRow]] = field(default_factory=dict)
    endpoints: dict[str, dict[EndpointKey, EndpointRow]] = field(default_factory=dict)
    """Only for networks the local node takes part in."""

    # ------------------------------------------------------------ lookups

    def current(self, row: AnyRow) -> AnyRow | None:
        """The held row with the same key as ``row``."""
        if isinstance(row, NetworkRow):
            return self.networks.get(row.id)
        if isinstance(row, MemberRow):
            return self.members.get(row.net, {}).get(row.node)
        if isinstance(row, ClaimRow):
            return self.claims.get(row.net, {}).get((row.family, row.block, row.node))
        return self.endpoints.get(row.net, {}).get((row.owner, row.id))

    def member(self, net: str, node: str) -> MemberRow | None:
        return self.members.get(net, {}).get(node)

    def joined(self, net: str, node: str) -> bool:
        m = self.member(net, node)
        return m is not None and not m.deleted

    def live_network(self, net: str) -> bool:
        r = self.networks.get(net)
        return r is not None and not r.deleted

    def cluster_rows(self) -> Iterator[NetworkRow | MemberRow | ClaimRow]:
        yield from self.networks.values()
        for members in self.members.values():
            yield from members.values()
        for claims in self.claims.values():
            yield from claims.values()

    # -------------------------------------------------------------- merge

    def merge(self, row: AnyRow) -> bool:
        """Store ``row`` if it supersedes the held one; True if it did.

        An equal tombstone keeps the earlier expiry (the residual time only shrinks).
        Endpoint rows older than their owner's leave of the network are refused.
        """
        cur = self.current(row)
        if cur is not None and not newer(row, cur):
            if cur.deleted and row.deleted and cur.lamport == row.lamport and cur.writer == row.writer:
                cur.expires = min(cur.expires, row.expires)
            return False
        if isinstance(row, NetworkRow):
            if row.deleted and row.value is None and isinstance(cur, NetworkRow):
                row.value = cur.value  # keep the definition locally (see NetworkRow.value)
            self.networks[row.id] = row
        elif isinstance(row, MemberRow):
            self.members.setdefault(row.net, {})[row.node] = row
            if row.deleted:
                self._drop_older(row.net, row.node, row.lamport)
        elif isinstance(row, ClaimRow):
            self.claims.setdefault(row.net, {})[(row.family, row.block, row.node)] = row
        else:
            m = self.member(row.net, row.owner)
            if m is not None and m.deleted and row.lamport < m.lamport:
                return False
            self.endpoints.setdefault(row.net, {})[(row.owner, row.id)] = row
        return True

    def _drop_older(self, net: str, owner: str, lamport: int) -> None:
        rows = self.endpoints.get(net)
        if not rows:
            return
        for key in [k for k, r in rows.items() if k[0] == owner and r.lamport < lamport]:
            del rows[key]

    def forget_endpoints(self, net: str) -> None:
        self.endpoints.pop(net, None)

    # --------------------------------------------------------------- reap

    def reap(self, now: float, drop_owner: Callable[[str], bool], orphan_before: float,
             keep_owner: str) -> bool:
        """Drop expired tombstones, rows of owners ``drop_owner`` says are gone for good,
        and endpoint rows whose owner has not joined the network since ``orphan_before``.
        Rows of ``keep_owner`` (the local node) are dropped only when expired. True if
        anything was dropped."""
        dropped = False

        def gone(row: AnyRow, owner: str) -> bool:
            if row.deleted and row.expires <= now:
                return True
            return owner != keep_owner and drop_owner(owner)

        for net_id in [k for k, r in self.networks.items() if r.deleted and r.expires <= now]:
            del self.networks[net_id]
            dropped = True
        for members in self.members.values():
            for node in [n for n, r in members.items() if gone(r, n)]:
                del members[node]
                dropped = True
        for claims in self.claims.values():
            for ckey in [k for k, r in claims.items() if gone(r, r.node)]:
                del claims[ckey]
                dropped = True
        for net_id, rows in self.endpoints.items():
            for key in [
                k
                for k, r in rows.items()
                if gone(r, r.owner)
                or (r.owner != keep_owner and not self.joined(net_id, r.owner) and r.since < orphan_before)
            ]:
                del rows[key]
                dropped = True
        for table in (self.members, self.claims):
            for net_id in [k for k, v in table.items() if not v]:
                del table[net_id]
        return dropped
