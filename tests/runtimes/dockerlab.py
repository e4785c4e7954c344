"""Agents serving the Docker plugin plus one real dockerd per lab host, for the Docker tests.

``DockerLab`` joins ``tests.netns.overlaylab.OverlayLab`` (agents, kernels read with
iproute2) and ``agent.lab.dockerd.DockerHosts`` (the daemons, the client, the image and
the tear-down that leaves the machine as it was). Failures become ``pytest.fail``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.lab import dockerd
from agent.lab.netlab import Lab, LabError
from tests.netns.overlaylab import OverlayLab, wait_for

IMAGE = dockerd.IMAGE
docker_skip_reason = dockerd.skip_reason
make_rootfs = dockerd.make_rootfs


class DockerLab:
    def __init__(self, lab: Lab, hosts: int = 2) -> None:
        self.lab = lab
        self.ol = OverlayLab(lab)
        self.hosts = dockerd.DockerHosts(lab, hosts)
        self.plugins = self.hosts.plugins

    # -- agents ------------------------------------------------------------------------------
    def start_agent(self, i: int, *, wait_ready: bool = True) -> None:
        # OverlayLab passes ``extra`` to every agent it starts: set this host's plugin socket.
        self.ol.extra = self.hosts.agent_args(i)
        first = i == 0 and self.ol.nodes[0].proc is None
        self.ol.start(i, join=[] if first else [1 if i == 0 else 0], wait_ready=wait_ready)

    def start_agents(self) -> None:
        for i in range(len(self.ol.nodes)):
            self.start_agent(i, wait_ready=False)
        for i in range(len(self.ol.nodes)):
            self.ol.wait_ready(i)
        names = {n.name for n in self.ol.nodes}
        for i in range(len(self.ol.nodes)):
            wait_for(lambda i=i: {m["name"] for m in self.ol.members(i) if m["status"] == "alive"} == names,
                     f"agent {i} to see every agent alive")

    # -- daemons -----------------------------------------------------------------------------
    def start_dockerd(self, i: int) -> None:
        try:
            self.hosts.start(i)
        except LabError as exc:
            pytest.fail(str(exc))

    def stop_dockerd(self, i: int) -> None:
        self.hosts.stop(i)

    def docker(self, i: int, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        try:
            return self.hosts.docker(i, *args, check=check, timeout=timeout)
        except LabError as exc:
            pytest.fail(str(exc))

    def import_image(self, i: int, rootfs: Path) -> None:
        try:
            self.hosts.import_image(i, rootfs)
        except LabError as exc:
            pytest.fail(str(exc))

    def inspect(self, i: int, container: str) -> dict[str, Any]:
        return self.hosts.inspect(i, container)

    def container_ip(self, i: int, container: str, network: str) -> str:
        return self.hosts.container_ip(i, container, network)

    def exec(self, i: int, container: str, argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.hosts.exec(i, container, argv, timeout)

    def ping(self, i: int, container: str, ip: str, count: int = 3) -> bool:
        return self.hosts.ping(i, container, ip, count)

    def close(self) -> list[str]:
        return self.hosts.close()
