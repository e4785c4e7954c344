"""Container runtimes on top of the overlay: how real containers get their endpoints.

Owns: one subpackage per integration (``docker``: the libnetwork remote network and
IPAM plugin the agent serves itself). Does not: change the tables or the kernel except
through ``agent.overlay.extension.Overlay``'s Python API.
"""
