"""The control API of a running agent: what ``agentctl`` talks to.

Owns: ``protocol`` (the versioned JSON-lines format), ``server`` (the Unix socket, who
may connect, dispatch to registered ops) and ``ops`` (the built-in ops: members,
status, join, leave, events, keys). Does not: implement the overlay's ops
(``agent.overlay.ops`` registers its own) or the client (``agent.ctl``).
"""
