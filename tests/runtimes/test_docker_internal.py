"""``docker network create --internal`` with our plugin becomes an internal cluster network
(issue 13 item 4: Docker's options through the plugin). One host, a private dockerd."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from agent.lab.netlab import Lab
from tests.runtimes.dockerlab import DockerLab, docker_skip_reason

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.docker]


@pytest.fixture
def dl1(lab_factory: Callable[..., Lab]) -> Iterator[DockerLab]:
    reason = docker_skip_reason()
    if reason:
        pytest.skip(reason)
    dlab = DockerLab(lab_factory(1), 1)
    try:
        dlab.start_agents()
        dlab.start_dockerd(0)
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
