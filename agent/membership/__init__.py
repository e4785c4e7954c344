"""The shell around the gossip core: driver task, sockets, key management, query collection."""
