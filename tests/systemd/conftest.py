"""The systemd tier's cluster: the packaged unit under systemd in a machine, plus one peer.

Owns the ``cluster`` fixture (one per module: a boot costs a few seconds, and the tests
walk the unit through its life like an operator would): a two-host namespace lab
(``agent.lab.netlab``), host0 a booted systemd machine (tests/systemd/machine.py) that
has packaging/overlay-agent.service and packaging/agent.toml installed as
docs/operations.md says (the packaged agent.toml fits the lab as it is: bind 192.0.2.1,
seeds 192.0.2.2 = host1 and 192.0.2.3 = nobody), host1 a plain agent
(tests/systemd/esp_peer.py) that the tests start. The only drop-in shortens the
watchdog for the wedge test, turns core files off and turns the Docker plugin on.
Teardown powers the machine off, closes the lab and checks nothing is left.
Does not: test anything (tests/systemd/test_unit.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.ctl.client import Client, CtlError
from agent.lab.agentnode import agent_argv, agent_program
from agent.lab.netlab import Lab
from tests.netns.overlaylab import OverlayLab, wait_for
from tests.systemd.machine import NSPAWN_RUN, REPO, Machine, skip_reason

UNIT = "overlay-agent.service"
UNIT_FILE = REPO / "packaging" / "overlay-agent.service"
CONFIG_FILE = REPO / "packaging" / "agent.toml"
CONFIG = "/etc/overlay-agent/agent.toml"
CONTROL_SOCKET = "/run/overlay-agent/agent.sock"
PLUGIN_SOCKET = "/run/docker/plugins/overlay-agent.sock"
WATCHDOG_SEC = 6
DROP_IN = f"""[Service]
# tests/systemd: a wedged agent is killed after {WATCHDOG_SEC} s, not 30 s (it pings every {WATCHDOG_SEC / 2:g} s).
WatchdogSec={WATCHDOG_SEC}
# The host's core_pattern is shared with the machine: an aborted agent writes no core.
LimitCORE=0
# The Docker network plugin on, where dockerd looks for it (the sandbox must allow it).
Environment=OVERLAY_AGENT_DOCKER_PLUGIN_SOCKET={PLUGIN_SOCKET}
"""


@dataclass
class Cluster:
    lab: Lab
    machine: Machine
    ovl: OverlayLab
    """nodes[0] is the machine's agent (control socket seen through /proc/<init>/root),
    nodes[1] the peer."""
    notes: dict[str, Any] = field(default_factory=dict)
    """What one test leaves for the next (network ids, endpoints)."""

    @property
    def name(self) -> str:
        return self.machine.name

    def show(self, *props: str) -> dict[str, str]:
        return self.machine.show(UNIT, *props)

    def status(self) -> dict[str, Any] | None:
        """The machine's agent's ``status``, or None if its control API does not answer."""
        try:
            result: dict[str, Any] = Client(self.ovl.nodes[0].socket, 5.0).request("status", None)
        except (CtlError, OSError):
            return None
        return result

    def wait_active(self) -> dict[str, str]:
        def active() -> dict[str, str] | None:
            st = self.show("ActiveState", "SubState", "MainPID", "NRestarts", "Result")
            if st["ActiveState"] == "failed":
                pytest.fail(f"{UNIT} failed: {st}\n{self.journal_text()}")
            return st if st["ActiveState"] == "active" else None

        st: dict[str, str] = wait_for(active, f"{UNIT} to be active", within=90, every=0.2)
        return st

    def ensure_running(self) -> None:
        if self.show("ActiveState")["ActiveState"] != "active":
            self.machine.systemctl("start", UNIT)
        self.wait_active()

    def start_peer(self) -> None:
        node = self.ovl.nodes[1]
        if node.proc is not None and node.proc.running():
            return
        argv = agent_argv(node.name, node.host.addr, node.socket, join=[self.ovl.nodes[0].host.addr],
                          state_dir=node.state_dir)
        argv = [sys.executable, "-m", "tests.systemd.esp_peer", *argv[len(agent_program()):]]
        node.proc = self.lab.spawn(node.host, argv, name="peer", cwd=str(REPO),
                                   env=dict(os.environ, PYTHONPATH=str(REPO)))
        self.ovl.wait_ready(1)

    def journal_text(self, *extra: str) -> str:
        return self.machine.run(["journalctl", "--no-pager", "-o", "cat", "-u", UNIT, *extra],
                                check=False).stdout

    def key_file(self) -> Path:
        return self.machine.path(f"/run/overlay-agent/ipsec-{self.name}/keys.json")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    nspawn_run_existed = NSPAWN_RUN.exists()
    lab = Lab(2)
    machine: Machine | None = None
    try:
        machine = Machine(lab.prefix, lab.hosts[0].netns, files={
            f"etc/systemd/system/{UNIT}": UNIT_FILE.read_text(),
            f"etc/systemd/system/{UNIT}.d/50-tests.conf": DROP_IN,
            CONFIG.lstrip("/"): CONFIG_FILE.read_text(),
        })
        ovl = OverlayLab(lab)
        ovl.nodes[0].name = machine.name
        ovl.nodes[0].socket = str(machine.path(CONTROL_SOCKET))
        ovl.nodes[1].name = "peer"
        yield Cluster(lab, machine, ovl)
    finally:
        problems = machine.close() if machine is not None else []
        problems += lab.close()
        tree = machine.root_dir if machine is not None else None
    assert not problems, problems
    assert tree is None or not tree.exists(), f"{tree} left behind"
    if not nspawn_run_existed:
        assert not NSPAWN_RUN.exists(), f"{NSPAWN_RUN} left behind"
