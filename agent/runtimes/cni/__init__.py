"""The CNI plugin ``overlay-cni``: podman, containerd, Kubernetes and cnitool put containers on overlays.

Owns, by module: ``spec`` (the CNI contract, pure: the environment and the stdin
configuration checked and bounded, versions, and the result / error JSON for CNI
0.3.x, 0.4.0, 1.0.0 and 1.1.0), ``plugin`` (the ``overlay-cni`` console script: a
short-lived, blocking client of the agent's control socket; no trio), ``offline``
(a DEL while the agent is down: the container's interface is deleted directly, so the
agent's start-up reconciliation drops its endpoint) and ``attachments`` (the agent's
side: the ``cni`` control op, container attachments as endpoints of
``agent.overlay.extension.Overlay``). Does not: build interfaces or publish rows
itself (``agent.overlay``).
"""
