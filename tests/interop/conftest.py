"""Fixtures for interop tests: labs with real serf agents next to ours.

Skips (with the reason) when not root, when iproute2 is missing or when the
Debian ``serf`` package is not installed. On a failing test the tail of every
agent's log is printed, so a CI failure shows what serf and our agent said.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Generator, Iterator

import pytest

from agent.lab.netlab import Lab
from bench.cluster import Cluster
from bench.serfnode import serf_binary


def interop_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "interop tests need root (network namespaces)"
    if shutil.which("ip") is None or shutil.which("bridge") is None:
        return "iproute2 (ip, bridge) is not installed"
    if serf_binary() is None:
        return "serf is not installed (apt-get install serf)"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    if rep.when == "call":
        item.stash[_FAILED] = rep.failed
    return rep


_FAILED = pytest.StashKey[bool]()

LabCluster = tuple[Lab, Cluster]


@pytest.fixture
def lab_cluster(request: pytest.FixtureRequest) -> Iterator[Callable[[int], LabCluster]]:
    """``make(hosts)`` -> (lab, cluster) with the LAN profile; all torn down afterwards."""
    reason = interop_skip_reason()
    if reason:
        pytest.skip(reason)
    made: list[LabCluster] = []

    def make(hosts: int) -> LabCluster:
        lab = Lab(hosts)
        cluster = Cluster(lab, profile="lan")
        made.append((lab, cluster))
        return lab, cluster

    yield make
    for lab, cluster in made:
        if request.node.stash.get(_FAILED, False):
            print(f"\n===== agent logs of lab {lab.prefix} =====\n{cluster.log_tails(40)}")
        cluster.close()
        assert lab.close() == []
