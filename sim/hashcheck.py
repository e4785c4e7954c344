"""Trace hashes of a fixed set of small scenarios: the before/after check of work that
must not change behaviour (speed, memory layout).

Owns: the scenario set (every scenario kind, join-based and converged starts, crashes
with restarts, leaves, partitions, loss, stalls, key rotation, memberlist mode, a
bounded table with reaping) and the comparison with a recorded file.
Does not: run anything but ``sim.run.execute``; hashes depend on the core's behaviour,
so a file recorded before a core change that is meant to change behaviour is stale.

    python -m sim.hashcheck > before.json            # on the old code
    python -m sim.hashcheck --against before.json    # on the new: exit 1 on a mismatch
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from sim.run import RunSpec, execute

SCENARIOS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("crash-1pct", ()),
    ("meta-update", ()),
    ("partition-heal", ()),
    ("partial-partition", ()),
    ("oneway-partition", ()),
    ("churn-1pct", ()),
    ("lossy", ()),
    ("stalls", ()),
    ("bootstrap:spread=2,crash:pct=2:at=10:host=1:restart=5", ()),
    ("converged,leave:count=2:at=5,crash:pct=1:at=8:restart=4", ()),
    ("converged,slow:pct=5:delay=0.2,dup:p=0.01,latency:median=0.001,crash:pct=1:at=5", ()),
    ("converged,keyrotate:at=5", ()),
    ("crash-1pct", (("compressed_packing", "false"), ("relay_at_once", "false"),
                    ("fail_probe_on_unreachable", "false"))),
    ("bootstrap:spread=2,churn:pct=2:every=4:down=6",
     (("max_members", "150"), ("reap_interval", "8"), ("reap_unheard_interval", "4"))),
    ("converged,crash:pct=3:at=3", (("reap_interval", "10"),)),
)


def hashes(nodes: int, duration: float, seeds: list[int], log: bool = True) -> dict[str, str]:
    out: dict[str, str] = {}
    for seed in seeds:
        for scenario, overrides in SCENARIOS:
            t0 = time.process_time()
            spec = RunSpec(nodes=nodes, duration=duration, scenario=scenario, seed=seed, overrides=overrides)
            key = " ".join([f"seed={seed}", scenario, *(f"{k}={v}" for k, v in overrides)])
            out[key] = execute(spec).result["trace_hash"]
            if log:
                print(f"{out[key]} {time.process_time() - t0:6.1f} s cpu  {key}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.hashcheck", description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--against", help="a file written by an earlier run: compare, exit 1 on a mismatch")
    args = ap.parse_args(argv)
    got = hashes(args.nodes, args.duration, [int(s) for s in args.seeds.split(",")])
    if args.against is None:
        json.dump(got, sys.stdout, indent=1)
        print()
        return 0
    with open(args.against) as f:
        want = json.load(f)
    bad = [k for k in got if want.get(k) != got[k]]
    for k in bad:
        print(f"MISMATCH {k}: {want.get(k)} -> {got[k]}", file=sys.stderr)
    print(f"{len(got) - len(bad)}/{len(got)} trace hashes as recorded", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
