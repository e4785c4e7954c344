"""The trio agent: ``overlay-agent`` and ``agentctl``, the shell around the sans-IO core.

Owns, by subpackage: ``membership`` (the driver task that owns the gossip core, its
sockets, key management), ``control`` (the control API), ``ctl`` (``agentctl``),
``overlay`` (tables, endpoints, the dataplane reconciler, IPsec), ``store`` (what is
kept on disk) and ``lab`` (the namespace lab of the demo, tests and benchmarks); at
the top: ``service`` (builds and runs an agent), ``runtime`` (the context ops and
extensions share), ``config`` and ``cli`` (configuration, the agent's command line),
``metrics``, ``events``, ``log``, ``sdnotify``, ``addresses`` and ``deferred``.
Does not: implement protocol logic (``gossip``) or kernel programming (``dataplane``);
never imports ``sim`` or ``bench`` (tests/unit/test_layering.py).
"""

__version__ = "0.2.0"
"""Kept equal to pyproject.toml's version (a test checks); read without importlib.metadata,
which would cost the agent ~1 MiB of RSS."""
