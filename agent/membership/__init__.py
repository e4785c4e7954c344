"""The shell around the gossip core: the one task that owns ``Swim``, and its sockets.

Owns: ``driver`` (the inbox, the deadline loop, effects in order; every other part of
the agent reaches the core through it), ``transport`` (UDP and TCP on one port),
``keys`` (gossip keyring operations and the encryption roll-out) and ``queries``
(waiting for the answers to serf queries we send). Does not: decide anything about
members (``gossip``) or serve the control API (``agent.control``).
"""
