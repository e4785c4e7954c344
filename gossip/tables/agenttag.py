"""Which members run our agent: the reserved serf tag every one of our nodes advertises.

Owns: the tag name and value (``overlay-tables=1-2``: the protocol range), adding it to node meta, and the
test "does this member's meta carry it". ``Tables`` advertises the tag and answers
``Delegate.accepts_user_data`` with it, so ``Swim`` hands table bytes (piggybacked
broadcasts, push/pull user state, network-scoped user messages) only to our agents:
serf agents log every user message and user state they cannot parse ("Remote state
has bad type prefix", "unknown type").

Why a tag and not the Vsn bytes: memberlist checks Vsn ranges of every member, so
changing them could make serf refuse or mis-handle us; a tag is opaque to serf (it
only shows it in ``serf members``) and survives every path a member's meta travels
(alive messages, push/pull node states). docs/wire.md "Our agents and serf".
"""

from __future__ import annotations

import functools

from gossip.errors import DecodeError
from gossip.serf.payloads import decode_tags, encode_tags
from gossip.tables import protocol

AGENT_TAG = protocol.TAG
"""Reserved tag name: users may not set it (agent.config refuses it)."""
AGENT_TAG_VALUE = protocol.tag_value()
"""The range of the replicated-table protocol this node speaks (``gossip.tables.protocol``):
``1`` for release 0.1.0, ``1-2`` since."""
LEGACY_ROLE = protocol.LEGACY_ROLE
"""Agents from before the tag: recognised by the default ``role`` tag, so that a cluster
upgraded one node at a time keeps sending them table rows (docs/operations.md, Upgrade)."""
_NEEDLES = (AGENT_TAG.encode(), LEGACY_ROLE.encode())


def with_agent_tag(meta: bytes) -> bytes:
    """``meta`` (serf tags; empty means none) with the agent tag added.

    ValueError if the result exceeds the 512-byte meta limit or ``meta`` is not tags.
    """
    try:
        tags = decode_tags(meta) if meta else {}
    except DecodeError as exc:
        raise ValueError(f"node meta: {exc}") from None
    tags[AGENT_TAG] = AGENT_TAG_VALUE
    return encode_tags(tags)


@functools.lru_cache(maxsize=4096)
def has_agent_tag(meta: bytes) -> bool:
    """Whether node meta carries the agent tag (any value: a later protocol version is
    still ours), or is an agent from before it (``role=overlay-agent``). Memoised: asked
    for every packet sent, and members share meta bytes."""
    if not any(needle in meta for needle in _NEEDLES):
        return False  # serf agents: no decode
    try:
        tags = decode_tags(meta)
    except DecodeError:
        return False
    return AGENT_TAG in tags or tags.get("role") == LEGACY_ROLE
