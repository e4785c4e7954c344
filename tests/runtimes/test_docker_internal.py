"""``docker network create --internal`` with our plugin becomes an internal cluster network
(issue 13 item 4: Docker's options through the plugin), and its containers have no egress
while those of a normal network do (item 2). One host, a private dockerd."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.lab.netlab import Lab
from tests.netns.overlaylab import wait_for
from tests.runtimes.dockerlab import IMAGE, DockerLab, docker_skip_reason, make_rootfs

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.docker]


@pytest.fixture
def dl1(lab_factory: Callable[..., Lab], tmp_path: Path) -> Iterator[DockerLab]:
    reason = docker_skip_reason()
    if reason:
        pytest.skip(reason)
    dlab = DockerLab(lab_factory(2), 1)  # the lab's second namespace: "outside", no agent
    try:
        dlab.start_agent(0)
        dlab.start_dockerd(0)
        dlab.import_image(0, make_rootfs(tmp_path / "rootfs"))
        yield dlab
    finally:
        problems = dlab.close()
        assert not problems, problems


def test_internal_reaches_the_cluster_network(dl1: DockerLab) -> None:
    p = dl1.plugins[0]
    for name, subnet, extra in (("shut", "10.79.0.0/24", ["--internal"]), ("open", "10.79.1.0/24", [])):
        dl1.docker(0, "network", "create", "-d", p, "--ipam-driver", p, "--subnet", subnet, *extra, name)
    # cluster networks are named docker-<id> without --ipam-opt network=NAME: tell them by subnet
    nets = {n["Subnets"][0]: n for n in dl1.ol.request(0, "network", {"action": "ls"})}
    assert set(nets) == {"10.79.0.0/24", "10.79.1.0/24"}, nets
    internal = {s: dl1.ol.request(0, "network", {"action": "inspect", "ref": n["ID"]})[0]["Internal"]
                for s, n in nets.items()}
    assert internal == {"10.79.0.0/24": True, "10.79.1.0/24": False}
    # containers: the normal network's reaches an address outside the overlay (the lab's
    # second namespace, no agent there), the internal network's neither that nor its host
    outside, own = dl1.lab.hosts[1].addr, dl1.lab.hosts[0].addr
    for name, net in (("in-shut", "shut"), ("in-open", "open")):
        dl1.docker(0, "run", "-d", "--name", name, "--network", net, IMAGE, "sleep", "3600")
    wait_for(lambda: dl1.ping(0, "in-open", outside, count=1), "the open network's container to reach outside")
    assert not dl1.ping(0, "in-shut", outside, count=2), "an internal network's container reached outside"
    assert not dl1.ping(0, "in-shut", own, count=2), "an internal network's container reached its host"
    gateway = dl1.ol.request(0, "network", {"action": "inspect", "ref": nets["10.79.0.0/24"]["ID"]})[0]
    assert dl1.ping(0, "in-shut", gateway["IPAM"]["Config"][0]["Gateway"], count=1), "its gateway still answers"
