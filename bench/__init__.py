"""Benchmarks: ``python -m bench NAME`` (docs/benchmarks.md).

Owns: the benchmark programs and the serf reference peer (``bench.serfnode``).
Does not: build labs (``agent.lab``, which the demo and the tests use too); nothing
in ``agent``, ``gossip``, ``dataplane``, ``crypto`` or ``sim`` imports this package.
"""
