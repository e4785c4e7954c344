"""The overlay layer: an extension of the membership agent (``agent.service.Extension``).

Owns: ``extension`` (``Overlay``: the replicated tables as gossip delegate, this
host's endpoints, the reconciler task fed by ``gossip.tables.view``), ``veths``
(endpoint veth pairs), ``ops`` (its control ops: network, endpoint,
dataplane), ``underlay`` (the underlay MTU) and ``ipsec`` (``IpsecAgent``: epoch keys
and XFRM for encrypted networks). Does not: define the tables (``gossip.tables``) or
program the kernel itself (``dataplane``).
"""
