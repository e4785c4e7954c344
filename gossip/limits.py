"""The gossip core's fixed bounds on what a peer may send, named in one place.

Owns: the constants that bound remote input the core admits (names, meta,
incarnations, how much a datagram may inflate to, how many bytes the decode memo
keeps) and the one rule for remote member names (``valid_name``). The tunable
bound (how many members a table holds) is ``Config.max_members``.
Does not: decode (``wire/``), decide about members (``swim.py``) or log. Listed in
docs/operations.md ("Limits"); the agent's own limits are ``agent/limits.py``.
"""

from __future__ import annotations

INCARNATION_MAX = 0xFFFFFFFF
"""The largest incarnation: memberlist's incarnations are uint32 on the wire. Nothing
we send or keep exceeds it (refutes and meta changes saturate here), and at this
ceiling an alive wins over suspect/dead/left (``members.supersedes``), so a node
whose incarnation someone pushed to the top can still refute and restart (docs/design.md,
"Where we deliberately go beyond memberlist 0.2.2")."""

META_MAX = 512
"""Bytes of node meta (serf tags) a member may carry: memberlist's MetaMaxSize."""

NAME_MAX = 128
"""Characters in a remote member name: serf's limit when it validates node names."""

UDP_DECOMPRESS_MAX = 4 * 64 * 1024
"""How many bytes one compressed datagram may inflate to, in total (256 KiB). A datagram
carries at most 64 KiB, and no legitimate sender packs more than 4 raw bytes per byte
of it: memberlist and serf pack raw bytes up to the budget, ours at most 4x the budget
(``outbox._SQUEEZE_MAX``, with ``compressed_packing``). The LZW decoders stop as soon
as the output passes it (the 40 MiB ``codec.DECOMPRESS_LIMIT`` stays for streams)."""

DECODE_MEMO_BYTES = 8 * 1024 * 1024
"""Bytes of decoded messages the per-process UDP decode memo may keep (counted by the
datagram's decompressed size, which bounds what its messages hold)."""


def valid_name(name: str) -> bool:
    """The one rule for a remote member name: 1-128 characters, printable, no
    whitespace (serf accepts any string by default; with ``ValidateNodeNames`` it
    takes ``[A-Za-z0-9.-]{1,128}``, a subset of this)."""
    return 0 < len(name) <= NAME_MAX and name.isprintable() and " " not in name
