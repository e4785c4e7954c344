"""``python -m bench NAME [--quick] --json FILE``: run one benchmark by name.

Owns: the registry of benchmarks (name -> module with ``main(argv) -> int``).
Modules are imported only when chosen, so one benchmark's dependencies never
stop another from running. Convention for every benchmark: ``--quick`` finishes
within 60 s on the project machine; the JSON holds the raw figures and a
``ratios`` object (metric -> ours / reference). Does not: measure anything itself.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

BENCHMARKS = {
    "membership": ("bench.membership", "ours vs serf: join, failure detection, idle CPU, RSS"),
    "dataplane": (
        "bench.dataplane",
        "FDB+neighbour bulk programming: ours vs iproute2 batch vs pyroute2",
    ),
    "propagation": (
        "bench.propagation",
        "endpoint create on one host -> FDB + neighbour entries on another (real agents)",
    ),
    "ipsec": ("bench.ipsec", "IPsec: program SAs for 100 peers; ESP vs plain throughput (VM)"),
    "dns": ("bench.dns", "endpoint create on one host -> its name resolving on another's gateway (real agents)"),
    "endpoints": ("bench.endpoints", "endpoint create time at 100/500/1,000 endpoints on one host"),
    "runtime": ("bench.runtime", "docker run / podman run through our plugins vs the stock networking"),
    "core": ("bench.core", "CPU per gossip message: our sans-IO core vs memberlist 0.2.2's Go code"),
    "churn": ("bench.churn", "N agents, one SIGKILLed and restarted every 2 s: CPU and bytes, ours vs serf"),
    "serf-conformance": ("bench.serfconformance", "serf's CLI on 3 serf + 3 ours vs 6 serf: leaves, events, queries, rtt"),
    "startup": ("bench.startup", "one agent's start-up CPU, wall and RSS against the floor of importing trio"),
    "soak": ("bench.soak", "6 agents, endpoint churn and restarts for --minutes M: RSS, CPU, fds do not grow"),
}


def usage() -> str:
    lines = ["usage: python -m bench NAME [--quick] [--json FILE] [options]", "", "benchmarks:"]
    lines += [f"  {name:<12} {about}" for name, (_, about) in BENCHMARKS.items()]
    lines += ["", "python -m bench NAME --help shows a benchmark's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name = args[0]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[name][0])
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
