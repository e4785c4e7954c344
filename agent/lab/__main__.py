"""``python -m agent.lab demo|cleanup``: the 3-host demo (``make demo``) and its cleanup.

``demo [--hosts N] [--keep-going]`` runs ``agent.lab.demo``; ``cleanup`` removes what
a killed demo left behind (namespaces and processes under the demo prefix;
``python -m agent.lab.cleanup [PREFIX]`` does the same for any lab, the tests' and
benchmarks' ``olab`` by default).

Owns: the command line and its exit status (0 done, 1 failed or not root, 2 bad
usage). Does not: run the demo's steps (``agent.lab.demo``) or remove anything itself
(``agent.lab.cleanup``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from agent.lab.cleanup import cleanup
from agent.lab.demo import PREFIX, demo


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.lab",
                                description="A 3-host overlay demo in network namespaces (make demo).")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="build a lab, start agents, create a network and endpoints, ping across, clean up")
    d.add_argument("--hosts", type=int, default=3, help="number of hosts (default 3)")
    d.add_argument("--keep-going", action="store_true", help="keep the lab up until Ctrl-C")
    sub.add_parser("cleanup", help="remove namespaces and processes of demos that were killed")
    ns = p.parse_args(argv)
    if ns.command == "cleanup":
        if os.geteuid() != 0:
            print("agent.lab: cleanup needs root", file=sys.stderr)
            return 1
        done = cleanup(PREFIX)
        print("\n".join(done) if done else "nothing to clean up")
        return 0
    if not 1 <= ns.hosts <= 50:
        p.error("--hosts must be between 1 and 50")
    return demo(ns.hosts, ns.keep_going)


if __name__ == "__main__":
    sys.exit(main())
