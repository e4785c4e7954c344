"""Serf conformance: a mixed cluster (3 serf + 3 of ours) side by side with 6 serf agents.

``python -m bench serf-conformance [--quick] [--json FILE] [--leaves N]``

Issue 16's scenario as a serf user sees it, with serf's own CLI, once per cluster kind
(``pure``: six serf agents; ``mixed``: the three middle agents are ours). Six hosts
of a namespace lab, LAN profile, serf logging at debug (to count copies):
``edge`` = serf-0 (h0), ``middle`` = h1..h3 (ours-0..2 or serf-m0..2), ``far`` =
serf-1, serf-2 (h4, h5); the middle joins serf-0, the far agents join the middle.

Rows (each kind's column):

* ``leaves_left_everywhere``: of ``--leaves`` (default 20, quick 4) ``serf leave``s of a
  far serf agent (alternating, each restarted and re-converged before the next), how
  many were shown ``left`` by every other serf agent with no ``EventMemberFailed`` for it;
* ``events_arrived_2s`` / ``events_sent``, ``event_latency_max_s``: with the edge cut off
  from both far agents, 4 ``serf event``s from the edge, how many reached both far agents
  within 2 s (their logs' "Received event"), and the slowest arrival;
* ``event_copies_far``: in the full mesh (no cut), 4 more events: copies of each that a far
  agent received (debug "messageUserEventType" lines), mean per event and agent;
* ``serf_ping_responses`` / ``serf_ping_acks``: ``serf query _serf_ping`` from the edge;
* ``rtt_edge_middle_ms``: ``serf rtt serf-0 <middle-0>`` at the edge (serf's estimate);
  in ``mixed`` also ``rtt_ours_ms``, our estimate of the same pair (``agentctl rtt``),
  and ``rtt_ratio`` = ours / serf's.

``ratios``: ``leaves`` and ``events`` = mixed / pure (1.0 means conformant),
``copies`` = mixed / pure copies, ``rtt`` = our / serf's estimate. Needs root and serf.
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from agent.lab.agentnode import PROJECT_ROOT
from agent.lab.netlab import Host, Lab, LabError
from bench.cluster import Cluster, ClusterTimeout, Node, all_alive
from bench.serfnode import RPC_ADDR, serf_binary
from bench.summary import log, write_json

PROFILE = "lan"
PACKAGES = ("agent", "gossip", "crypto", "dataplane")
CONVERGE_TIMEOUT = 120.0
GONE_TIMEOUT = 20.0
EVENTS = 4
EVENT_WINDOW = 2.0


def _serf(lab: Lab, host: Host, *args: str, timeout: float = 30.0) -> tuple[int, str]:
    serf = serf_binary()
    assert serf is not None
    r = lab.run(host, [serf, args[0], f"-rpc-addr={RPC_ADDR[0]}:{RPC_ADDR[1]}", *args[1:]],
                timeout=timeout, check=False)
    return r.returncode, r.stdout + r.stderr


def _until(pred: Callable[[], bool], timeout: float, step: float = 0.05) -> float | None:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            return None
        time.sleep(step)
    return time.monotonic() - start


class Scenario:
    def __init__(self, lab: Lab, cl: Cluster, kind: str) -> None:
        self.lab, self.cl, self.kind = lab, cl, kind
        h = lab.hosts
        self.edge = cl.start_serf(h[0], "serf-0")
        cl.wait_ready([self.edge], timeout=15)
        if kind == "mixed":
            self.middle = [cl.start_ours(h[1 + i], f"ours-{i}", join=[self.edge.bind],
                                         extra=["--log-level", "warning"]) for i in range(3)]
        else:
            self.middle = [cl.start_serf(h[1 + i], f"serf-m{i}", join=[self.edge.bind]) for i in range(3)]
        cl.wait_ready(self.middle, timeout=30)
        self.far = [cl.start_serf(h[4 + i], f"serf-{1 + i}", join=[self.middle[i].bind]) for i in range(2)]
        self.converge()

    @property
    def every(self) -> list[Node]:
        return [self.edge, *self.middle, *self.far]

    @property
    def serfs(self) -> list[Node]:
        return [n for n in self.every if n.kind == "serf"]

    def converge(self) -> None:
        self.cl.wait_for(self.every, all_alive(n.name for n in self.every), CONVERGE_TIMEOUT,
                         what=f"{self.kind}: all 6 alive")

    def leaves(self, count: int) -> int:
        good = 0
        for i in range(count):
            leaver = self.far[i % 2]
            observers = [n for n in self.serfs if n is not leaver]
            failed_before = {n.name: n.proc.log_text().count(f"EventMemberFailed: {leaver.name}") for n in observers}
            rc, out = _serf(self.lab, leaver.host, "leave")
            if rc != 0:
                log(f"  leave {i}: serf leave failed: {out.strip()}")
            leaver.proc.popen.wait(timeout=30)
            if leaver.rpc is not None:
                leaver.rpc.close()

            def gone(obs: list[Node] = observers, name: str = leaver.name) -> bool:
                views = [self.cl.try_view(n) or {} for n in obs]
                return all(v.get(name) in ("left", "failed") for v in views)

            _until(gone, GONE_TIMEOUT, 0.1)
            time.sleep(0.5)
            views = [self.cl.try_view(n) or {} for n in observers]
            failed = any(n.proc.log_text().count(f"EventMemberFailed: {leaver.name}") > failed_before[n.name]
                         for n in observers)
            ok = all(v.get(leaver.name) == "left" for v in views) and not failed
            good += ok
            log(f"  {self.kind} leave {i + 1}/{count} of {leaver.name}: {'left everywhere' if ok else 'FAILED somewhere'}")
            index = self.far.index(leaver)
            self.far[index] = self.cl.start_serf(leaver.host, leaver.name, join=[self.middle[index].bind])
            self.converge()
        return good

    def _received(self, node: Node, name: str) -> bool:
        return f"Received event: user-event: {name}" in node.proc.log_text()

    def events_across(self, tag: str) -> tuple[int, float]:
        """Events from the edge with the edge cut off from the far agents."""
        self.lab.cut([self.edge.host], [n.host for n in self.far])
        arrived, slowest = 0, 0.0
        try:
            for k in range(EVENTS):
                name = f"{tag}-{k}"
                _serf(self.lab, self.edge.host, "event", name, "p")

                def everywhere(name: str = name) -> bool:
                    return all(self._received(n, name) for n in self.far)

                took = _until(everywhere, EVENT_WINDOW)
                if took is not None:
                    arrived += 1
                    slowest = round(max(slowest, took), 3)
                else:
                    _until(everywhere, 10.0)
        finally:
            self.lab.heal()
        return arrived, slowest

    def copies(self, tag: str) -> float:
        names = [f"{tag}-{k}" for k in range(EVENTS)]
        for name in names:
            _serf(self.lab, self.edge.host, "event", name, "p")
        time.sleep(5.0)  # every relay has run out by then (a few gossip rounds)
        counts = [n.proc.log_text().count(f"messageUserEventType: {name}") for n in self.far for name in names]
        return sum(counts) / len(counts)

    def serf_ping(self) -> tuple[int, int]:
        _, out = _serf(self.lab, self.edge.host, "query", "-timeout=3s", "_serf_ping")
        acks = re.search(r"Total Acks:\s+(\d+)", out)
        resp = re.search(r"Total Responses:\s+(\d+)", out)
        return (int(acks.group(1)) if acks else -1), (int(resp.group(1)) if resp else -1)

    def rtt(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        middle = self.middle[0]

        def serf_est() -> float | None:
            rc, text = _serf(self.lab, self.edge.host, "rtt", "serf-0", middle.name)
            m = re.search(r"rtt: ([0-9.]+) ms", text)
            return float(m.group(1)) if rc == 0 and m else None

        _until(lambda: serf_est() is not None, 30.0, 0.5)
        time.sleep(10.0)  # a few more probes each way to settle the estimates
        out["rtt_edge_middle_ms"] = serf_est()
        if middle.kind == "ours":
            rc, text, _ = self.cl.agentctl(middle, "rtt", "serf-0")
            m = re.search(r"rtt: ([0-9.]+) ms", text)
            out["rtt_ours_ms"] = float(m.group(1)) if rc == 0 and m else None
            if out["rtt_ours_ms"] and out["rtt_edge_middle_ms"]:
                out["rtt_ratio"] = round(out["rtt_ours_ms"] / out["rtt_edge_middle_ms"], 3)
        return out


def run_kind(kind: str, leaves: int) -> dict[str, Any]:
    r: dict[str, Any] = {"kind": kind, "loadavg_at_start": os.getloadavg()[0]}
    with Lab(6) as lab:
        cl = Cluster(lab, profile=PROFILE, serf_log_level="debug")
        try:
            sc = Scenario(lab, cl, kind)
            r["serf_ping_acks"], r["serf_ping_responses"] = sc.serf_ping()
            r.update(sc.rtt())
            r["events_sent"] = EVENTS
            r["events_arrived_2s"], r["event_latency_max_s"] = sc.events_across("across")
            sc.converge()
            r["event_copies_far"] = round(sc.copies("mesh"), 2)
            r["leaves"] = leaves
            r["leaves_left_everywhere"] = sc.leaves(leaves)
        except ClusterTimeout as e:
            r["error"] = str(e).splitlines()[0]
            log(f"serf-conformance: {kind}: {e}")
        finally:
            cl.close()
    return r


ROWS = [
    ("leaves_left_everywhere", "serf leave shown left by every serf agent"),
    ("events_arrived_2s", "events across the middle within 2 s (of 4)"),
    ("event_latency_max_s", "slowest of those (s)"),
    ("event_copies_far", "copies per event at a far agent (full mesh)"),
    ("serf_ping_acks", "serf query _serf_ping: acks"),
    ("serf_ping_responses", "serf query _serf_ping: responses"),
    ("rtt_edge_middle_ms", "serf rtt serf-0 <middle-0> (ms)"),
    ("rtt_ours_ms", "agentctl rtt serf-0 on ours-0 (ms)"),
]


def table(runs: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'':<46} {'pure serf':>12} {'mixed':>12}"]
    for key, text in ROWS:
        cells = []
        for kind in ("pure", "mixed"):
            v = runs.get(kind, {}).get(key)
            if key == "leaves_left_everywhere" and v is not None:
                v = f"{v}/{runs[kind]['leaves']}"
            cells.append("-" if v is None else str(v))
        lines.append(f"{text:<46} {cells[0]:>12} {cells[1]:>12}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench serf-conformance", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 leaves instead of 20")
    ap.add_argument("--json", metavar="FILE", help="write raw figures and ratios here")
    ap.add_argument("--leaves", type=int, help="serf leaves per kind (default 20, quick 4)")
    ap.add_argument("--kinds", default="pure,mixed", help="pure,mixed (default both)")
    args = ap.parse_args(argv)
    leaves = args.leaves if args.leaves is not None else (4 if args.quick else 20)
    kinds = [k for k in args.kinds.split(",") if k]
    if leaves < 0 or any(k not in ("pure", "mixed") for k in kinds):
        print("bench serf-conformance: --leaves >= 0, --kinds from pure,mixed", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench serf-conformance: cannot run: needs root (network namespaces)", file=sys.stderr)
        return 1
    if serf_binary() is None:
        print("bench serf-conformance: cannot run: serf is not installed (Debian package 'serf')",
              file=sys.stderr)
        return 1
    for pkg in PACKAGES:
        compileall.compile_dir(str(PROJECT_ROOT / pkg), quiet=1)
    runs: dict[str, dict[str, Any]] = {}
    try:
        for kind in kinds:
            log(f"serf-conformance: {kind} ...")
            runs[kind] = run_kind(kind, leaves)
            log(f"serf-conformance: {kind}: {runs[kind]}")
    except LabError as e:
        print(f"bench serf-conformance: lab failed: {e}", file=sys.stderr)
        return 1
    ratios: dict[str, float] = {}
    pure, mixed = runs.get("pure", {}), runs.get("mixed", {})
    for name, key in (("leaves", "leaves_left_everywhere"), ("events", "events_arrived_2s"),
                      ("copies", "event_copies_far")):
        if pure.get(key) and mixed.get(key) is not None:
            ratios[name] = round(mixed[key] / pure[key], 3)
    if mixed.get("rtt_ratio") is not None:
        ratios["rtt"] = mixed["rtt_ratio"]
    print(table(runs))
    if ratios:
        print("ratios (mixed / pure; rtt: ours / serf's):", ratios)
    if args.json:
        write_json(args.json, {"benchmark": "serf-conformance", "runs": runs, "ratios": ratios})
    return 0 if all("error" not in r for r in runs.values()) else 1
