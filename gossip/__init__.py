"""Membership and replicated state over gossip, wire compatible with memberlist and serf.

The SWIM core is this package's flat modules (``swim.py`` and its parts, see its
header); three subpackages hold the rest, each importing only what is below it:

- ``wire/``: memberlist's wire format (message values, codec, LZW) and the
  encryption roll-out mode; imports the base values (``errors``, ``members``,
  ``effects``, ``config``, ``delegate``) and ``crypto``.
- ``serf/``: serf's layer (tags, intents, clocks, queries, key operations); imports
  ``wire`` and the base values, never the core.
- ``tables/``: the replicated network and endpoint tables, a ``Delegate`` of the core.

Nothing here does I/O or reads a clock: every entry point takes ``now``.
"""
