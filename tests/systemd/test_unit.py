"""The packaged unit under a real systemd (issue 19 item 3; the RuntimeDirectory bug of issue 18).

Driven with ``systemctl`` inside a booted machine (tests/systemd/conftest.py), in the
order an operator lives through it: start (active only after READY=1), restart with
traffic flowing (endpoints, IPsec keys and kernel state kept, 0 pings lost), a wedged
event loop (SIGSTOP: the watchdog kills and restarts it), stop (no leave: the peer
sees the node fail, not leave) and start again (keys still there), a bad
configuration (fails once, one line in the journal, no restart loop), then the
sandbox: what the agent needs works inside it and the rest does not, and the
``systemd-analyze security`` score docs/operations.md records is the real one.

What the ping proves: the host kernel lacks ESP, so the traffic is a plain VXLAN
network between a container in the machine and one on the peer, through the
machine's VXLAN device, bridge, FDB and neighbour entries, which the kernel keeps
forwarding while the agent restarts; the keys are checked as a file (their SAs need
the VM: tests/vm).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.lab.netns import netns_path, preexec_setns
from tests.netns.overlaylab import wait_for
from tests.systemd.conftest import (
    CONFIG,
    CONFIG_FILE,
    PLUGIN_SOCKET,
    UNIT,
    UNIT_FILE,
    WATCHDOG_SEC,
    Cluster,
)
from tests.systemd.machine import REPO, SOURCE, VENV

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

AGENTCTL = "/usr/local/bin/agentctl"
PING_RE = re.compile(r"icmp_seq=(\d+) ")
DOCS = REPO / "docs" / "operations.md"
SCORE_RE = re.compile(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)")
DOCS_SCORE_RE = re.compile(r"`systemd-analyze security overlay-agent\.service`[^*]*\*\*(\d+\.\d+) (\w+)\*\*")


def agentctl(c: Cluster, *args: str) -> str:
    """``agentctl`` inside the machine, as its operator runs it."""
    return c.machine.run([AGENTCTL, *args]).stdout


def links(c: Cluster) -> dict[str, int]:
    """Interfaces of the machine's network namespace: name -> ifindex (a recreated device
    gets a new index)."""
    r = c.lab.run(c.ovl.nodes[0].host, ["ip", "-j", "link", "show"])
    return {row["ifname"]: row["ifindex"] for row in json.loads(r.stdout)}


class Pinger:
    """``ping -i 0.05`` from a namespace of the peer; replies counted by sequence number."""

    def __init__(self, netns: str, target: str, log: Path) -> None:
        self.log = log
        fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with open(log, "wb") as out:
                self.proc = subprocess.Popen(["ping", "-n", "-i", "0.05", "-W", "1", target],
                                             stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, preexec_fn=preexec_setns(fd))
        finally:
            os.close(fd)

    def replies(self) -> set[int]:
        return {int(m) for m in PING_RE.findall(self.log.read_text(errors="replace"))}

    def stop(self) -> set[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.replies()


class KernelWatch:
    """Samples the machine's FDB and neighbour entries of one VNI in a thread; records
    every sample that differs from the expected one."""

    def __init__(self, c: Cluster, vni: int, fdb: dict[str, str], neigh: dict[str, str]) -> None:
        self.c, self.vni, self.fdb, self.neigh = c, vni, fdb, neigh
        self.samples = 0
        self.diffs: list[tuple[dict[str, str], dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            fdb, neigh = self.c.ovl.fdb(0, self.vni), self.c.ovl.neigh(0, self.vni)
            self.samples += 1
            if fdb != self.fdb or neigh != self.neigh:
                self.diffs.append((fdb, neigh))
            self._stop.wait(0.1)

    @contextlib.contextmanager
    def running(self) -> Iterator[KernelWatch]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=30)


# -- start -------------------------------------------------------------------------------------


def test_start_is_active_only_after_ready(cluster: Cluster) -> None:
    """While the first join attempt runs (seed 192.0.2.3 never answers) the agent already
    serves its control API and says it is not ready; systemd keeps the unit activating
    until READY=1, and every time it says active the agent says ready."""
    c = cluster
    assert c.show("ActiveState")["ActiveState"] == "inactive"  # installed, not enabled
    c.machine.systemctl("start", "--no-block", UNIT)
    samples: list[tuple[str, str, bool | None]] = []

    def settled() -> bool:
        st = c.show("ActiveState", "SubState", "MainPID")
        status = c.status()  # read after systemd's state: READY=1 precedes "active"
        samples.append((st["ActiveState"], st["SubState"], None if status is None else bool(status["ready"])))
        return st["ActiveState"] in ("active", "failed")

    wait_for(settled, f"{UNIT} to leave activating", within=90, every=0.05)
    assert samples[-1][:2] == ("active", "running"), (samples[-1], c.journal_text())
    assert ("activating", "start", False) in samples, samples  # up, serving, not ready, not started
    assert all(ready for state, _, ready in samples if state == "active"), samples
    pid = c.show("MainPID")["MainPID"]  # the packaged program, not a stand-in
    cmdline = c.machine.run(["cat", f"/proc/{pid}/cmdline"]).stdout.split("\0")
    assert cmdline[1:4] == ["/usr/local/bin/overlay-agent", "--config", CONFIG], cmdline
    journal = c.journal_text()
    assert journal.index("event=agent-ready") < journal.index("Started overlay-agent.service"), journal


def test_docker_plugin_socket_is_served_from_the_sandbox(cluster: Cluster) -> None:
    """dockerd (root, outside the sandbox) finds the plugin socket in /run/docker/plugins."""
    c = cluster
    c.ensure_running()
    path = c.machine.path(PLUGIN_SOCKET)
    wait_for(path.exists, f"{PLUGIN_SOCKET} in the machine")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 2\r\n"
                  b"Connection: close\r\n\r\n{}")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), reply[:300]
    assert "NetworkDriver" in json.loads(body)["Implements"], body


# -- restart -----------------------------------------------------------------------------------


def test_restart_keeps_endpoints_keys_and_kernel_state(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    c.ensure_running()
    c.start_peer()
    names = {c.name, "peer"}

    def alive(i: int) -> set[str]:
        return {m["name"] for m in c.ovl.members(i) if m["status"] == "alive"}

    wait_for(lambda: alive(0) == names == alive(1), "both agents to see each other alive")

    # A plain network with a container on each host; an encrypted one (made by the peer:
    # this kernel has no ESP) only so that the machine's agent makes IPsec keys.
    net_id = agentctl(c, "network", "create", "blue", "--subnet", "10.20.0.0/24").strip()
    c.machine.run(["ip", "netns", "add", "c0"])
    ep0 = json.loads(agentctl(c, "endpoint", "create", "blue", "--netns", "c0"))
    c1 = c.ovl.container("peer")
    ep1 = c.ovl.create_endpoint(1, net_id, netns_path(c1))
    c.ovl.create_network(1, "red", "--subnet", "10.21.0.0/24", "--encrypted")
    vni = int(json.loads(agentctl(c, "network", "inspect", net_id))[0]["Options"]
              ["com.docker.network.driver.overlay.vxlanid_list"])
    key_file = c.key_file()
    keys = wait_for(lambda: key_file.exists() and key_file.read_bytes(), f"{key_file} to be written")
    assert json.loads(keys)["keys"], keys  # private epoch keys, at least one

    wait_for(lambda: c.ovl.entries_for(0, vni, [ep1]) and c.ovl.entries_for(1, vni, [ep0]),
             "both kernels to hold the other side's endpoint")
    wait_for(lambda: c.ovl.ping(c1, ep0["ipv4"], count=1), "a first ping to go through")
    fdb, neigh, before_links = c.ovl.fdb(0, vni), c.ovl.neigh(0, vni), links(c)
    endpoints = {e["id"] for e in c.ovl.endpoints(0)}
    incarnation = next(m["incarnation"] for m in c.ovl.members(1) if m["name"] == c.name)
    old = c.show("MainPID", "NRestarts", "InvocationID")

    pinger = Pinger(c1, ep0["ipv4"], tmp_path / "ping.log")
    try:
        with KernelWatch(c, vni, fdb, neigh).running() as watch:
            wait_for(lambda: len(pinger.replies()) >= 20, "pings before the restart")
            c.machine.systemctl("restart", UNIT)  # returns once the new agent sent READY=1
            new = c.wait_active() | c.show("InvocationID")
            assert new["MainPID"] != old["MainPID"]
            wait_for(lambda: next((m["incarnation"] for m in c.ovl.members(1)
                                   if m["name"] == c.name and m["status"] == "alive"), 0) > incarnation,
                     "the peer to see the restarted agent's new incarnation")
            after_restart = max(pinger.replies())
            wait_for(lambda: max(pinger.replies()) >= after_restart + 40, "pings after the restart")
            # Under load one sample (two iproute2 runs) can take most of a second: keep
            # watching until the samples are enough to mean something.
            wait_for(lambda: watch.samples > 10, "kernel samples across the restart")
    finally:
        replies = pinger.stop()
    assert new["NRestarts"] == old["NRestarts"] == c.show("NRestarts")["NRestarts"], (
        old, new, c.journal_text()[-4000:])  # no crash, no watchdog kill on the way
    lost = sorted(set(range(min(replies), max(replies) + 1)) - replies)
    assert not lost, f"{len(lost)} of {max(replies)} pings lost: {lost[:20]}"
    assert watch.samples > 10 and not watch.diffs, watch.diffs[:3]
    assert links(c) == before_links  # no device recreated
    assert {e["id"] for e in c.ovl.endpoints(0)} == endpoints
    assert key_file.read_bytes() == keys, "the restart replaced the IPsec keys"
    restarted = [e["MESSAGE"] for e in c.machine.journal(UNIT, f"_SYSTEMD_INVOCATION_ID={new['InvocationID']}")]
    assert any("event=ipsec-keys-restored" in m for m in restarted), restarted
    c.notes.update(vni=vni, keys=keys, c1=c1, ep0=ep0)


# -- watchdog ----------------------------------------------------------------------------------


def test_watchdog_kills_a_wedged_agent_and_restarts_it(cluster: Cluster) -> None:
    c = cluster
    c.ensure_running()
    old = c.show("MainPID", "NRestarts")
    timeouts = c.journal_text().count("Watchdog timeout")
    c.machine.systemctl("kill", "--kill-whom=main", "--signal=SIGSTOP", UNIT)

    def restarted() -> dict[str, str] | None:
        st = c.show("ActiveState", "MainPID", "NRestarts")
        return st if (st["ActiveState"] == "active" and int(st["NRestarts"]) > int(old["NRestarts"])
                      and st["MainPID"] not in ("0", old["MainPID"])) else None

    wait_for(restarted, "the watchdog to kill the stopped agent and systemd to restart it",
             within=WATCHDOG_SEC + 90, every=0.2)
    assert c.journal_text().count("Watchdog timeout") == timeouts + 1
    assert c.status() is not None and c.status()["ready"]  # type: ignore[index]


# -- stop and start ------------------------------------------------------------------------------


def test_stop_sends_no_leave_and_start_keeps_the_keys(cluster: Cluster) -> None:
    c = cluster
    c.ensure_running()
    c.start_peer()
    wait_for(lambda: c.ovl.status_of(1, c.name) == "alive", "the peer to see the machine's agent alive")
    c.machine.systemctl("stop", UNIT)
    assert c.show("ActiveState", "Result") == {"ActiveState": "inactive", "Result": "success"}
    seen: list[str | None] = []

    def failed() -> bool:
        seen.append(c.ovl.status_of(1, c.name))
        return seen[-1] in ("dead", "failed")  # memberlist says dead, serf says failed

    wait_for(failed, "the peer to declare the stopped agent dead", within=90, every=0.1)
    assert set(seen) <= {"alive", "suspect", "dead", "failed"}, seen  # never "left"
    # RuntimeDirectoryPreserve=yes: an upgrade's stop + start keeps the IPsec keys.
    keys = c.notes.get("keys")
    if keys is not None:
        assert c.key_file().read_bytes() == keys
    c.machine.systemctl("start", UNIT)
    c.wait_active()
    wait_for(lambda: c.ovl.status_of(1, c.name) == "alive", "the peer to see the agent back")
    if keys is not None:
        assert c.key_file().read_bytes() == keys
        vni, c1, ep0 = c.notes["vni"], c.notes["c1"], c.notes["ep0"]
        wait_for(lambda: c.ovl.ping(c1, ep0["ipv4"], count=1), "the endpoint to answer again")
        assert vni in {int(n["Options"]["com.docker.network.driver.overlay.vxlanid_list"])
                       for n in json.loads(agentctl(c, "network", "inspect", "blue"))}


# -- bad configuration ------------------------------------------------------------------------------


def test_bad_config_fails_once_with_one_line_and_no_restart_loop(cluster: Cluster) -> None:
    c = cluster
    c.ensure_running()
    good = CONFIG_FILE.read_text()
    bad = good.replace('bind = "192.0.2.1:7946"', 'bind = "192.0.2.1:notaport"')
    assert bad != good
    c.machine.write(CONFIG, bad)
    try:
        r = c.machine.systemctl("restart", UNIT, check=False)
        assert r.returncode != 0
        # "failed" is terminal: a restart that systemd scheduled would show as
        # activating/auto-restart, and RestartPreventExitStatus=2 must prevent it.
        st = wait_for(lambda: (s := c.show("ActiveState", "SubState", "Result", "ExecMainStatus",
                                           "NRestarts", "InvocationID"))["ActiveState"] == "failed" and s,
                      f"{UNIT} to fail")
        assert st["SubState"] == "failed" and st["Result"] == "exit-code", st
        assert st["ExecMainStatus"] == "2", st
        # A requested restart resets the counter; any automatic restart since would count.
        assert st["NRestarts"] == "0", (st, c.journal_text()[-4000:])
        assert c.machine.run(["systemctl", "list-jobs", "--no-legend"]).stdout.strip() == ""
        lines = [e["MESSAGE"] for e in c.machine.journal(UNIT, f"_SYSTEMD_INVOCATION_ID={st['InvocationID']}")
                 if e.get("SYSLOG_IDENTIFIER") == "overlay-agent"]
        assert lines == [f"overlay-agent: error: {CONFIG}: key 'bind': '192.0.2.1:notaport': "
                         "port 'notaport' is not a number"], lines
    finally:
        c.machine.write(CONFIG, good)
    c.machine.systemctl("start", UNIT)
    c.wait_active()


# -- the sandbox ---------------------------------------------------------------------------------


def test_sandbox_allows_what_the_agent_needs_and_nothing_else(cluster: Cluster) -> None:
    """The packaged unit with only ExecStart (and Type) replaced runs tests/systemd/sandbox_probe.py."""
    c = cluster
    c.machine.run(["ip", "netns", "add", "probe"])
    unit = UNIT_FILE.read_text()
    exec_line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    out = "/run/overlay-agent/sandbox-probe.json"
    unit = unit.replace(exec_line, f"ExecStart={VENV}/bin/python {SOURCE}/tests/systemd/sandbox_probe.py "
                                   f"{out} probe").replace("Type=notify", "Type=oneshot")
    c.machine.write("etc/systemd/system/overlay-agent-probe.service", unit)
    try:
        c.machine.systemctl("daemon-reload")
        c.machine.systemctl("start", "overlay-agent-probe.service")
        report: dict[str, Any] = json.loads(c.machine.path(out).read_text())
        print(json.dumps(report, indent=1))  # shown by pytest -s or on failure
    finally:
        with contextlib.suppress(OSError):
            c.machine.path(out).unlink()
        (c.machine.tree / "etc/systemd/system/overlay-agent-probe.service").unlink()
        c.machine.systemctl("daemon-reload")
        c.machine.run(["ip", "netns", "del", "probe"], check=False)
    needs = report["needs"]
    assert needs == {k: "ok" for k in needs} and len(needs) == 10, needs
    refused = {k: v for k, v in report["forbidden"].items() if v == "ok"}
    assert not refused, f"the sandbox allows: {refused}; all: {report['forbidden']}"
    caps = {0: "CAP_CHOWN", 12: "CAP_NET_ADMIN", 21: "CAP_SYS_ADMIN"}
    want = sum(1 << bit for bit in caps)
    status = report["status"]
    for key in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[key], 16) == want, (key, status)
    assert int(status["CapAmb"], 16) == 0, status  # root needs no ambient set
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", status


def test_security_score_is_the_one_the_docs_record(cluster: Cluster) -> None:
    c = cluster
    r = c.machine.run(["systemd-analyze", "security", "--no-pager", UNIT], check=False)
    m = SCORE_RE.search(r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    documented = DOCS_SCORE_RE.search(DOCS.read_text())
    assert documented, "docs/operations.md does not record the systemd-analyze security score"
    assert (documented[1], documented[2]) == (m[1], m[2]), (
        f"docs/operations.md records {documented[1]} {documented[2]}, systemd-analyze says {m[1]} {m[2]}")
