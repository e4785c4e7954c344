"""Fixtures of the adversarial tier (issue 18): labs with agents and an attacker host.

``attack_lab`` makes fresh labs for one test (attacks that may break what they hit);
``shared_lab`` is one module's two agents with a network, for attacks that held (every
test still checks health, tables, kernel and RSS after its own attack). Both skip when
not root or without iproute2, and delete every namespace and process they made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.lab.netlab import Lab
from tests.adversarial.attacklab import AttackLab
from tests.netns.conftest import lab_skip_reason


@pytest.fixture
def attack_lab() -> Iterator[Callable[..., AttackLab]]:
    """Fresh ``AttackLab``s for one test (for attacks that may break what they hit)."""
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    labs: list[Lab] = []

    def make(agents: int = 2, **kw: Any) -> AttackLab:
        lab = Lab(0)
        labs.append(lab)
        return AttackLab(lab, agents, **kw)

    yield make
    problems = [p for lab in labs for p in lab.close()]
    assert not problems, problems


@pytest.fixture(scope="module")
def shared_lab() -> Iterator[AttackLab]:
    """Two agents with a network and an endpoint each, shared by a module's attacks that
    held (each test still checks health, tables, kernel and RSS after its attack)."""
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(0)
    try:
        yield AttackLab(lab, 2).start().with_network()
    finally:
        problems = lab.close()
    assert not problems, problems

