"""The replicated network/endpoint tables on the core's delegate seam: rows, store, scoped sync, IPAM, conflicts."""
