"""Runtime benchmark: container start through our plugins vs the runtimes' stock networking.

``python -m bench runtime [--quick] [--json FILE] [--only SECTION] [--runs N] [--containers N]``

Sections (each a function in ``SECTIONS`` returning its figures and ratios):

- ``docker``: a 2-host namespace lab (``agent.lab.netlab``) with real agents serving the
  Docker plugin and one private dockerd per host (``agent.lab.dockerd``). On host 0,
  the wall time of ``docker run --rm --network NET IMAGE true`` (the client command,
  start to exit) on a network of our driver + IPAM (``-d PLUGIN --ipam-driver PLUGIN``)
  and on a network of Docker's own ``bridge`` driver, alternated run by run after one
  warm-up each. Figures: raw ``ours_ms`` and ``bridge_ms`` samples, their medians, and
  ``ratios.docker_run`` = median ours / median bridge (issue 12's target: <= 1.5).
- ``cni``: podman with ``overlay-cni`` vs the stock bridge + host-local conflist
  (ratio ``cni_add``), in ``bench.runtime_cni``.
- ``propagation``: ``docker start`` on host A -> the container's FDB row and
  neighbour in host B's kernel, raw ``p50_ms`` / ``p99_ms`` over ``--containers N``
  (default 50; target p99 <= 500 ms), in ``bench.runtime_propagation``.

``--quick``: 5 runs per side, 10 containers. Needs root, Debian's docker.io and
busybox-static.

Owns: the steps, the figures and the JSON report. Does not: start daemons or agents
itself (``agent.lab.dockerd``, ``agent.lab.agentnode``) or import the agent's runtime
modules (it drives the installed programs like a user).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.lab import dockerd
from agent.lab.agentnode import agent_argv, wait_ready
from agent.lab.netlab import Lab, LabError
from bench import runtime_cni, runtime_propagation
from bench.summary import log, machine, write_json

TARGET_DOCKER_RUN = 1.5
WAIT = 60.0
OUR_SUBNET = "10.202.0.0/24"
BRIDGE_SUBNET = "10.203.0.0/24"


def _wait_ready(sock: str) -> None:
    try:
        wait_ready(sock, WAIT)
    except OSError as exc:
        raise LabError(str(exc)) from None


def run_docker(runs: int) -> dict[str, Any]:
    """The ``docker`` section (see the module docstring)."""
    if dockerd.skip_reason():
        raise LabError(f"docker section: {dockerd.skip_reason()}")
    lab = Lab(2)
    hosts = dockerd.DockerHosts(lab, 2)
    problems: list[str] = []
    try:
        for i, host in enumerate(lab.hosts):
            sock = str(lab.workdir / f"host{i}.sock")
            lab.spawn(host, agent_argv(f"host{i}", host.addr, sock, join=[lab.hosts[0].addr] if i else [],
                                       state_dir=str(lab.workdir / f"state{i}"),
                                       extra=hosts.agent_args(i)),
                      name=f"agent{i}")
            _wait_ready(sock)
        with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
            rootfs = dockerd.make_rootfs(Path(tmp) / "rootfs")
            for i in range(2):
                hosts.start(i)
                hosts.import_image(i, rootfs)
        p = hosts.plugins[0]
        hosts.docker(0, "network", "create", "-d", p, "--ipam-driver", p, "--subnet", OUR_SUBNET, "ours")
        hosts.docker(0, "network", "create", "-d", "bridge", "--subnet", BRIDGE_SUBNET, "stock")
        samples: dict[str, list[float]] = {"ours": [], "stock": []}

        def once(network: str) -> float:
            t0 = time.perf_counter()
            hosts.docker(0, "run", "--rm", "--network", network, dockerd.IMAGE, "true")
            return (time.perf_counter() - t0) * 1000

        once("ours")
        once("stock")
        for n in range(runs):
            for network in ("ours", "stock") if n % 2 == 0 else ("stock", "ours"):
                samples[network].append(once(network))
            log(f"  run {n + 1}/{runs}: ours {samples['ours'][-1]:.0f} ms, bridge {samples['stock'][-1]:.0f} ms")
    finally:
        problems += hosts.close()
        problems += lab.close()
    if problems:
        log(f"bench runtime: cleanup problems: {problems}")
    ours, stock = statistics.median(samples["ours"]), statistics.median(samples["stock"])
    return {
        "docker": {
            "runs": runs,
            "ours_ms": [round(x, 1) for x in samples["ours"]],
            "bridge_ms": [round(x, 1) for x in samples["stock"]],
            "ours_median_ms": round(ours, 1),
            "bridge_median_ms": round(stock, 1),
            "target_ratio": TARGET_DOCKER_RUN,
        },
        "ratios": {"docker_run": round(ours / stock, 3)},
    }


SECTIONS: dict[str, Callable[[int], dict[str, Any]]] = {
    "docker": run_docker,
    "cni": runtime_cni.run_cni,  # podman + overlay-cni vs bridge/host-local (ratio cni_add)
    # docker run on host A -> entries in host B's kernel; called with the container count
    "propagation": runtime_propagation.run_propagation,
}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench runtime", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 runs per side, 10 containers")
    ap.add_argument("--json", metavar="FILE", help="write the raw figures here")
    ap.add_argument("--only", choices=sorted(SECTIONS), help="run one section")
    ap.add_argument("--runs", type=int, help="timed runs per side (default 20, quick 5)")
    ap.add_argument("--containers", type=int,
                    help=f"propagation: containers started (default {runtime_propagation.CONTAINERS}, "
                         f"quick {runtime_propagation.QUICK_CONTAINERS})")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench runtime: needs root (network namespaces, container runtimes)", file=sys.stderr)
        return 1
    runs = args.runs or (5 if args.quick else 20)
    containers = args.containers or (runtime_propagation.QUICK_CONTAINERS if args.quick
                                     else runtime_propagation.CONTAINERS)
    if not 1 <= runs <= 1000 or not 1 <= containers <= 500:
        print("bench runtime: --runs must be 1-1000 and --containers 1-500", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"ratios": {}}
    for name, section in SECTIONS.items():
        if args.only and name != args.only:
            continue
        log(f"section {name}: {containers if name == 'propagation' else runs} "
            f"{'containers' if name == 'propagation' else 'runs per side'}")
        try:
            figures = section(containers if name == "propagation" else runs)
        except (LabError, OSError, RuntimeError) as exc:
            print(f"bench runtime: {name}: {exc}", file=sys.stderr)
            return 1
        report["ratios"].update(figures.pop("ratios", {}))
        report.update(figures)
    report["quick"] = args.quick
    report["command"] = "python -m bench runtime" + (" --quick" if args.quick else "")
    report["machine"] = machine()
    if "docker" in report:
        d = report["docker"]
        print(f"docker run --rm: ours {d['ours_median_ms']} ms vs bridge {d['bridge_median_ms']} ms (median of "
              f"{d['runs']}): ratio docker_run {report['ratios']['docker_run']} (target <= {TARGET_DOCKER_RUN})")
    if "cni" in report:
        print(runtime_cni.summary(report))
    if "propagation" in report:
        print(runtime_propagation.summary(report))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
