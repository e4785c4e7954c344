"""Self-tests of the namespace lab harness (agent/lab/netlab.py): topology, processes,
partitions and cleanup, including cleanup after a harness was SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.lab import procstat
from agent.lab.cleanup import cleanup
from agent.lab.netlab import Lab, LabError
from agent.lab.netns import netns_inode

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
LabFactory = Callable[..., Lab]


def _root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return sorted(line.split(":")[1].strip() for line in out.stdout.splitlines())


def test_hosts_share_a_bridge_and_the_root_namespace_is_untouched(lab_factory: LabFactory) -> None:
    before = _root_links()
    lab = lab_factory(3, subnet="198.51.100.0/24")
    assert [h.addr for h in lab.hosts] == ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
    assert len({h.mac for h in lab.hosts}) == 3
    for h in lab.hosts[1:]:
        lab.run(lab.hosts[0], ["ping", "-c", "1", "-W", "2", h.addr])
    neigh = lab.run(lab.hosts[0], ["ip", "neigh", "show", "dev", "eth0"]).stdout
    for h in lab.hosts[1:]:
        assert f"{h.addr} lladdr {h.mac} PERMANENT" in neigh
    v6 = lab.run(lab.hosts[1], ["cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6"]).stdout
    assert v6.strip() == "1"
    assert _root_links() == before


def test_spawned_pid_is_the_program_itself_inside_its_host(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    host = lab.hosts[1]
    proc = lab.spawn(host, ["sleep", "600"], name="sleeper")
    with open(f"/proc/{proc.pid}/comm", encoding="ascii") as f:
        assert f.read().strip() == "sleep"
    assert os.stat(f"/proc/{proc.pid}/ns/net").st_ino == netns_inode(host.netns_path)
    state = json.loads(lab.state_path.read_text())
    assert [proc.pid, proc.started] in state["pids"]
    assert lab.stop(proc, signal.SIGTERM, timeout=5) == -signal.SIGTERM
    assert not procstat.is_alive(proc.pid, proc.started)


def test_add_hosts_later_extends_neighbours_both_ways(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    (late,) = lab.add_hosts(1)
    lab.run(lab.hosts[0], ["ping", "-c", "1", "-W", "2", late.addr])
    lab.run(late, ["ping", "-c", "1", "-W", "2", lab.hosts[1].addr])


def _udp_delivered(lab: Lab, src: int, dst: int, payload: bytes) -> bool:
    """Send one datagram src -> dst:9999 and report whether it arrived within 0.5 s."""
    a, b = lab.hosts[src], lab.hosts[dst]
    with (
        lab.socket(b, socket.AF_INET, socket.SOCK_DGRAM) as rx,
        lab.socket(a, socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind((b.addr, 9999))
        rx.settimeout(0.5)
        tx.sendto(payload, (b.addr, 9999))  # a cut must not surface as a send error
        try:
            return rx.recv(100) == payload
        except TimeoutError:
            return False


def test_cut_drops_traffic_silently_both_ways_and_heal_restores_it(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    assert _udp_delivered(lab, 0, 1, b"before")
    lab.cut([lab.hosts[0]], [lab.hosts[1]])
    assert not _udp_delivered(lab, 0, 1, b"cut-ab")
    assert not _udp_delivered(lab, 1, 0, b"cut-ba")
    assert _udp_delivered(lab, 0, 2, b"other-side-open")
    assert _udp_delivered(lab, 2, 1, b"other-side-open")
    # TCP to a cut peer times out instead of being refused: silence, like a real partition.
    with lab.socket(lab.hosts[0], socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        with pytest.raises(TimeoutError):
            s.connect((lab.hosts[1].addr, 9))
    lab.heal()
    assert _udp_delivered(lab, 0, 1, b"healed")
    assert _udp_delivered(lab, 1, 0, b"healed")


def test_close_kills_processes_and_removes_namespaces_and_files(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    procs = [lab.spawn(h, ["sleep", "600"], name=f"p{h.index}") for h in lab.hosts]
    names = [lab.hub] + [h.netns for h in lab.hosts]
    assert lab.close() == []
    assert lab.close() == []  # idempotent
    for p in procs:
        assert not procstat.is_alive(p.pid, p.started)
    for n in names:
        assert not os.path.exists(f"/run/netns/{n}")
    assert not lab.workdir.exists()
    assert not lab.state_path.exists()


def test_failed_construction_leaves_nothing_behind(lab_factory: LabFactory) -> None:
    prefix = f"olabt{os.getpid():x}bad"
    with pytest.raises(LabError, match="no room"):
        Lab(3, subnet="192.0.2.0/30", prefix=prefix)
    assert not [n for n in os.listdir("/run/netns") if n.startswith(prefix)]


_CHILD = """
import sys, time
from pathlib import Path
from agent.lab.netlab import Lab
lab = Lab(2, prefix=sys.argv[1], state_root=Path(sys.argv[2]))
p = lab.spawn(lab.hosts[1], ["sleep", "600"], name="orphan")
print(p.pid, flush=True)
time.sleep(600)
"""


def test_cleanup_removes_leftovers_of_a_killed_harness_only(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    prefix = f"olabt{os.getpid():x}k"
    harness = subprocess.Popen(
        [sys.executable, "-c", _CHILD, prefix, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert harness.stdout is not None
        orphan = int(harness.stdout.readline())
        orphan_start = procstat.start_time(orphan)
        ours = [n for n in os.listdir("/run/netns") if n.startswith(prefix)]
        assert len(ours) == 3
        # While the harness runs, its lab is left alone.
        assert any("still runs" in line for line in cleanup(prefix, state_root=tmp_path))
        assert all(os.path.exists(f"/run/netns/{n}") for n in ours)
        harness.kill()
        harness.wait(timeout=10)
        assert procstat.is_alive(orphan, orphan_start)  # the harness died, its agent did not
        cleanup(prefix, state_root=tmp_path)
        deadline = time.monotonic() + 5
        while procstat.is_alive(orphan, orphan_start) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not procstat.is_alive(orphan, orphan_start)
        assert not [n for n in os.listdir("/run/netns") if n.startswith(prefix)]
        assert not list(tmp_path.glob("*.json"))
    finally:
        if harness.poll() is None:
            harness.kill()
        harness.wait(timeout=10)
        if harness.stdout is not None:
            harness.stdout.close()
        cleanup(prefix, state_root=tmp_path)
