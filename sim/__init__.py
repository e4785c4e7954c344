"""Deterministic discrete-event simulator that runs the real gossip core at scale.

Entry point: ``python -m sim`` (see docs/simulation.md). Imports no trio.
"""
