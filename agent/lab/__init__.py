"""The network-namespace lab used by ``make demo``, the tests and the benchmarks.

Owns: ``netlab`` (namespaces, the underlay bridge, processes inside hosts,
partitions), ``netns`` (``setns``), ``procstat`` (/proc readers), ``cleanup`` (what
killed labs left behind: ``python -m agent.lab.cleanup [PREFIX]``), ``agentnode`` (our
agent as a lab process) and ``demo`` with ``__main__`` (``python -m agent.lab
demo|cleanup``). It lives in the product's package, not in ``bench``, so the demo does
not depend on the benchmarks. Does not: import the rest of ``agent`` (agents run as
the installed programs, a test checks) or know serf (``bench.serfnode``).
"""
