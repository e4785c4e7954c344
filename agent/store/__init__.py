"""What the agent keeps on disk.

Owns: ``files`` (crash-safe atomic files and the locked state directory of JSON
records) and ``records`` (what the records mean: node id, incarnation, keyring file,
and the start-up decisions made from them). Does not: decide when something changes
(the core, ``agent.membership.keys``).
"""
