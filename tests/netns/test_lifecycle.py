"""Endpoints live and die with their container (issue 12 item 3), with real agents.

A "container" is a namespace given to ``agentctl endpoint create``. When the namespace is
deleted (``ip netns del``, nothing else holds it) the kernel deletes the veth pair and the
agent (``agent.overlay.lifecycle``) withdraws the endpoint: every peer drops its FDB and
neighbour entries within 2 s, and the address is free again. A namespace deleted while
the agent is down is withdrawn when the agent starts.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from agent.lab.netlab import Lab
from tests.netns.overlaylab import OverlayLab, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]

VNI_OPTION = "com.docker.network.driver.overlay.vxlanid_list"
WITHDRAW_WITHIN = 2.0
LabFactory = Callable[..., Lab]


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


@pytest.fixture
def ol(lab_factory: LabFactory) -> OverlayLab:
    lab = lab_factory(3)
    overlay = OverlayLab(lab)
    overlay.start_all()
    return overlay


@pytest.fixture
def mortal(ol: OverlayLab) -> Iterator[Callable[[str], str]]:
    """Namespaces the lab holds no file descriptor of (the lab's own "containers" stay
    alive through the lab's fds even after ``ip netns del``); deleted after the test if
    still there. Named with the lab's prefix, so the lab fixture's leak check sees them."""
    made: list[str] = []

    def make(tag: str) -> str:
        name = f"{ol.lab.prefix}-m{tag}"
        made.append(name)
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in made:
        if os.path.exists(f"/run/netns/{name}"):
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "del", name)


def test_netns_deleted_withdraws_everywhere_within_2s(ol: OverlayLab, mortal: Callable[[str], str]) -> None:
    net = ol.create_network(0, "blue", "--subnet", "10.62.0.0/24")
    vni = int(net["Options"][VNI_OPTION])
    doomed, stays = mortal("x"), ol.container("y")
    ep = ol.create_endpoint(0, "blue", doomed, "--ip", "10.62.0.9", "--name", "doomed")
    other = ol.create_endpoint(0, "blue", stays)
    peer = {1: ol.create_endpoint(1, "blue", ol.container("b")), 2: ol.create_endpoint(2, "blue", ol.container("c"))}
    for i in (1, 2):
        wait_for(lambda i=i: ol.entries_for(i, vni, [ep, other, peer[3 - i]]), f"host{i} to hold the others' endpoints")

    start = time.monotonic()
    ip("netns", "del", doomed)
    for i in (1, 2):
        wait_for(lambda i=i: ol.entries_for(i, vni, [other, peer[3 - i]]),
                 f"host{i} to drop the deleted container's entries", within=WITHDRAW_WITHIN)
    print(f"\nnetns deleted -> entries gone from both peers in {(time.monotonic() - start) * 1000:.0f} ms")
    assert [e["id"] for e in ol.endpoints(0) if e["local"]] == [other["id"]]
    assert "endpoint-withdrawn" in ol.log(0)
    # the address is free: a new container takes it at once
    again = ol.create_endpoint(0, "blue", ol.container("z"), "--ip", "10.62.0.9")
    wait_for(lambda: ol.entries_for(1, vni, [other, again, peer[2]]), "host1 to learn the new endpoint")


def test_netns_deleted_while_agent_down_is_withdrawn_at_start(ol: OverlayLab,
                                                                mortal: Callable[[str], str]) -> None:
    net = ol.create_network(0, "blue", "--subnet", "10.62.0.0/24")
    vni = int(net["Options"][VNI_OPTION])
    doomed, stays = mortal("x"), ol.container("y")
    ep = ol.create_endpoint(0, "blue", doomed)
    other = ol.create_endpoint(0, "blue", stays)
    ol.create_endpoint(1, "blue", ol.container("b"))
    wait_for(lambda: ol.entries_for(1, vni, [ep, other]), "host1 to hold host0's endpoints")
    ol.stop(0)
    ip("netns", "del", doomed)
    assert ol.entries_for(1, vni, [ep, other])  # a stopped agent's entries stay (restart safety)
    ol.start(0)
    wait_for(lambda: ol.entries_for(1, vni, [other]), "host1 to drop the container that went meanwhile")
    assert [e["id"] for e in ol.endpoints(0) if e["local"]] == [other["id"]]
