"""Endpoint-create benchmark: the cost of one ``endpoint create`` as a host fills up.

``python -m bench endpoints [--quick] [--json FILE] [--endpoints N]``

One real ``overlay-agent`` (with a state dir) in a namespace lab host creates one
network and then N endpoints on it (default 1,000; the bridge's limit is 1,022), one at
a time through the control socket (what ``agentctl endpoint create`` sends), all in one
container namespace (interfaces ``e0``, ``e1``, ...). A sample is the wall time of one
create request: the row published, the veth pair made, addressed and attached to the
bridge, the state record saved; plus the agent's CPU seconds per create
(``/proc/PID/stat``), which a busy machine disturbs less. Figures per window of 100
creates ending at each checkpoint (100, 500, 1,000; quick: 100, 300, 500): mean, p50,
p90, max and CPU ms per create. At the end the kernel is read back: every endpoint's
host-side veth is attached to the network's bridge. ``ratios``: the window at the last
checkpoint vs the target (100 ms) and vs the first window (flat = 1).

Owns: the benchmark's steps and its JSON report. Does not: import the agent's runtime
modules (it drives the installed programs like a user, through ``agent.lab``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from agent.lab import procstat
from agent.lab.agentnode import ControlClient, agent_argv
from agent.lab.netlab import Lab, LabError
from bench.summary import log, machine, write_json

TARGET_MS = 100.0
WINDOW = 100
SUBNET = "10.128.0.0/16"
WAIT = 60.0


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _wait_ready(client: ControlClient, proc: Any) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        if not proc.running():
            raise LabError(f"the agent exited: {proc.log_text()[-500:]}")
        try:
            if client.request("status").get("ready"):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise LabError("timed out waiting for the agent to be ready")
        time.sleep(0.05)


def _attached(lab: Lab, host: Any, bridge: str) -> set[str]:
    r = lab.run(host, ["ip", "-j", "link", "show", "master", bridge], check=True)
    return {lk["ifname"] for lk in json.loads(r.stdout)}


def run_bench(checkpoints: list[int]) -> dict[str, Any]:
    started = time.monotonic()
    total = checkpoints[-1]
    with Lab(1, prefix=f"olabeps{os.getpid():x}") as lab:
        host = lab.hosts[0]
        sock = str(lab.workdir / "h0.sock")
        argv = agent_argv("h0", host.addr, sock, state_dir=str(lab.workdir / "state"))
        proc = lab.spawn(host, argv, name="agent")
        client = ControlClient(sock, timeout=60.0)
        _wait_ready(client, proc)
        container = f"{lab.prefix}-c"
        lab.add_namespaces([container])
        net = client.request("network", args={"action": "create", "name": "bench", "subnets": [SUBNET]})
        log(f"network {net['ID'][:12]} (VNI {net['VNI']}); timing {total} endpoint creates ...")
        wall: list[float] = []
        cpu: list[float] = []
        made: list[dict[str, Any]] = []
        for n in range(total):
            cpu0 = procstat.cpu_seconds(proc.pid) or 0.0
            t0 = time.monotonic()
            ep = client.request("endpoint", args={"action": "create", "network": "bench",
                                                  "netns": container, "ifname": f"e{n}"})
            wall.append(time.monotonic() - t0)
            cpu.append((procstat.cpu_seconds(proc.pid) or 0.0) - cpu0)
            made.append(ep)
            if (n + 1) in checkpoints:
                w = wall[-WINDOW:]
                log(f"  {n + 1:5d} endpoints: mean {statistics.mean(w) * 1000:.1f} ms, "
                    f"p90 {percentile(w, 90) * 1000:.1f} ms")
        attached = _attached(lab, host, f"ov-br-{net['VNI']}")
        missing = [e["host_ifname"] for e in made if e["host_ifname"] not in attached]
        if missing:
            raise RuntimeError(f"{len(missing)} endpoint interfaces are not on the bridge, e.g. {missing[:3]}")
        rss = procstat.rss_kib(proc.pid)
    windows: list[dict[str, Any]] = []
    for cp in checkpoints:
        w = [x * 1000 for x in wall[cp - WINDOW : cp]]
        c = [x * 1000 for x in cpu[cp - WINDOW : cp]]
        windows.append({
            "endpoints": cp,
            "creates": f"{cp - WINDOW + 1}-{cp}",
            "mean_ms": round(statistics.mean(w), 2),
            "p50_ms": round(percentile(w, 50), 2),
            "p90_ms": round(percentile(w, 90), 2),
            "max_ms": round(max(w), 2),
            "agent_cpu_ms": round(statistics.mean(c), 2),
        })
    first, last = windows[0], windows[-1]
    return {
        "benchmark": "endpoints",
        "endpoints": total,
        "measured": "wall time of one endpoint create request (row, veth pair in the container "
                    "namespace, attached to the bridge, state saved), per window of 100 creates",
        "target_ms": TARGET_MS,
        "windows": windows,
        "samples_ms": [round(x * 1000, 2) for x in wall],
        "agent_rss_kib_after": rss,
        "ratios": {
            "mean_vs_target": round(last["mean_ms"] / TARGET_MS, 3),
            "p90_vs_target": round(last["p90_ms"] / TARGET_MS, 3),
            "mean_last_vs_first": round(last["mean_ms"] / first["mean_ms"], 3),
            "cpu_last_vs_first": round(last["agent_cpu_ms"] / first["agent_cpu_ms"], 3)
            if first["agent_cpu_ms"] else None,
        },
        "wall_s": round(time.monotonic() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench endpoints", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="500 endpoints, checkpoints 100/300/500 (< 60 s)")
    ap.add_argument("--json", metavar="FILE", help="write the raw figures here")
    ap.add_argument("--endpoints", type=int, help="creates to time (default 1000, quick 500; at most 1022)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench endpoints: needs root (network namespaces)", file=sys.stderr)
        return 1
    total = args.endpoints or (500 if args.quick else 1000)
    if not WINDOW <= total <= 1022:
        print(f"bench endpoints: --endpoints must be {WINDOW}-1022 (a bridge's ports)", file=sys.stderr)
        return 2
    marks = [100, 300, 500] if args.quick and total == 500 else [100, 500, 1000]
    checkpoints = sorted({m for m in marks if m < total} | {total})
    try:
        report = run_bench(checkpoints)
    except (LabError, OSError, RuntimeError) as exc:
        print(f"bench endpoints: {exc}", file=sys.stderr)
        return 1
    report["quick"] = args.quick
    report["command"] = "python -m bench endpoints" + (" --quick" if args.quick else "")
    report["machine"] = machine()
    for w in report["windows"]:
        print(f"creates {w['creates']:>9}: mean {w['mean_ms']} ms, p50 {w['p50_ms']} ms, p90 {w['p90_ms']} ms, "
              f"max {w['max_ms']} ms, agent CPU {w['agent_cpu_ms']} ms per create")
    print(f"target <= {TARGET_MS:g} ms per create; last/first window mean "
          f"{report['ratios']['mean_last_vs_first']}")
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
