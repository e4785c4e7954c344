"""DNS benchmark: ``endpoint create`` on host A -> the name resolving on host B.

``python -m bench dns [--quick] [--json FILE] [--endpoints N]``

A namespace lab (``agent.lab.netlab``) of two hosts runs real ``overlay-agent`` processes
(the lab's own setup, shared with ``bench.propagation``). host0 creates a network; host1
gets one endpoint on it (so its gateway and DNS responder exist). Then N endpoints
(default 100) with fresh names are created one at a time on host0 through the control
socket. The observer is a UDP socket inside host1's container namespace that asks
host1's gateway for the new name (A) every ``POLL`` s until the answer holds the
endpoint's address: a sample is the time from sending the create request to that answer.
Afterwards each endpoint is removed on host0 and the same observer times the name's
NXDOMAIN on host1 (``vanish_*``).

Figures: ``p50_ms``, ``p99_ms`` (raw; create -> resolvable), ``vanish_p50_ms``,
``vanish_p99_ms``, min/mean/max, the samples; ``ratios.p99_vs_target`` = p99 / 500 ms
(the issue's target). ``--quick``: 30 endpoints (< 60 s). Needs root. The resolution of
a sample is the poll interval (``POLL``, 5 ms).

Owns: the benchmark's steps, the observer and the JSON report. Does not: import the
agent's runtime modules (it drives the installed programs like a user, through
``agent.lab``) or build the lab.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype

from agent.lab.netlab import Lab, LabError
from bench.propagation import Cluster, percentile
from bench.summary import log, machine, write_json

TARGET_P99_MS = 500.0
NETWORK = "dnsb"
SUBNET = "10.129.0.0/16"
GATEWAY = "10.129.0.1"
POLL = 0.005
WAIT = 60.0


class Observer:
    """Asks host1's gateway from inside host1's container, over and over."""

    def __init__(self, lab: Lab, netns: str) -> None:
        self.sock = lab.socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect((GATEWAY, 53))
        self.sock.settimeout(POLL)

    def ask(self, name: str) -> tuple[int, list[str]] | None:
        """(rcode, A addresses) of one query, or None when no reply came within ``POLL``."""
        q = dns.message.make_query(name, dns.rdatatype.A)
        try:
            self.sock.send(q.to_wire())
            deadline = time.monotonic() + POLL
            while True:
                self.sock.settimeout(max(0.0001, deadline - time.monotonic()))
                r = dns.message.from_wire(self.sock.recv(65535))
                if r.id == q.id:
                    return r.rcode(), [rd.to_text() for rrs in r.answer for rd in rrs]
        except (TimeoutError, OSError):
            return None

    def until(self, name: str, ok: Any) -> float:
        """Poll until ``ok(reply)``; the monotonic time of that reply. RuntimeError after WAIT."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            reply = self.ask(name)
            now = time.monotonic()
            if reply is not None and ok(reply):
                return now
            time.sleep(max(0.0, POLL - (time.monotonic() - now)))
        raise RuntimeError(f"{name}: no expected answer from {GATEWAY} within {WAIT:g} s")

    def close(self) -> None:
        self.sock.close()


def run_bench(endpoints: int) -> dict[str, Any]:
    started = time.monotonic()
    with Lab(2, prefix=f"olabdns{os.getpid():x}") as lab:
        c = Cluster(lab)
        log("starting 2 agents ...")
        c.start()
        c.make_containers()
        a, b = c.client(0), c.client(1)
        a.request("network", args={"action": "create", "name": NETWORK, "subnets": [SUBNET]})
        b.request("endpoint", args={"action": "create", "network": NETWORK, "netns": c.containers[1],
                                    "ifname": "eth0", "name": "probe"})
        obs = Observer(lab, c.containers[1])
        try:
            obs.until("probe", lambda r: r[0] == dns.rcode.NOERROR and r[1])
            log(f"host1's responder answers; timing {endpoints} creates on host0 -> the name on host1 ...")
            created: list[float] = []
            made: list[dict[str, Any]] = []
            for k in range(endpoints):
                name = f"n{k}"
                t0 = time.monotonic()
                ep = a.request("endpoint", args={"action": "create", "network": NETWORK, "netns": c.containers[0],
                                                 "ifname": f"e{k}", "name": name})
                at = obs.until(name, lambda r, ip=ep["ipv4"]: r[0] == dns.rcode.NOERROR and r[1] == [ip])
                created.append(at - t0)
                made.append(ep)
            log("timing removals on host0 -> NXDOMAIN on host1 ...")
            vanished: list[float] = []
            for ep in made:
                t0 = time.monotonic()
                a.request("endpoint", args={"action": "rm", "ref": ep["id"]})
                at = obs.until(ep["name"], lambda r: r[0] == dns.rcode.NXDOMAIN)
                vanished.append(at - t0)
            status = b.request("status")["dns"]
        finally:
            obs.close()
    ms = [s * 1000 for s in created]
    gone = [s * 1000 for s in vanished]
    return {
        "benchmark": "dns",
        "hosts": 2,
        "endpoints": endpoints,
        "observer": "UDP queries for the name (A) from host1's container to host1's gateway, every 5 ms",
        "measured": "endpoint create request sent on host0 -> host1's gateway answers the name with its address",
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "min_ms": round(min(ms), 2),
        "mean_ms": round(statistics.mean(ms), 2),
        "max_ms": round(max(ms), 2),
        "samples_ms": [round(x, 2) for x in ms],
        "vanish_p50_ms": round(percentile(gone, 50), 2),
        "vanish_p99_ms": round(percentile(gone, 99), 2),
        "vanish_samples_ms": [round(x, 2) for x in gone],
        "responder_counters": status,
        "ratios": {"p99_vs_target": round(percentile(ms, 99) / TARGET_P99_MS, 3)},
        "wall_s": round(time.monotonic() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench dns", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="30 endpoints (< 60 s)")
    ap.add_argument("--json", metavar="FILE", help="write the raw figures here")
    ap.add_argument("--endpoints", type=int, help="timed endpoint creates (default 100, quick 30)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench dns: needs root (network namespaces)", file=sys.stderr)
        return 1
    endpoints = args.endpoints or (30 if args.quick else 100)
    if not 1 <= endpoints <= 1000:
        print("bench dns: --endpoints must be 1-1000", file=sys.stderr)
        return 2
    try:
        report = run_bench(endpoints)
    except (LabError, OSError, RuntimeError) as exc:
        print(f"bench dns: {exc}", file=sys.stderr)
        return 1
    report["quick"] = args.quick
    report["command"] = "python -m bench dns" + (" --quick" if args.quick else "")
    report["machine"] = machine()
    print(f"dns over 2 hosts, {endpoints} endpoints: create -> resolvable p50 {report['p50_ms']} ms, "
          f"p99 {report['p99_ms']} ms (min {report['min_ms']}, max {report['max_ms']}); "
          f"remove -> NXDOMAIN p50 {report['vanish_p50_ms']} ms, p99 {report['vanish_p99_ms']} ms; "
          f"target p99 <= {TARGET_P99_MS:g} ms")
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
