"""``make demo-docker``: two Docker containers on two hosts ping each other over the overlay.

Builds a 2-host lab (``agent.lab.netlab.Lab``), starts ``overlay-agent`` on each host
with ``--docker-plugin-socket`` (a uniquely named plugin in ``/run/docker/plugins``),
starts one private ``dockerd`` per host (``agent.lab.dockerd.DockerHosts``), imports a
busybox image (no registry), runs the same ``docker network create -d PLUGIN
--ipam-driver PLUGIN --subnet ... demo`` on both hosts (the second joins the first's
cluster network), ``docker run``s a named container on each, shows the cluster's view
and pings across. Everything is torn down on exit, on Ctrl-C and on SIGTERM (dockerd and
its containerd stopped by pid, the machine-wide Docker paths it made removed).

Owns: the steps and their output. Does not: start dockerd itself (``agent.lab.dockerd``)
or import the agent package (the agents run as the installed programs). Needs root and
Debian's docker.io and busybox-static (``make debs``); traffic stays inside the lab
(192.0.2.0/24 underlay, 10.201.0.0/24 overlay inside the containers).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from agent.lab import dockerd
from agent.lab.agentnode import ControlClient, agent_argv
from agent.lab.demo import PREFIX, DemoError, _agent_env, _stop_on_signals
from agent.lab.netlab import Lab, LabError

SUBNET = "10.201.0.0/24"
NETWORK = "demo"
WAIT = 30.0


def _wait(what: str, check: object) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {WAIT:g}s waiting for {what}")
        time.sleep(0.1)


def run(lab: Lab, hosts: dockerd.DockerHosts, workdir: Path) -> None:
    socks = []
    for i, host in enumerate(lab.hosts):
        sock = str(lab.workdir / f"host{i + 1}.sock")
        argv = agent_argv(f"host{i + 1}", host.addr, sock, join=[lab.hosts[0].addr] if i else [],
                          state_dir=str(lab.workdir / f"state-host{i + 1}"),
                          extra=hosts.agent_args(i))
        proc = lab.spawn(host, argv, name=f"agent{i + 1}", env=_agent_env())
        socks.append(sock)
        print(f"  host{i + 1}: overlay-agent (pid {proc.pid}) serving Docker plugin {hosts.plugins[i]!r} "
              f"at {hosts.plugin_socket(i)}")
        _wait(f"host{i + 1}'s agent to be ready",
              lambda sock=sock: ControlClient(sock, timeout=2.0).request("status").get("ready"))
    rootfs = dockerd.make_rootfs(workdir / "rootfs")
    for i in range(len(lab.hosts)):
        hosts.start(i)
        hosts.import_image(i, rootfs)
        daemon = hosts.daemons[i].proc
        print(f"  host{i + 1}: dockerd (pid {daemon.pid if daemon else '?'}) "
              f"at unix://{hosts.daemons[i].sock}; image {dockerd.IMAGE} imported")
    ips = []
    for i in range(len(lab.hosts)):
        p = hosts.plugins[i]
        print(f"$ docker network create -d {p} --ipam-driver {p} --subnet {SUBNET} {NETWORK}   # on host{i + 1}")
        hosts.docker(i, "network", "create", "-d", p, "--ipam-driver", p, "--subnet", SUBNET, NETWORK)
    for i in range(len(lab.hosts)):
        name = f"web{i + 1}"
        print(f"$ docker run -d --name {name} --network {NETWORK} {dockerd.IMAGE} sleep 3600   # on host{i + 1}")
        hosts.docker(i, "run", "-d", "--name", name, "--network", NETWORK, dockerd.IMAGE, "sleep", "3600")
        ips.append(hosts.container_ip(i, name, NETWORK))
        print(f"  {name} on host{i + 1}: {ips[-1]}")
    rows = ControlClient(socks[0], timeout=5.0).request("endpoint", action="ls")
    print("$ agentctl endpoint ls   # on host1: both containers, with the host (VTEP) of each")
    for r in rows:
        print(f"  {r['ipv4']:<14} {r['mac']}  node {r['node']}  vtep {r['vtep']}")
    _wait("both containers in both hosts' tables",
          lambda: len(ControlClient(socks[1], timeout=5.0).request("endpoint", action="ls")) == 2)
    print(f"$ docker exec web1 ping -c 3 {ips[1]}   # host1 -> host2 across the VXLAN overlay")
    _wait("the first ping across", lambda: hosts.ping(0, "web1", ips[1], count=1))
    r = hosts.exec(0, "web1", ["ping", "-c", "3", ips[1]])
    print("  " + "\n  ".join(r.stdout.strip().splitlines()))
    if " 0% packet loss" not in r.stdout:
        raise DemoError("ping from web1 to web2 lost packets")


def main() -> int:
    if os.geteuid() != 0:
        print("agent.lab.dockerdemo: needs root (network namespaces, dockerd)", file=sys.stderr)
        return 1
    reason = dockerd.skip_reason()
    if reason:
        print(f"agent.lab.dockerdemo: {reason}", file=sys.stderr)
        return 1
    _stop_on_signals()
    started = time.monotonic()
    lab: Lab | None = None
    hosts: dockerd.DockerHosts | None = None
    problems: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="odemo-docker-") as tmp:
            print("Building a 2-host lab in network namespaces (underlay 192.0.2.0/24)...")
            lab = Lab(2, prefix=f"{PREFIX}{os.getpid():x}")
            hosts = dockerd.DockerHosts(lab, 2)
            run(lab, hosts, Path(tmp))
        print(f"Docker demo finished in {time.monotonic() - started:.1f}s; tearing the lab down.")
        return 0
    except KeyboardInterrupt:
        print("\nInterrupted; tearing the lab down.", file=sys.stderr)
        return 130
    except (DemoError, LabError) as exc:
        print(f"agent.lab.dockerdemo: failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if hosts is not None:
            problems += hosts.close()  # while the agents still answer Docker's plugin calls
        if lab is not None:
            problems += lab.close()
        if problems:
            print(f"agent.lab.dockerdemo: cleanup problems: {problems}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
