"""Soak benchmark: 6 agents under endpoint churn and agent restarts; does anything grow?

``python -m bench soak [--minutes M] [--quick] [--json FILE] [--hosts H] [--seed S]
[--churn-every S] [--restart-every S]``

A namespace lab (``agent.lab.netlab``) of H hosts (default 6) runs real ``overlay-agent``
processes with state directories; host0 creates a network and every host gets a
"container" namespace. For M minutes (default 30; ``--quick``: 0.75 min, < 60 s in all)
the driver

* churns endpoints: every ``CHURN_EVERY`` s a random host creates an endpoint in its
  container, and once a host holds ``KEEP`` endpoints its oldest is removed first;
* restarts agents: every ``RESTART_EVERY`` s (quick: 15 s) one agent of hosts 2..H-1 in
  turn gets SIGTERM and is started again on the same state directory (hosts 0 and 1
  are never restarted: they are the long-lived agents whose growth is judged);
* (``--churn-every 0`` / ``--restart-every 0`` switch one load off, to tell which one a
  growth follows);
* samples every agent every ``SAMPLE_EVERY`` s (quick: 2 s): VmRSS, CPU seconds (utime + stime) and
  open file descriptors (/proc/PID/fd), read from /proc by pid (``agent.lab.procstat``).

Verdict, per long-lived agent: the samples after the warm-up (the first
``WARMUP_FRACTION`` of the run) are split into thirds; RSS (mean), open fds (max) and
CPU rate (CPU-s per s) of the last third are compared with the first third. "no growth"
when every agent stays within ``RSS_TOLERANCE`` (x first third + ``RSS_SLACK_KIB``),
``FD_SLACK`` fds and ``CPU_TOLERANCE`` (x first third + ``CPU_SLACK``); otherwise
"growth" with the offending figures. At the end every agent must list the same
endpoints (the churn converged), and any agent that exited on its own fails the run.

Figures (JSON): per host the samples (t, rss_kib, cpu_s, fds, pid), per long-lived
agent the first/last third figures and its verdict, the overall ``verdict``, churn and
restart counts; ``ratios.rss_last_vs_first`` (max over long-lived agents). Needs root.

Owns: the benchmark's steps and its report. Does not: build the lab
(``agent.lab.netlab``) or read /proc beyond ``agent.lab.procstat`` and the fd count.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.lab import procstat
from agent.lab.agentnode import ControlClient, agent_argv
from agent.lab.netlab import Lab, LabError, LabProc
from bench.summary import log, machine, write_json

SUBNET = "10.129.0.0/16"
NETWORK = "soak"
WAIT = 60.0
CHURN_EVERY = 1.0
"""Seconds between endpoint operations (create, and remove of the oldest beyond KEEP)."""
KEEP = 4
"""Endpoints a host holds before its oldest is removed."""
RESTART_EVERY = 60.0
SAMPLE_EVERY = 5.0
WARMUP_FRACTION = 0.2
RSS_TOLERANCE = 1.10
RSS_SLACK_KIB = 4096
FD_SLACK = 4
CPU_TOLERANCE = 1.5
CPU_SLACK = 0.01
"""CPU-s per s: a 1 % absolute allowance, because an idle agent's rate is tiny and noisy."""


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


@dataclass
class Sample:
    t: float
    pid: int
    rss_kib: int
    cpu_s: float
    fds: int


@dataclass
class Agent:
    index: int
    proc: LabProc | None = None
    samples: list[Sample] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)
    """Ids of this host's endpoints, oldest first."""
    restarts: int = 0


class Soak:
    def __init__(self, lab: Lab, seed: int) -> None:
        self.lab = lab
        self.rng = random.Random(seed)
        self.agents = [Agent(h.index) for h in lab.hosts]
        self.sockets = [str(lab.workdir / f"h{h.index}.sock") for h in lab.hosts]
        self.containers: list[str] = []
        self.creates = 0
        self.removes = 0
        self.failed_ops: list[str] = []
        self._ifname = 0

    def client(self, i: int) -> ControlClient:
        return ControlClient(self.sockets[i], timeout=30.0)

    def start(self, i: int, join: Sequence[int]) -> None:
        host = self.lab.hosts[i]
        argv = agent_argv(f"h{i}", host.addr, self.sockets[i], join=[self.lab.hosts[j].addr for j in join],
                          state_dir=str(self.lab.workdir / f"state-{i}"))
        a = self.agents[i]
        a.proc = self.lab.spawn(host, argv, name=f"agent-{i}-{a.restarts}")
        self._wait(i, lambda: bool(self.client(i).request("status").get("ready")), f"h{i} ready")

    def _wait(self, i: int, ok: Any, what: str) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            proc = self.agents[i].proc
            if proc is None or not proc.running():
                tail = proc.log_text()[-800:] if proc is not None else ""
                raise LabError(f"{what}: the agent exited: {tail}")
            try:
                if ok():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise LabError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def all_alive(self, i: int) -> bool:
        names = {f"h{a.index}" for a in self.agents}
        return {m.name for m in self.client(i).members() if m.status == "alive"} == names

    def start_all(self) -> None:
        self.start(0, [])
        for i in range(1, len(self.agents)):
            self.start(i, [0])
        for i in range(len(self.agents)):
            self._wait(i, lambda i=i: self.all_alive(i), f"h{i} to see every agent alive")
        self.containers = [f"{self.lab.prefix}-c{h.index}" for h in self.lab.hosts]
        # agent.lab.netlab has no public call for extra namespaces; these are removed with the lab.
        self.lab.add_namespaces(self.containers)
        self.client(0).request("network", args={"action": "create", "name": NETWORK, "subnets": [SUBNET]})

    # -- the load ---------------------------------------------------------------------------
    def churn(self) -> None:
        i = self.rng.randrange(len(self.agents))
        a = self.agents[i]
        try:
            if len(a.endpoints) >= KEEP:
                self.client(i).request("endpoint", args={"action": "rm", "ref": a.endpoints[0]})
                a.endpoints.pop(0)
                self.removes += 1
            self._ifname += 1
            ep = self.client(i).request("endpoint", args={
                "action": "create", "network": NETWORK, "netns": self.containers[i], "ifname": f"s{self._ifname}"})
            a.endpoints.append(str(ep["id"]))
            self.creates += 1
        except OSError as exc:  # recorded, not fatal: an agent may be restarting
            self.failed_ops.append(f"h{i}: {exc}")

    def restart(self, i: int) -> None:
        a = self.agents[i]
        assert a.proc is not None
        self.lab.stop(a.proc, signal.SIGTERM)
        a.restarts += 1
        self.start(i, [j for j in range(len(self.agents)) if j != i][:2])

    def sample(self, t: float) -> None:
        for a in self.agents:
            proc = a.proc
            if proc is None:
                continue
            if not proc.running():
                raise LabError(f"h{a.index} exited on its own: {proc.log_text()[-800:]}")
            rss, cpu, fds = procstat.rss_kib(proc.pid), procstat.cpu_seconds(proc.pid), fd_count(proc.pid)
            if rss is not None and cpu is not None and fds is not None:
                a.samples.append(Sample(round(t, 2), proc.pid, rss, cpu, fds))

    def converged(self) -> bool:
        want = {e for a in self.agents for e in a.endpoints}
        for a in self.agents:
            rows = self.client(a.index).request("endpoint", args={"action": "ls"})
            if {str(r["id"]) for r in rows} != want:
                return False
        return True


def judge(samples: list[Sample], duration: float) -> dict[str, Any]:
    """First vs last third (after warm-up) of one long-lived agent's samples."""
    start = duration * WARMUP_FRACTION
    kept = [s for s in samples if s.t >= start]
    third = (duration - start) / 3
    first = [s for s in kept if s.t < start + third]
    last = [s for s in kept if s.t >= start + 2 * third]
    if len(first) < 2 or len(last) < 2:
        return {"verdict": "too short", "samples": len(kept)}

    def cpu_rate(part: list[Sample]) -> float:
        return (part[-1].cpu_s - part[0].cpu_s) / max(1e-9, part[-1].t - part[0].t)

    fig = {
        "rss_kib_first": round(statistics.mean(s.rss_kib for s in first)),
        "rss_kib_last": round(statistics.mean(s.rss_kib for s in last)),
        "fds_first": max(s.fds for s in first),
        "fds_last": max(s.fds for s in last),
        "cpu_rate_first": round(cpu_rate(first), 4),
        "cpu_rate_last": round(cpu_rate(last), 4),
    }
    growth = []
    if fig["rss_kib_last"] > fig["rss_kib_first"] * RSS_TOLERANCE + RSS_SLACK_KIB:
        growth.append("rss")
    if fig["fds_last"] > fig["fds_first"] + FD_SLACK:
        growth.append("fds")
    if fig["cpu_rate_last"] > fig["cpu_rate_first"] * CPU_TOLERANCE + CPU_SLACK:
        growth.append("cpu")
    return {**fig, "growth": growth, "verdict": "growth" if growth else "no growth"}


def run_bench(hosts: int, minutes: float, restart_every: float, seed: int,
              sample_every: float = SAMPLE_EVERY, churn_every: float = CHURN_EVERY) -> dict[str, Any]:
    wall = time.monotonic()
    with Lab(hosts, prefix=f"olabsoak{os.getpid():x}") as lab:
        s = Soak(lab, seed)
        log(f"starting {hosts} agents ...")
        s.start_all()
        duration = minutes * 60
        log(f"soaking for {minutes:g} min: an endpoint operation every {churn_every:g} s, "
            f"a restart every {restart_every:g} s, samples every {sample_every:g} s ...")
        t0 = time.monotonic()
        # 0 switches a load off (the diagnostic runs vary one load at a time).
        next_churn = 0.0 if churn_every > 0 else math.inf
        next_restart = restart_every if restart_every > 0 else math.inf
        next_sample = 0.0
        restartable = list(range(2, hosts))
        turn = 0
        while (t := time.monotonic() - t0) < duration:
            if t >= next_sample:
                s.sample(t)
                next_sample += sample_every
            if t >= next_restart and restartable:
                s.restart(restartable[turn % len(restartable)])
                turn += 1
                next_restart += restart_every
            if t >= next_churn:
                s.churn()
                next_churn += churn_every
            time.sleep(max(0.0, min(next_sample, next_churn, next_restart) - (time.monotonic() - t0)))
        s.sample(time.monotonic() - t0)
        deadline = time.monotonic() + WAIT
        while not s.converged():
            if time.monotonic() > deadline:
                raise LabError("the agents do not agree on the endpoints after the churn")
            time.sleep(0.2)
        judged = {f"h{i}": judge(s.agents[i].samples, duration) for i in range(min(2, hosts))}
        verdicts = {j["verdict"] for j in judged.values()}
        verdict = "growth" if "growth" in verdicts else "too short" if "too short" in verdicts else "no growth"
        rss_ratio = max(j["rss_kib_last"] / j["rss_kib_first"] for j in judged.values()) \
            if verdict != "too short" else None
        return {
            "benchmark": "soak",
            "hosts": hosts,
            "minutes": minutes,
            "seed": seed,
            "churn_every_s": churn_every,
            "keep_per_host": KEEP,
            "restart_every_s": restart_every,
            "sample_every_s": sample_every,
            "creates": s.creates,
            "removes": s.removes,
            "restarts": {f"h{a.index}": a.restarts for a in s.agents},
            "failed_ops": s.failed_ops[:20],
            "failed_op_count": len(s.failed_ops),
            "long_lived": judged,
            "verdict": verdict,
            "ratios": {"rss_last_vs_first": None if rss_ratio is None else round(rss_ratio, 3)},
            "samples": {f"h{a.index}": [vars(x) for x in a.samples] for a in s.agents},
            "wall_s": round(time.monotonic() - wall, 1),
        }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="0.75 min, a restart every 15 s (< 60 s)")
    ap.add_argument("--minutes", type=float, help="how long to soak (default 30)")
    ap.add_argument("--json", metavar="FILE", help="write the raw figures here")
    ap.add_argument("--hosts", type=int, default=6, help="agents (default 6)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the churn (default 1)")
    ap.add_argument("--churn-every", type=float, default=CHURN_EVERY,
                    help=f"seconds between endpoint operations (default {CHURN_EVERY:g}; 0: no churn)")
    ap.add_argument("--restart-every", type=float,
                    help=f"seconds between agent restarts (default {RESTART_EVERY:g}, quick 15; 0: none)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench soak: needs root (network namespaces)", file=sys.stderr)
        return 1
    minutes = args.minutes if args.minutes is not None else (0.75 if args.quick else 30.0)
    restart_every = args.restart_every if args.restart_every is not None else \
        15.0 if args.quick else RESTART_EVERY
    if not 3 <= args.hosts <= 30 or not 0 < minutes <= 24 * 60 or args.churn_every < 0 or restart_every < 0:
        print("bench soak: --hosts must be 3-30 and --minutes in (0, 1440]", file=sys.stderr)
        return 2
    try:
        report = run_bench(args.hosts, minutes, restart_every, args.seed, 2.0 if args.quick else SAMPLE_EVERY,
                           args.churn_every)
    except (LabError, OSError, RuntimeError) as exc:
        print(f"bench soak: {exc}", file=sys.stderr)
        return 1
    report["quick"] = args.quick
    report["command"] = "python -m bench soak" + (" --quick" if args.quick else "") + \
        (f" --minutes {args.minutes:g}" if args.minutes is not None else "") + \
        (f" --churn-every {args.churn_every:g}" if args.churn_every != CHURN_EVERY else "") + \
        (f" --restart-every {args.restart_every:g}" if args.restart_every is not None else "")
    report["machine"] = machine()
    for name, j in report["long_lived"].items():
        if "rss_kib_first" in j:
            print(f"{name}: RSS {j['rss_kib_first'] / 1024:.1f} -> {j['rss_kib_last'] / 1024:.1f} MiB, "
                  f"fds {j['fds_first']} -> {j['fds_last']}, CPU {j['cpu_rate_first'] * 100:.2f} -> "
                  f"{j['cpu_rate_last'] * 100:.2f} % ({j['verdict']})")
    print(f"soak {report['minutes']:g} min, {report['hosts']} agents, {report['creates']} creates, "
          f"{report['removes']} removes, {sum(report['restarts'].values())} restarts: {report['verdict']}")
    if args.json:
        write_json(args.json, report)
    return 0 if report["verdict"] != "growth" else 3


if __name__ == "__main__":
    sys.exit(main())
