"""Membership benchmark: our agents against serf agents, same N, same profile, same run.

``python -m bench membership [--quick] [--json FILE] [--sizes 5,20,50]``

For each N and each kind (serf first, then ours), in a fresh lab of N hosts
(one agent per namespace on <addr>:7946, LAN profile, warn-level logs):
1. join convergence: the seed starts; once it answers, the other N-1 start at
   once with ``--join seed``; time from that launch until every agent lists
   exactly the N names, all alive (the baseline's definition, so it includes
   process start-up; ``ready_s`` says when the last agent first answered);
2. idle: a window with no polling; utime+stime per agent (/proc/PID/stat) and
   VmRSS per agent at its end;
3. failure detection: SIGKILL of the last agent (never the seed); time until
   every other agent shows it dead/failed;
4. warm join, in a second lab of N hosts: all N agents start WITHOUT seeds; once
   every one answers and their start-up CPU has settled, the harness tells N-1 of
   them at once to join the first (serf: native RPC ``join``, what ``serf join``
   sends; ours: the control op behind ``agentctl join``) and times until every
   agent lists all N alive. This is the protocol's join, without process start-up.
   Before the joins, each agent's utime+stime once its start-up has settled is its
   ``start_cpu_s`` (start to ready, plus the settle wait alone: an upper bound),
   also held against an absolute target (``START_CPU_TARGET_S``, ``start_cpu`` in the JSON);
   ``start_cpu_ready_s`` is each agent's CPU when it first answered a poll (start to ready
   only: no idle time while the other agents start; tick resolution, 10 ms).
   The CPU all agents spent from the joins to convergence is ``join_warm_cluster_cpu_s``
   (polls answered included); the sweep interval used is ``warm_poll_s``.
Our agents' modules are byte-compiled first (as a package install does): the
machine sets PYTHONDONTWRITEBYTECODE, and compiling ~15k lines at every start
would be counted as start-up otherwise.
Polling is cheap on both sides (serf native RPC; our control socket, one JSON
line), at most one sweep per 100 ms (the warm join: ``warm_poll_interval``, 10-100 ms
by N), converged agents are not polled again;
times are poll completion times, i.e. upper bounds with one sweep's resolution.
``ratios`` = ours / serf per metric, the worst (largest) over the sizes run;
``ratios_by_n`` has each size. Method, figures and serf's own baseline:
docs/benchmarks.md ("Membership: our agent against serf", "The serf baseline").

Owns: the benchmark's steps, timing and JSON report. Does not: build labs
(``agent.lab.netlab``), start or poll agents (``bench.cluster``, ``bench.serfnode``)
or render the summary table (``bench.summary``).
"""

from __future__ import annotations

import argparse
import compileall
import concurrent.futures
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from agent.lab import procstat
from agent.lab.agentnode import PROJECT_ROOT, ControlClient
from agent.lab.netlab import Lab, LabError
from bench import summary
from bench.cluster import Cluster, ClusterTimeout, Node, all_alive, sees_down
from bench.serfnode import SerfRpc, serf_binary
from bench.summary import log

PROFILE = "lan"
SIZES = (5, 20, 50)
QUICK_SIZES = (5, 20)
KINDS = ("serf", "ours")
TARGETS = {
    "join_convergence": 1.0,
    "join_convergence_warm": 1.0,
    "failure_detection": 1.0,
    "idle_cpu": 1.5,
    "rss": 2.0,
}
METRIC_KEYS = {
    "join_convergence": "join_convergence_s",
    "join_convergence_warm": "join_warm_s",
    "failure_detection": "detect_all_s",
    "idle_cpu": "idle_cpu_pct_per_agent_mean",
    "rss": "rss_mib_median",
}
SECONDARY_KEYS = {
    "join_after_ready": "join_after_ready_s",
    "detect_median": "detect_median_s",
    "agents_cpu_to_converge": "agents_cpu_to_converge_s",
    "join_warm_median": "join_warm_median_s",
    "start_cpu": "start_cpu_s",
    "start_cpu_ready": "start_cpu_ready_s",
    "join_warm_cluster_cpu": "join_warm_cluster_cpu_s",
}
START_CPU_TARGET_S = 0.15
"""Start-to-ready CPU per agent (issue 17 item 7), an absolute target rather than a ratio."""
PACKAGES = ("agent", "gossip", "crypto", "dataplane")
SETTLE_MAX = 20.0
"""Warm join: how long to wait at most for the agents' start-up CPU to settle."""


def warm_poll_interval(n: int) -> float:
    """The warm join's sweep interval: 2 ms per agent, within 10-100 ms, the same for both kinds.

    At N = 5 both kinds converge in 15-100 ms (10 ms sweeps, docs/performance.md "Final
    figures for issue 17"), so 100 ms sweeps timed both at the second sweep (serf 0.103 s,
    ours 0.107 s: the poll order and cost, not the join) or, when one joiner learned the last
    member from gossip just after it, at the third (the 1.98x of one quick run). Finer sweeps
    cost polls, which the agents answer on the same 2 cores as the join; the interval grows
    with N so that the cluster is polled at most ~500 times a second up to N = 50, and stays
    at 100 ms from there (as for every other wait here), where the join takes seconds."""
    return min(0.1, max(0.01, 0.002 * n))


def _median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _start(cl: Cluster, kind: str, host_index: int, name: str, join: Sequence[str]) -> Node:
    host = cl.lab.hosts[host_index]
    if kind == "serf":
        return cl.start_serf(host, name, join=join)
    return cl.start_ours(host, name, join=join, extra=["--log-level", "warning"])


def run_one(kind: str, n: int, *, idle: float, timeout: float) -> dict[str, Any]:
    """One cluster of ``n`` agents of ``kind``: join, idle, kill; raw figures."""
    r: dict[str, Any] = {"kind": kind, "n": n, "profile": PROFILE}
    r["loadavg_at_start"] = os.getloadavg()[0]
    with Lab(n) as lab:
        cl = Cluster(lab, profile=PROFILE, serf_log_level="warn")
        try:
            names = [f"{kind[0]}{i:03d}" for i in range(n)]
            drops0 = procstat.softnet_drops()
            t_seed = time.monotonic()
            seed = _start(cl, kind, 0, names[0], [])
            cl.wait_ready([seed], timeout=30)
            r["seed_ready_s"] = time.monotonic() - t_seed
            t0 = time.monotonic()
            nodes = [seed] + [_start(cl, kind, i, names[i], [seed.bind]) for i in range(1, n)]
            r["all_launched_s"] = time.monotonic() - t0
            try:
                w = cl.wait_for(nodes, all_alive(names), timeout, t0=t0, what="join convergence")
            except ClusterTimeout as e:
                r["error"] = f"join did not converge: {e}"
                return r
            ts = sorted(w.times.values())
            r["join_convergence_s"] = ts[-1]
            r["join_first_s"] = ts[0]
            r["join_median_s"] = _median(ts)
            r["ready_s"] = max(w.answered.values())
            # Convergence once the last agent was up: the protocol's share of the join time,
            # without process start-up (Python imports cost ~0.2 CPU-s per agent).
            r["join_after_ready_s"] = max(0.0, r["join_convergence_s"] - r["ready_s"])
            r["join_polls"] = w.polls
            pids = [x.pid for x in nodes]
            r["agents_cpu_to_converge_s"] = sum(procstat.cpu_seconds(p) or 0.0 for p in pids)

            # Idle: no polling at all, just the agents' own gossip.
            before = [procstat.cpu_seconds(p) for p in pids]
            d_idle = procstat.softnet_drops()
            t_idle = time.monotonic()
            time.sleep(idle)
            after = [procstat.cpu_seconds(p) for p in pids]
            dt = time.monotonic() - t_idle
            per = [
                (b - a) / dt * 100.0
                for a, b in zip(before, after, strict=True)
                if a is not None and b is not None
            ]
            rss = [x for x in (procstat.rss_kib(p) for p in pids) if x is not None]
            r["idle_window_s"] = dt
            r["idle_cpu_pct_total"] = sum(per)
            r["idle_cpu_pct_per_agent_mean"] = sum(per) / len(per) if per else None
            r["idle_cpu_pct_per_agent_median"] = _median(per)
            r["rss_mib_median"] = (_median(rss) or 0) / 1024 if rss else None
            r["rss_mib_max"] = max(rss) / 1024 if rss else None
            r["rss_mib_total"] = sum(rss) / 1024
            r["softnet_drops_idle"] = _delta(d_idle, procstat.softnet_drops())

            # Failure detection: SIGKILL the last agent; its namespace stays up.
            victim, others = nodes[-1], nodes[:-1]
            t_kill = time.monotonic()
            cl.kill(victim)
            try:
                w = cl.wait_for(
                    others, sees_down(victim.name), timeout, t0=t_kill, what="failure detection"
                )
            except ClusterTimeout as e:
                r["error"] = f"failure not detected: {e}"
                return r
            ts = sorted(w.times.values())
            r["detect_first_s"] = ts[0]
            r["detect_median_s"] = _median(ts)
            r["detect_all_s"] = ts[-1]
            r["softnet_drops_run"] = _delta(drops0, procstat.softnet_drops())
            exited = [x.name for x in others if not x.proc.running()]
            if exited:
                r["error"] = f"agents exited during the run: {exited}"
        finally:
            cl.close()
    return r


def _settle(pids: Sequence[int], max_wait: float) -> float:
    """Wait until the agents together use less than 0.2 cores (start-up done); seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait:
        before = sum(procstat.cpu_seconds(p) or 0.0 for p in pids)
        time.sleep(0.5)
        if sum(procstat.cpu_seconds(p) or 0.0 for p in pids) - before < 0.1:
            break
    return time.monotonic() - t0


def _wait_ready_cpu(cl: Cluster, nodes: Sequence[Node], timeout: float) -> list[float]:
    """Until each agent answers a poll (a sweep every 20 ms); each one's CPU when it first did."""
    todo, cpu = list(nodes), []
    deadline = time.monotonic() + timeout
    while todo:
        for node in list(todo):
            if cl.try_view(node) is not None:
                c = procstat.cpu_seconds(node.pid)
                if c is not None:
                    cpu.append(c)
                todo.remove(node)
        if todo and (time.monotonic() > deadline or any(not x.proc.running() for x in todo)):
            cl.wait_ready(todo, timeout=0.0)  # raises ClusterTimeout, naming who and why
        time.sleep(0.02 if todo else 0.0)
    return cpu


def _join_one(cl: Cluster, node: Node, seed: Node) -> int:
    """Tell ``node`` to join ``seed``; how many seeds it contacted (raises OSError)."""
    if node.kind == "serf":
        rpc = SerfRpc(cl.lab, node.host, timeout=60.0)  # its own connection: polls use node.rpc
        try:
            return rpc.join([seed.bind])
        finally:
            rpc.close()
    assert node.control_socket is not None
    result = ControlClient(node.control_socket, timeout=60.0).request(
        "join", args={"addresses": [seed.bind]}
    )
    return int(result["contacted"])


def run_warm(kind: str, n: int, *, timeout: float) -> dict[str, Any]:
    """Warm join (see the module docstring): every agent up first, then N-1 joins at once."""
    r: dict[str, Any] = {}
    with Lab(n) as lab:
        cl = Cluster(lab, profile=PROFILE, serf_log_level="warn")
        try:
            names = [f"{kind[0]}{i:03d}" for i in range(n)]
            nodes = [_start(cl, kind, i, names[i], []) for i in range(n)]
            ready_cpu = _wait_ready_cpu(cl, nodes, timeout)
            r["start_cpu_ready_s"] = _median(ready_cpu)
            r["warm_settle_s"] = _settle([x.pid for x in nodes], SETTLE_MAX)
            # Start-to-ready CPU: nothing has joined yet, so what each agent spent so far is
            # its start-up plus the settle wait alone (tiny): an upper bound.
            cpu = [c for c in (procstat.cpu_seconds(x.pid) for x in nodes) if c is not None]
            r["start_cpu_s"] = _median(cpu)
            r["start_cpu_max_s"] = max(cpu) if cpu else None
            cpu_all = [procstat.cpu_seconds(x.pid) for x in nodes]
            seed, joiners = nodes[0], nodes[1:]
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(joiners)) as pool:
                t0 = time.monotonic()
                futures = [pool.submit(_join_one, cl, x, seed) for x in joiners]
                try:
                    w = cl.wait_for(nodes, all_alive(names), timeout, t0=t0, what="warm join",
                                    interval=warm_poll_interval(n))
                except ClusterTimeout as e:
                    r["error"] = f"warm join did not converge: {e}"
                    return r
                # The whole cluster's CPU for the join (polls answered included): on a
                # machine of few cores the warm join is bounded by it.
                after = [procstat.cpu_seconds(x.pid) for x in nodes]
                r["join_warm_cluster_cpu_s"] = sum(
                    b - a for a, b in zip(cpu_all, after, strict=True) if a is not None and b is not None
                )
                for x, f in zip(joiners, futures, strict=True):
                    try:
                        if f.result() < 1:
                            r["error"] = f"warm join: {x.name} contacted nobody"
                    except OSError as e:
                        r["error"] = f"warm join: {x.name}: {e}"
            ts = sorted(w.times.values())
            r["warm_poll_s"] = warm_poll_interval(n)
            r["join_warm_s"] = ts[-1]
            r["join_warm_median_s"] = _median(ts)
        finally:
            cl.close()
    return r


def precompile() -> None:
    """Byte-compile our packages (a package install does this; this machine's
    PYTHONDONTWRITEBYTECODE would otherwise make every agent compile its sources), and
    build the agent's dataclass code cache next to them (``agent.codecache``)."""
    for pkg in PACKAGES:
        compileall.compile_dir(str(PROJECT_ROOT / pkg), quiet=1)
    subprocess.run([sys.executable, "-m", "agent.codecache"], cwd=str(PROJECT_ROOT),
                   check=True, stdout=subprocess.DEVNULL)


def _delta(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else b - a


def _meets(ratio: float | None, target: float) -> bool:
    return ratio is not None and ratio <= target


def _fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


LABELS = {
    "join_convergence": ("join, cold start: all see all alive (s)", 2),
    "join_convergence_warm": ("join, agents up: all see all alive (s)", 2),
    "join_warm_median": ("join, agents up: median agent (s)", 2),
    "failure_detection": ("SIGKILL: all see it dead (s)", 2),
    "idle_cpu": ("idle CPU per agent (% core)", 2),
    "rss": ("RSS per agent (MiB)", 1),
    "join_after_ready": ("join after last agent up (s)", 2),
    "detect_median": ("SIGKILL: median agent (s)", 2),
    "agents_cpu_to_converge": ("CPU to converge, all (s)", 2),
    "start_cpu": ("start-up CPU per agent, median (s)", 3),
    "start_cpu_ready": ("CPU when first answering, median (s)", 3),
    "join_warm_cluster_cpu": ("join, agents up: CPU of all agents (s)", 2),
}


def _machine() -> dict[str, Any]:
    serf = serf_binary()
    version = None
    if serf:
        out = subprocess.run([serf, "version"], capture_output=True, text=True, check=False)
        version = out.stdout.splitlines()[0] if out.stdout else None
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "serf_version": version,
    }


def _start_cpu(summ: dict[str, Any]) -> dict[str, Any]:
    """Our start-up CPU (the worst median over the sizes) against its absolute target."""
    medians = [s["start_cpu"]["median"] for s in summ.get("ours", {}).values()
               if s["start_cpu"]["median"] is not None]
    worst = max(medians) if medians else None
    return {
        "ours_s": worst,
        "target_s": START_CPU_TARGET_S,
        "vs_target": worst / START_CPU_TARGET_S if worst is not None else None,
        "meets": worst is not None and worst <= START_CPU_TARGET_S,
    }


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so every open lab is torn down on the way out.
    raise SystemExit(128 + signum)


def _sizes(text: str | None, quick: bool) -> list[int]:
    if not text:
        return list(QUICK_SIZES if quick else SIZES)
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or any(not 2 <= n <= 250 for n in sizes):
        raise ValueError("cluster sizes must be between 2 and 250")
    return sizes


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench membership", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="N=5 and 20, 1 run, 5 s idle (< 60 s)")
    ap.add_argument("--json", metavar="FILE", help="write raw figures, summary and ratios here")
    ap.add_argument("--sizes", help="comma-separated cluster sizes (default 5,20,50)")
    ap.add_argument("--runs", type=int, help="runs per size and kind (default 3, quick 1)")
    ap.add_argument("--kinds", default="serf,ours", help="which agents to run (default serf,ours)")
    ap.add_argument("--idle", type=float, help="idle window in seconds (default 10, quick 5)")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-phase deadline (s)")
    args = ap.parse_args(list(argv))
    try:
        sizes = _sizes(args.sizes, args.quick)
    except ValueError as e:
        ap.error(f"--sizes: {e}")
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or any(k not in KINDS for k in kinds):
        ap.error(f"--kinds takes serf and/or ours, got {args.kinds!r}")
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    if runs < 1:
        ap.error("--runs must be at least 1")
    idle = args.idle if args.idle is not None else (5.0 if args.quick else 10.0)
    if os.geteuid() != 0:
        print("the membership benchmark needs root (network namespaces)", file=sys.stderr)
        return 1
    if "serf" in kinds and serf_binary() is None:
        print("serf is not installed (apt-get install serf)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _on_sigterm)
    if "ours" in kinds:
        precompile()

    started = time.monotonic()
    results: list[dict[str, Any]] = []
    # Kinds alternate within each size so both see the same machine conditions.
    for n in sizes:
        for run in range(1, runs + 1):
            for kind in kinds:
                log(f"{kind} N={n} run {run}/{runs} ...")
                try:
                    r = run_one(kind, n, idle=idle, timeout=args.timeout)
                except (LabError, OSError, ClusterTimeout, RuntimeError) as e:
                    r = {"kind": kind, "n": n, "profile": PROFILE, "error": str(e)}
                if "error" not in r:
                    try:
                        r.update(run_warm(kind, n, timeout=args.timeout))
                    except (LabError, OSError, ClusterTimeout, RuntimeError) as e:
                        r["error"] = f"warm join: {e}"
                r["run"] = run
                log(
                    f"  join {_fmt(r.get('join_convergence_s'))} s (agents up: "
                    f"{_fmt(r.get('join_warm_s'))} s), "
                    f"detect {_fmt(r.get('detect_all_s'))} s, "
                    f"idle {_fmt(r.get('idle_cpu_pct_per_agent_mean'))} %/agent, "
                    f"RSS {_fmt(r.get('rss_mib_median'), 1)} MiB, "
                    f"start-up CPU {_fmt(r.get('start_cpu_s'), 3)} s"
                    + (f"\n  ERROR {r['error']}" if "error" in r else "")
                )
                results.append(r)

    keys = {**METRIC_KEYS, **SECONDARY_KEYS}
    summ = summary.summarize(results, keys)
    by_n, worst = summary.ratios(summ, list(keys))
    print(f"membership benchmark: profile {PROFILE}, {runs} run(s) each; median (max)")
    print(summary.table(summ, by_n, LABELS, TARGETS))
    errors = [r for r in results if "error" in r]
    for r in errors:
        print(f"ERROR {r['kind']} N={r['n']} run {r['run']}: {r['error']}")
    doc = {
        "benchmark": "membership",
        "quick": args.quick,
        "profile": PROFILE,
        "sizes": sizes,
        "runs": runs,
        "idle_window_s": idle,
        "wall_s": time.monotonic() - started,
        "machine": _machine(),
        "metrics": keys,
        "results": results,
        "summary": summ,
        "ratios_by_n": by_n,
        "ratios": {m: worst[m] for m in METRIC_KEYS},
        "secondary_ratios": {m: worst[m] for m in SECONDARY_KEYS},
        "targets": TARGETS,
        "meets_targets": {m: _meets(worst[m], t) for m, t in TARGETS.items()},
        "start_cpu": _start_cpu(summ),
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    sc = doc["start_cpu"]
    print(f"start-up CPU per agent (ours, worst median): {_fmt(sc['ours_s'], 3)} s, "
          f"target {START_CPU_TARGET_S} s ({'met' if sc['meets'] else 'not met'})")
    print(f"wall time {doc['wall_s']:.1f} s")
    return 1 if errors else 0
