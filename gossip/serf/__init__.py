"""Serf's layer on memberlist: tags, intents, the user-message envelope, Lamport clocks,
queries (passing them on, answering them) and cluster-wide key operations.

``layer.SerfLayer`` is the part the SWIM core calls for serf payloads; nothing here
imports the core (``gossip/swim.py``).
"""
