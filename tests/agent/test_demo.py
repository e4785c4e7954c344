"""``make demo`` (``python -m agent.lab demo``): runs, shows members from every host, pings across
hosts over the overlay, cleans up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import trio

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def demo_namespaces(pid: int) -> list[str]:
    prefix = f"odemo{pid:x}-"
    return [n for n in os.listdir("/run/netns") if n.startswith(prefix)] if os.path.isdir("/run/netns") else []


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OVERLAY_AGENT_")}


def test_demo_runs_and_cleans_up() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "agent.lab", "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env())
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    tables = out.split("agentctl --socket")[1:]
    assert len(tables) == 3, out
    for i, table in enumerate(tables, 1):
        rows = [line.split() for line in table.splitlines()[2:5]]
        assert [r[0] for r in rows] == ["host1", "host2", "host3"], table
        assert all("alive" in r for r in rows), table
        assert f"host{i} *" in table
    # The overlay steps: a network, one endpoint per host, inspect, pings, dataplane in sync.
    assert '"Name": "demo"' in out and '"Driver": "overlay"' in out
    assert out.count("3 packets transmitted, 3 received, 0% packet loss") == 2, out
    assert "in sync" in out
    assert "Demo finished" in out
    assert demo_namespaces(proc.pid) == []


async def test_ctrl_c_tears_the_lab_down() -> None:
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "agent.lab", "demo", "--keep-going"],
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env())
    assert proc.stdout is not None
    buf = b""
    try:
        with trio.fail_after(60):
            while b"Ctrl-C tears it down" not in buf:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, buf.decode()
                buf += chunk
        assert demo_namespaces(proc.pid)  # the lab is up
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            code = await proc.wait()
        assert code == 130
        assert demo_namespaces(proc.pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()
