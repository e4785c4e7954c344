"""Container runtimes on top of the overlay: how real containers get their endpoints.

Owns: one subpackage per integration (``docker``: the libnetwork remote network and
IPAM plugin the agent serves itself; ``cni``: the ``overlay-cni`` plugin for podman,
containerd and Kubernetes, and the agent's ``cni`` control op it calls). Does not: change the tables or the kernel except
through ``agent.overlay.extension.Overlay``'s Python API.
"""
