"""Churn benchmark: N agents, one SIGKILLed and restarted every 2 s; ours vs serf.

``python -m bench churn [--quick] [--json FILE] [--size N] [--duration S] [--kinds serf,ours]``

For each kind (serf first, then ours, so both see the same machine), a fresh namespace
lab of N hosts (default 50; ``--quick``: 10 hosts, 20 s) runs N agents of that kind
(LAN profile, warnings only), all joined to the first and converged (every agent lists
all N alive). Then, for ``--duration`` seconds (default 60), every ``--every`` seconds
(default 2) one agent is SIGKILLed and at once started again with the same name,
address and state directory, joining the first agent; the victims are taken in turn
from hosts 1 .. N - N//3 (a third of the agents, the *survivors*, are never killed).
Nobody polls the agents during the churn.

Figures per kind:

* ``cpu_pct_per_survivor``: utime + stime the survivors spent in the churn window,
  percent of one core per agent (mean): what churn costs the agents that stay;
  ``cpu_pct_per_agent_all``: the same over every agent process of the window,
  the restarted processes' start-up included, divided by N;
* ``bytes_per_agent_s``: bytes the hosts sent during the window (the hub bridge
  ports' receive counters, one read at each end), per agent per second;
* ``views_right_10s``: 10 s after the churn stopped, how many agents list exactly the
  N names, all alive (one sweep, no polling before); ``converged_s``: when every agent
  does, seconds after the churn stopped (the end of that sweep if all were right then,
  else polling the others until ``--timeout``; a sweep of 50 agents takes seconds on a
  loaded machine, so this is an upper bound).

``ratios``: ``churn_cpu`` = ours / serf ``cpu_pct_per_survivor`` (target <= 2.0),
``churn_cpu_all``, ``churn_bytes``. Needs root, serf (Debian ``serf``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from agent.lab import procstat
from agent.lab.netlab import Lab, LabError
from bench.cluster import Cluster, ClusterTimeout, Node, all_alive
from bench.membership import precompile
from bench.serfnode import serf_binary
from bench.summary import log, machine, write_json

PROFILE = "lan"


def _start(cl: Cluster, kind: str, index: int, name: str, join: Sequence[str]) -> Node:
    host = cl.lab.hosts[index]
    if kind == "serf":
        return cl.start_serf(host, name, join=join)
    return cl.start_ours(host, name, join=join, extra=["--log-level", "warning"])


def _hub_rx_bytes(lab: Lab) -> dict[str, int]:
    """Bytes each host sent: the receive counter of its port on the hub bridge."""
    r = lab.run(lab.hub, ["ip", "-s", "-j", "link", "show"])
    out: dict[str, int] = {}
    for link in json.loads(r.stdout):
        stats = link.get("stats64") or link.get("stats") or {}
        rx = stats.get("rx", {})
        if isinstance(rx, dict) and "bytes" in rx:
            out[link["ifname"]] = int(rx["bytes"])
    return out


def _cpu(pids: Sequence[int]) -> dict[int, float]:
    return {p: c for p in pids if (c := procstat.cpu_seconds(p)) is not None}


def run_kind(kind: str, n: int, duration: float, every: float, timeout: float) -> dict[str, Any]:
    r: dict[str, Any] = {"kind": kind, "n": n, "loadavg_at_start": os.getloadavg()[0]}
    with Lab(n) as lab:
        cl = Cluster(lab, profile=PROFILE, serf_log_level="warn")
        try:
            names = [f"{kind[0]}{i:03d}" for i in range(n)]
            seed = _start(cl, kind, 0, names[0], [])
            cl.wait_ready([seed], timeout=30)
            nodes = [seed] + [_start(cl, kind, i, names[i], [seed.bind]) for i in range(1, n)]
            try:
                cl.wait_for(nodes, all_alive(names), timeout, what="join convergence")
            except ClusterTimeout as e:
                r["error"] = f"join did not converge: {e}"
                return r
            time.sleep(2.0)  # the join's retransmissions fade
            victims = list(range(1, n - n // 3))
            survivors = [i for i in range(n) if i not in victims]
            current = {i: nodes[i] for i in range(n)}
            cpu0 = _cpu([x.pid for x in current.values()])
            rx0 = _hub_rx_bytes(lab)
            spent_by_killed = 0.0
            kills = 0
            t0 = time.monotonic()
            next_at = t0
            while True:
                now = time.monotonic()
                if now - t0 >= duration:
                    break
                if now < next_at:
                    time.sleep(next_at - now)
                    continue
                i = victims[kills % len(victims)]
                old = current[i]
                last = procstat.cpu_seconds(old.pid)
                cl.kill(old)
                if last is not None:
                    spent_by_killed += last - cpu0.get(old.pid, 0.0)
                current[i] = _start(cl, kind, i, names[i], [seed.bind])
                kills += 1
                next_at += every
            window = time.monotonic() - t0
            cpu1 = _cpu([x.pid for x in current.values()])
            rx1 = _hub_rx_bytes(lab)
            t_stop = time.monotonic()

            surv_cpu = [
                cpu1[current[i].pid] - cpu0[current[i].pid]
                for i in survivors
                if current[i].pid in cpu1 and current[i].pid in cpu0
            ]
            all_cpu = spent_by_killed + sum(c - cpu0.get(p, 0.0) for p, c in cpu1.items())
            sent = sum(rx1.get(h.port, 0) - rx0.get(h.port, 0) for h in lab.hosts)
            r.update(
                window_s=round(window, 2),
                kills=kills,
                survivors=len(survivors),
                cpu_pct_per_survivor=round(sum(surv_cpu) / len(surv_cpu) / window * 100, 2),
                cpu_pct_per_agent_all=round(all_cpu / n / window * 100, 2),
                bytes_per_agent_s=round(sent / n / window, 1),
            )

            time.sleep(max(0.0, 10.0 - (time.monotonic() - t_stop)))
            views = {x.name: cl.try_view(x) for x in current.values()}
            want = set(names)
            right = [
                name
                for name, v in views.items()
                if v is not None and {m for m, s in v.items() if s == "alive"} == want
            ]
            r["views_right_10s"] = len(right)
            r["views_wrong_10s"] = {
                name: (
                    None
                    if v is None
                    else {m: s for m, s in v.items() if s != "alive" or m not in want}
                )
                for name, v in views.items()
                if name not in right
            }
            sweep_end = time.monotonic() - t_stop
            wrong = [x for x in current.values() if x.name not in right]
            if not wrong:
                r["converged_s"] = round(sweep_end, 2)  # already at the 10 s sweep
            else:
                try:
                    w = cl.wait_for(
                        wrong, all_alive(names), timeout, t0=t_stop, what="convergence after churn"
                    )
                    r["converged_s"] = round(max(w.times.values()), 2)
                except ClusterTimeout as e:
                    r["error"] = f"no convergence {timeout:.0f} s after the churn: {e}"
            exited = [x.name for x in current.values() if not x.proc.running()]
            if exited:
                r["error"] = f"agents exited: {exited}"
        finally:
            cl.close()
    return r


def table(report: dict[str, Any]) -> str:
    runs = report["runs"]
    rows = [
        ("CPU % per survivor", "cpu_pct_per_survivor"),
        ("CPU % per agent, restarts incl.", "cpu_pct_per_agent_all"),
        ("bytes sent per agent per s", "bytes_per_agent_s"),
        ("views right 10 s after", "views_right_10s"),
        ("converged after churn, s", "converged_s"),
    ]
    kinds = list(runs)
    out = [
        f"churn: N={report['n']}, one agent SIGKILLed + restarted every {report['every_s']} s "
        f"for {report['duration_s']} s",
        f"{'':34}" + "".join(f"{k:>12}" for k in kinds),
    ]
    for label, key in rows:
        out.append(f"{label:34}" + "".join(f"{runs[k].get(key, '-')!s:>12}" for k in kinds))
    out.append("ratios (ours/serf): " + ", ".join(f"{k} {v}" for k, v in report["ratios"].items()))
    for k in kinds:
        if runs[k].get("error"):
            out.append(f"{k}: {runs[k]['error'][:600]}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench churn", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 agents, 20 s of churn")
    ap.add_argument("--json", metavar="FILE", help="write raw figures and ratios here")
    ap.add_argument("--size", type=int, help="agents (default 50, quick 10)")
    ap.add_argument("--duration", type=float, help="seconds of churn (default 60, quick 20)")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between kills (default 2)")
    ap.add_argument("--kinds", default="serf,ours", help="serf,ours (default both)")
    ap.add_argument("--timeout", type=float, default=90.0, help="convergence deadline, s")
    args = ap.parse_args(argv)
    n = args.size or (10 if args.quick else 50)
    duration = args.duration or (20.0 if args.quick else 60.0)
    kinds = [k for k in args.kinds.split(",") if k]
    if n < 4 or any(k not in ("serf", "ours") for k in kinds) or args.every <= 0:
        print("bench churn: --size >= 4, --kinds from serf,ours, --every > 0", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench churn: cannot run: needs root (network namespaces)", file=sys.stderr)
        return 1
    if "serf" in kinds and serf_binary() is None:
        print(
            "bench churn: cannot run: serf is not installed (Debian package 'serf')",
            file=sys.stderr,
        )
        return 1
    precompile()  # as a package install does (see bench/membership.py)
    runs: dict[str, Any] = {}
    try:
        for kind in kinds:
            log(f"churn: {kind}, N={n}, {duration:.0f} s ...")
            runs[kind] = run_kind(kind, n, duration, args.every, args.timeout)
            log(
                f"churn: {kind}: { ({k: v for k, v in runs[kind].items() if k != 'views_wrong_10s'}) }"
            )
    except LabError as e:
        print(f"bench churn: lab failed: {e}", file=sys.stderr)
        return 1
    ratios: dict[str, float] = {}
    if "serf" in runs and "ours" in runs:
        for name, key in (
            ("churn_cpu", "cpu_pct_per_survivor"),
            ("churn_cpu_all", "cpu_pct_per_agent_all"),
            ("churn_bytes", "bytes_per_agent_s"),
        ):
            a, b = runs["ours"].get(key), runs["serf"].get(key)
            if a is not None and b:
                ratios[name] = round(a / b, 2)
    report: dict[str, Any] = {
        "benchmark": "churn",
        "n": n,
        "duration_s": duration,
        "every_s": args.every,
        "runs": runs,
        "ratios": ratios,
        "targets": {"churn_cpu": 2.0},
        "quick": args.quick,
        "command": "python -m bench churn" + (" --quick" if args.quick else ""),
        "machine": machine(),
    }
    print(table(report))
    if args.json:
        write_json(args.json, report)
    return 0 if not any(r.get("error") for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
