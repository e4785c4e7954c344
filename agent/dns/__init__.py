"""Names across hosts: a DNS responder per network on its anycast gateway address (docs/dns.md).

``resolver`` decides (pure: a question and the name index in, a reply or "forward" out),
``server`` is the trio shell (sockets, forwarding, limits), ``manager`` starts and stops
one responder per network as the network's gateway appears on this host.
"""
