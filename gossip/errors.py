"""Errors the gossip core raises.

``DecodeError`` is the one "remote" error (bad peer input, as in h11): a packet or
stream that fails to decode raises it before any state is touched.
"""

from __future__ import annotations


class DecodeError(ValueError):
    """Bytes from a peer that are not a valid memberlist message (or fail to decrypt)."""
