"""Fixtures for tests that build network-namespace labs (agent/lab/netlab.py).

``lab_factory`` makes labs and tears every one down after the test, then checks
that none of their namespaces survived. Tests here skip cleanly when not root or
when iproute2 is missing. ``kernel_scratch``: scratch namespaces for the dataplane's
kernel tests without agents (``kernelhost.py``), skipped where VXLAN cannot run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from agent.lab.netlab import Lab
from dataplane.scratch import Scratch, skip_reason


def lab_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "network-namespace lab needs root"
    if shutil.which("ip") is None or shutil.which("bridge") is None:
        return "iproute2 (ip, bridge) is not installed"
    return None


@pytest.fixture
def lab_factory() -> Iterator[Callable[..., Lab]]:
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    labs: list[Lab] = []

    def make(hosts: int = 0, **kw: object) -> Lab:
        lab = Lab(hosts, **kw)  # type: ignore[arg-type]
        labs.append(lab)
        return lab

    yield make
    problems = [p for lab in labs for p in lab.close()]
    left = [
        n
        for lab in labs
        for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
        if n.startswith(lab.prefix + "-")
    ]
    assert not problems, problems
    assert not left, f"namespaces left behind: {left}"


@pytest.fixture(scope="session")
def _kernel_ok() -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def kernel_scratch(_kernel_ok: None) -> Iterator[Scratch]:
    """Scratch namespaces for a dataplane kernel test (``tests/netns/kernelhost.py``),
    skipped where VXLAN cannot run; every one is deleted after the test."""
    with Scratch() as s:
        yield s
        assert s.close() == []
