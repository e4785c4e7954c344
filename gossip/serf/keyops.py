"""Cluster-wide gossip-key operations, the sans-IO part of ``agentctl keys``.

Owns: the rules of a local key change (install / use / remove on a keyring),
the serf query that carries a key action to the other members, its timeout
(serf's default), the tally of acks and responses the querier collects, and the
report of which members applied the change. The agent (``agent/membership/keys.py``,
``agent/control/ops.py``) and the simulator's key-rotation scenario (``sim/keyrotation.py``)
both call these, so the simulation runs the code the agent runs.
Does not: send, wait or persist (the agent's driver and ``QueryBook`` do), or
answer other members' queries (``gossip/serf/queries.py``).
Reads a node through the narrow ``Membership`` protocol, not the core's class.
Reference: serf 0.9.4 ``keymanager.go`` / ``internal_query.go``; docs/wire.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from crypto.keyring import Keyring
from gossip.config import Config
from gossip.effects import QueryResponse
from gossip.errors import DecodeError
from gossip.members import Member, Status
from gossip.serf import payloads as serfcompat

KEY_QUERIES = {
    "install": "_serf_install-key",
    "use": "_serf_use-key",
    "remove": "_serf_remove-key",
    "list": "_serf_list-keys",
}
"""Key actions that serf members understand too (serf's internal key queries)."""


def apply_key(ring: Keyring, action: str, key: bytes) -> bool:
    """Apply ``install``/``use``/``remove`` of ``key`` locally; True if the ring changed.

    Raises ValueError with the user-facing reason (key not installed, primary key
    cannot be removed, ...). Installing a key the ring already holds is a no-op.
    """
    if action == "install":
        if key in ring.keys:
            return False
        ring.install(key)
        return True
    if action == "use":
        changed = ring.primary != key
        ring.use(key)
        return changed
    if action == "remove":
        ring.remove(key)
        return True
    raise ValueError(f"not a key action: {action!r}")


def key_query(action: str, key: bytes | None) -> tuple[str, bytes]:
    """(query name, payload) that carries ``action`` of ``key`` to the other members."""
    name = KEY_QUERIES.get(action)
    if name is None:
        raise ValueError(f"not a key query action: {action!r}")
    if action == "list":
        return name, b""
    if key is None:
        raise ValueError(f"{action} needs a key")
    return name, serfcompat.encode_key_request(key)


class Membership(Protocol):
    """What the key operations read of a node (``gossip.swim.Swim`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> Config: ...

    def num_members(self) -> int: ...

    def members(self) -> list[Member]: ...


def query_timeout(swim: Membership) -> float:
    """serf's default: GossipInterval × QueryTimeoutMult (16) × ceil(log10(N + 1))."""
    n = swim.num_members()
    return swim.config.gossip_interval * 16 * max(1, math.ceil(math.log10(n + 1)))


def live_members(swim: Membership) -> list[str]:
    """The other members this node believes alive (or suspect): who should answer."""
    return sorted(m.name for m in swim.members()
                  if m.name != swim.name and m.status in (Status.ALIVE, Status.SUSPECT))


@dataclass
class QueryTally:
    """What a querier collected: acks in arrival order, the first response per member."""

    acks: list[str] = field(default_factory=list)
    responses: dict[str, bytes] = field(default_factory=dict)

    def add(self, effect: QueryResponse) -> None:
        if effect.ack:
            if effect.node not in self.acks:
                self.acks.append(effect.node)
        else:
            self.responses.setdefault(effect.node, effect.payload)


def cluster_report(me: str, live: list[str], acks: list[str], responses: dict[str, bytes]) -> dict[str, Any]:
    """Which members applied the change (or listed their keys), which refused, which were silent."""
    applied: list[str] = [me]
    failed: dict[str, str] = {}
    keys_by_member: dict[str, list[str]] = {}
    for node, payload in sorted(responses.items()):
        try:
            kind, body = serfcompat.decode_serf_message(payload)
        except DecodeError:
            failed[node] = "unreadable answer"
            continue
        if kind != serfcompat.SerfType.KEY_RESPONSE:
            failed[node] = "unexpected answer"
        elif body["Result"]:
            applied.append(node)
            if body["Keys"]:
                keys_by_member[node] = list(body["Keys"])
        else:
            failed[node] = body["Message"] or "refused"
    answered = set(responses) | set(acks)
    return {
        "members": len(live) + 1,
        "applied": applied,
        "failed": failed,
        "acked_without_answer": sorted(set(acks) - set(responses)),
        "no_answer": [n for n in live if n not in answered],
        "keys_by_member": keys_by_member,
    }
