"""``agentctl``: the operator's command line for a running agent.

Owns: ``main`` (entry point, parser, membership and key commands), ``network``
(network, endpoint and dataplane commands), ``client`` (the blocking socket client)
and ``output`` (tables, JSON). Does not: import trio or any agent state; it speaks
only ``agent.control.protocol``.
"""
