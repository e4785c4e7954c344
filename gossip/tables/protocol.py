"""Versions of the replicated-table protocol: what a node speaks, what a cluster may use.

Owns: this build's protocol range (``PROTOCOL_MIN``..``PROTOCOL_MAX``), how a node
advertises it (the value of the ``overlay-tables`` tag, ``gossip.tables.agenttag``),
reading a member's range back from its node meta, the feature table (which protocol
version introduced what), and the rule "a feature is used only when every agent
member can read it". Does not: decide who is a member (``Swim``) or carry rows
(``framing``, ``extrows``).

Like memberlist's Vsn bytes (min, max, current), but in a serf tag: serf checks the
Vsn ranges of every member and would refuse or mishandle changed ones, whereas a tag
is opaque to it. Release 0.1.0 advertised ``overlay-tables=1`` (protocol 1 only);
agents from before the tag (``role=overlay-agent``) speak protocol 1 as well.

Compatibility rules (docs/wire.md "Tables protocol versions"):
1. A version only adds: new message type bytes, new trailing fields of existing
   messages, new row kinds (>= ``extrows.FIRST_EXTENSION_KIND``). Readers ignore type
   bytes they do not know and trailing fields they do not read.
2. A row kind this build does not know is kept and relayed unchanged
   (``gossip.tables.extrows``), so a newer node's rows survive an older relay.
3. A feature whose meaning needs every node to understand it (a new row kind that
   changes forwarding, say) is used only when ``common_version`` of the members
   concerned reaches the feature's version.
4. ``PROTOCOL_MIN`` rises only in a major release, after a release that no longer
   needs the old version in any mixed cluster.
"""

from __future__ import annotations

from collections.abc import Iterable

from gossip.errors import DecodeError
from gossip.serf.payloads import decode_tags

PROTOCOL_MIN = 1
PROTOCOL_MAX = 2
"""1: release 0.1.0 (networks, members, claims, endpoints, IPsec key rows).
2: extension rows (unknown kinds kept and relayed), the advertised range, network
options (extension rows of kind 4, ``gossip.tables.netopts``)."""

FEATURES: dict[str, int] = {
    "extension-rows": 2,
    "network-options": 2,
}
"""Feature name -> the protocol version that introduced it."""

TAG = "overlay-tables"
"""The serf tag that marks our agents and carries the range (``agenttag.AGENT_TAG``)."""
LEGACY_ROLE = "overlay-agent"
MAX_VERSION = 255


def tag_value(low: int = PROTOCOL_MIN, high: int = PROTOCOL_MAX) -> str:
    """``"1"`` for a single version, else ``"LOW-HIGH"`` (what release 0.1.0 reads as ours)."""
    return str(low) if low == high else f"{low}-{high}"


def parse_range(value: str) -> tuple[int, int] | None:
    """The range a tag value advertises; None if it is not one (a node we cannot read)."""
    low_text, sep, high_text = value.partition("-")
    if not sep:
        high_text = low_text
    if not (low_text.isdigit() and high_text.isdigit()) or len(low_text) > 3 or len(high_text) > 3:
        return None
    low, high = int(low_text), int(high_text)
    if not 1 <= low <= high <= MAX_VERSION:
        return None
    return low, high


def member_range(meta: bytes) -> tuple[int, int] | None:
    """The protocol range an agent member advertises in its node meta; None for a member
    that is not one of our agents (serf), or whose tag we cannot read."""
    if TAG.encode() not in meta and LEGACY_ROLE.encode() not in meta:
        return None
    try:
        tags = decode_tags(meta)
    except DecodeError:
        return None
    value = tags.get(TAG)
    if value is None:
        return (1, 1) if tags.get("role") == LEGACY_ROLE else None
    return parse_range(value)


def common_version(metas: Iterable[bytes], own: tuple[int, int] = (PROTOCOL_MIN, PROTOCOL_MAX)) -> int:
    """The highest version every agent among ``metas`` (and this node) speaks; 0 when the
    ranges do not overlap (a member needs an upgrade before anything can be used)."""
    low, high = own
    for meta in metas:
        r = member_range(meta)
        if r is None:
            continue
        low, high = max(low, r[0]), min(high, r[1])
    return high if low <= high else 0


def usable(feature: str, version: int) -> bool:
    """Whether ``feature`` may be used by a set of members whose common version is ``version``."""
    return version >= FEATURES[feature]
