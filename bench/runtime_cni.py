"""The ``cni`` section of ``python -m bench runtime``: podman run through ``overlay-cni`` vs stock CNI.

One lab host runs a real agent and a private podman 4.3 with the CNI backend
(``agent.lab.podman``). On it, the wall time of ``podman run --rm --network NET
--rootfs DIR /bin/busybox true`` (the client command, start to exit; no daemon) on a
network whose conflist is ``overlay-cni`` and on one whose conflist is the stock
``bridge`` + ``host-local`` plugins (Debian's containernetworking-plugins; a private
bridge in the lab host, no masquerading, host-local's data in our directory),
alternated run by run after one warm-up each. Figures: raw ``ours_ms`` and
``bridge_ms``, their medians, and ``ratios.cni_add`` = median ours / median bridge
(issue 12's target: <= 1.5). Also the plugin's own ADD wall time (``add_ms``: the
``overlay-cni`` process alone, driven through the CNI contract, median of the runs).

Owns: the steps and figures of this section. Does not: start podman or agents by
itself beyond the lab harnesses (``agent.lab.podman``, ``agent.lab.agentnode``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from typing import Any

from agent.lab import podman
from agent.lab.agentnode import ControlClient, agent_argv, wait_ready
from agent.lab.netlab import Lab, LabError
from bench.summary import log

TARGET_CNI_ADD = 1.5
WAIT = 60.0
OUR_SUBNET = "10.204.0.0/24"
BRIDGE_SUBNET = "10.205.0.0/24"


def _wait_ready(sock: str) -> None:
    try:
        wait_ready(sock, WAIT)
    except OSError as exc:
        raise LabError(str(exc)) from None


def _plugin_add(ph: podman.PodmanHosts, sock: str, netns: str) -> float:
    """One ADD + DEL of ``overlay-cni`` through the contract; the ADD's wall time (ms)."""
    conf = json.dumps({"cniVersion": "1.0.0", "name": "ours", "type": "overlay-cni", "network": "ours",
                       "socket": sock}).encode()
    cid = os.urandom(32).hex()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": podman.STOCK_PLUGINS}
    argv = ["nsenter", f"--net={ph.hosts[0].host.netns_path}", *podman.cni_program()]
    t0 = time.perf_counter()
    r = subprocess.run(argv, input=conf, env={**env, "CNI_COMMAND": "ADD"}, capture_output=True, check=False)
    ms = (time.perf_counter() - t0) * 1000
    subprocess.run(argv, input=conf, env={**env, "CNI_COMMAND": "DEL"}, capture_output=True, check=False)
    if r.returncode != 0:
        raise LabError(f"overlay-cni ADD failed: {r.stdout.decode(errors='replace').strip()}")
    return ms


def run_cni(runs: int) -> dict[str, Any]:
    """The ``cni`` section (see the module docstring)."""
    if podman.skip_reason():
        raise LabError(f"cni section: {podman.skip_reason()}")
    lab = Lab(1)
    ph: podman.PodmanHosts | None = None
    problems: list[str] = []
    samples: dict[str, list[float]] = {"ours": [], "stock": [], "add": []}
    try:
        host = lab.hosts[0]
        sock = str(lab.workdir / "host0.sock")
        lab.spawn(host, agent_argv("host0", host.addr, sock, state_dir=str(lab.workdir / "state0")), name="agent0")
        _wait_ready(sock)
        ControlClient(sock, timeout=15.0).request(
            "network", args={"action": "create", "name": "ours", "subnets": [OUR_SUBNET]})
        ph = podman.PodmanHosts.create(lab, [sock])
        ph.add_network(0, "ours")
        ph.add_raw_network(0, "stock", {"cniVersion": "1.0.0", "name": "stock", "plugins": [{
            "type": "bridge", "bridge": "cnibench0", "isGateway": False, "ipMasq": False,
            "ipam": {"type": "host-local", "subnet": BRIDGE_SUBNET, "dataDir": str(ph.root / "host-local")}}]})
        counter = iter(range(1 << 30))

        def once(network: str) -> float:
            t0 = time.perf_counter()
            ph.run(0, f"bench-{network}-{next(counter)}", network, "true", detach=False)
            return (time.perf_counter() - t0) * 1000

        once("ours")
        once("stock")
        lab.add_namespaces([f"{lab.prefix}-cni"])
        for n in range(runs):
            for network in ("ours", "stock") if n % 2 == 0 else ("stock", "ours"):
                samples[network].append(once(network))
            samples["add"].append(_plugin_add(ph, sock, f"/run/netns/{lab.prefix}-cni"))
            log(f"  run {n + 1}/{runs}: ours {samples['ours'][-1]:.0f} ms, bridge {samples['stock'][-1]:.0f} ms, "
                f"overlay-cni ADD {samples['add'][-1]:.0f} ms")
    finally:
        if ph is not None:
            problems += ph.close()
        problems += lab.close()
    if problems:
        log(f"bench runtime: cni cleanup problems: {problems}")
    ours, stock = statistics.median(samples["ours"]), statistics.median(samples["stock"])
    return {
        "cni": {
            "runs": runs,
            "ours_ms": [round(x, 1) for x in samples["ours"]],
            "bridge_ms": [round(x, 1) for x in samples["stock"]],
            "ours_median_ms": round(ours, 1),
            "bridge_median_ms": round(stock, 1),
            "add_ms": [round(x, 1) for x in samples["add"]],
            "add_median_ms": round(statistics.median(samples["add"]), 1),
            "target_ratio": TARGET_CNI_ADD,
        },
        "ratios": {"cni_add": round(ours / stock, 3)},
    }


def summary(report: dict[str, Any]) -> str:
    c = report["cni"]
    return (f"podman run --rm: overlay-cni {c['ours_median_ms']} ms vs bridge + host-local "
            f"{c['bridge_median_ms']} ms (median of {c['runs']}): ratio cni_add {report['ratios']['cni_add']} "
            f"(target <= {TARGET_CNI_ADD}); overlay-cni ADD alone {c['add_median_ms']} ms")
