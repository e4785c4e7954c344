"""Start-up benchmark: one agent at a time against the floor of a trio program.

``python -m bench startup [--quick] [--runs R] [--json FILE]``

Alternating, R times each (5 with ``--quick``, default 15), one process at a time on an
otherwise idle agent (loopback, no seeds, no lab), each a fresh interpreter:

- ``interpreter``: ``python -c pass`` (the interpreter and ``site``);
- ``trio``: ``python -c "import trio"`` as any program would import it;
- ``trio_as_agent``: trio imported the way ``agent.__main__`` does it (cyclic GC off,
  ``agent.deferred``'s placeholders, ``glibc_sonames``): the floor of a trio agent;
- ``agent``: ``overlay-agent`` on 127.0.0.1 with a control socket, until the socket
  answers: CPU then (every thread's ``/proc/PID/task/*/schedstat``, ns resolution),
  wall time from the launch, and CPU and VmRSS 1.5 s later (start-up's tail: the
  reconcilers' first passes, ``gc.freeze``, ``malloc_trim``).

Each agent runs in a scratch network namespace of its own (``bench-startup-PID-I``, loopback
only, deleted after the run) with its control socket and ``--state-dir`` inside a
temporary work directory that is removed at the end, and without the caller's
``STATE_DIRECTORY``/``RUNTIME_DIRECTORY``: it never sees the host's devices, nftables or
XFRM state, nor ``/run`` or ``/var/lib`` (its reconcilers sweep leftovers of ours at start).

The three floors are measured as CPU (utime+stime of the exited child) and peak RSS
(its own ``VmHWM``, printed at its end). ``ratios``: ``start_cpu_vs_target`` (median agent CPU at ready / 0.15 s,
issue 17 item 7) and ``start_cpu_vs_floor`` (/ ``trio_as_agent``); ``above_floor_s`` is
what our own modules and set-up add. The agents' modules are byte-compiled first and the
code cache built (``bench.membership.precompile``), as an install does. Needs root (the
dataplane reconcilers read nftables and XFRM at start).

Owns: these measurements and their JSON. Does not: start labs or clusters (the
concurrent start of N agents is ``bench membership``'s ``start_cpu_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from agent.lab.agentnode import PROJECT_ROOT, agent_program
from agent.lab.netns import netns_path, preexec_setns
from bench.summary import log

START_CPU_TARGET_S = 0.15
TRIO_AS_AGENT = (
    "import gc; gc.disable()\n"
    "from agent import deferred\n"
    "deferred.defer(*deferred.AGENT_DEFERRED)\n"
    "with deferred.glibc_sonames():\n"
    "    import trio\n"
)
FLOORS = {
    "interpreter": "pass",
    "trio": "import trio",
    "trio_as_agent": TRIO_AS_AGENT,
}


_PEAK = "\nprint(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"
"""Appended to each floor's code: its own peak RSS (the child's ``ru_maxrss`` would be the
parent's, whose memory the child shares until it executes Python)."""


def _child_cost(code: str) -> tuple[float, float]:
    """CPU seconds and peak RSS (MiB) of ``python -c code`` run to its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", code + _PEAK], capture_output=True, text=True,
                          check=False, timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"python -c {code!r} failed: {done.stderr.strip()}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return cpu, int(done.stdout.split()[-1]) / 1024


def _task_cpu(pid: int) -> float:
    """Every thread's run time so far (ns resolution), seconds."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total / 1e9


def _rss_mib(pid: int) -> float | None:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def _answers(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2.0)
            s.connect(path)
            s.sendall(b'{"v":1,"op":"members"}\n')
            return bool(s.recv(65536))
    except OSError:
        return False


def _scratch_netns(name: str) -> int:
    """Create network namespace ``name`` with loopback up; an fd open on it (the caller
    closes it and deletes the namespace)."""
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        return os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        raise


def _agent_env() -> dict[str, str]:
    """The caller's environment without systemd's directories (the agent would put its
    state or sockets there)."""
    return {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY")}


def _agent_once(workdir: str, index: int, timeout: float) -> dict[str, float | None]:
    sock = os.path.join(workdir, f"a{index}.sock")
    state = os.path.join(workdir, f"state{index}")
    argv = [*agent_program(), "--node", f"startup{index}", "--bind", "127.0.0.1:7946",
            "--control-socket", sock, "--state-dir", state, "--log-level", "warning"]
    ns = f"bench-startup-{os.getpid()}-{index}"
    nsfd = _scratch_netns(ns)
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL, env=_agent_env(),
                                preexec_fn=preexec_setns(nsfd))
        try:
            while not _answers(sock):
                if proc.poll() is not None:
                    raise RuntimeError(f"the agent exited with {proc.returncode} before answering")
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"the agent did not answer within {timeout} s")
                time.sleep(0.002)
            wall = time.monotonic() - t0
            ready = _task_cpu(proc.pid)
            time.sleep(1.5)
            return {"ready_wall_s": wall, "ready_cpu_s": ready, "cpu_1_5s_s": _task_cpu(proc.pid),
                    "rss_mib": _rss_mib(proc.pid)}
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if os.path.exists(sock):
                os.unlink(sock)
    finally:
        os.close(nsfd)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def _median(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench startup", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 runs of each (< 30 s)")
    ap.add_argument("--runs", type=int, help="runs of each (default 15, quick 5)")
    ap.add_argument("--json", metavar="FILE", help="write raw figures, medians and ratios here")
    ap.add_argument("--timeout", type=float, default=30.0, help="per agent start (s)")
    args = ap.parse_args(list(argv))
    runs = args.runs if args.runs is not None else (5 if args.quick else 15)
    if runs < 1:
        ap.error("--runs must be at least 1")
    if os.geteuid() != 0:
        print("the startup benchmark needs root (the agent's reconcilers read nftables/XFRM)", file=sys.stderr)
        return 1
    from bench.membership import precompile

    precompile()
    started = time.monotonic()
    raw: dict[str, list[dict[str, float | None]]] = {name: [] for name in (*FLOORS, "agent")}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as workdir:
        for i in range(runs):  # alternating, so all see the same machine conditions
            for name, code in FLOORS.items():
                cpu, peak = _child_cost(code)
                raw[name].append({"cpu_s": cpu, "peak_rss_mib": peak})
            raw["agent"].append(_agent_once(workdir, i, args.timeout))
            loads.append(os.getloadavg()[0])
            log(f"run {i + 1}/{runs}: agent ready {raw['agent'][-1]['ready_cpu_s']:.3f} CPU-s")
    med = {name: {k: _median([r[k] for r in rows]) for k in rows[0]} for name, rows in raw.items()}
    ours = med["agent"]["ready_cpu_s"]
    floor = med["trio_as_agent"]["cpu_s"]
    assert ours is not None and floor is not None
    doc: dict[str, Any] = {
        "benchmark": "startup",
        "quick": args.quick,
        "runs": runs,
        "loadavg_min_max": [min(loads), max(loads)],
        "wall_s": time.monotonic() - started,
        "python": sys.version.split()[0],
        "project": str(PROJECT_ROOT),
        "results": raw,
        "medians": med,
        "above_floor_s": ours - floor,
        "ratios": {"start_cpu_vs_target": ours / START_CPU_TARGET_S, "start_cpu_vs_floor": ours / floor},
        "targets": {"start_cpu_vs_target": 1.0},
    }
    doc["meets_targets"] = {"start_cpu_vs_target": doc["ratios"]["start_cpu_vs_target"] <= 1.0}
    print(f"startup benchmark: {runs} runs each, medians; load average {min(loads):.1f}-{max(loads):.1f}")
    for name in FLOORS:
        print(f"  {name:<14} CPU {med[name]['cpu_s']:.3f} s   peak RSS {med[name]['peak_rss_mib']:.1f} MiB")
    a = med["agent"]
    print(f"  {'agent':<14} CPU {ours:.3f} s at ready ({a['ready_wall_s']:.3f} s wall), "
          f"{a['cpu_1_5s_s']:.3f} s 1.5 s later, RSS {a['rss_mib']:.1f} MiB")
    print(f"  ours above the floor (trio_as_agent): {ours - floor:.3f} CPU-s; "
          f"target {START_CPU_TARGET_S} s {'met' if doc['meets_targets']['start_cpu_vs_target'] else 'not met'}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    return 0
