"""Errors the gossip core raises.

Owns: ``DecodeError``, the one "remote" error (bad peer input, as in h11): a packet or
stream that fails to decode raises it before any state is touched.
Does not: cover local misuse (ValueError, as usual).
"""

from __future__ import annotations


class DecodeError(ValueError):
    """Bytes from a peer that are not a valid memberlist message (or fail to decrypt)."""
