"""The real ``overlay-agent`` and ``agentctl`` programs as subprocesses on 127.0.0.1.

Covers what only a process can show: exit statuses, signals (SIGTERM without a
leave by default, with one under ``--leave-on-terminate``), SIGKILL detection,
``agentctl leave`` stopping the agent, and one-line errors for bad flags.
Every process is started here and killed by its pid in a finally block.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import pytest
import trio

from gossip.tables.agenttag import AGENT_TAG, AGENT_TAG_VALUE
from tests.agent.conftest import query, statuses, wait_until

PYTHON = sys.executable
BIN = os.path.dirname(PYTHON)


def agentctl_command() -> list[str]:
    script = os.path.join(BIN, "agentctl")
    return [script] if os.path.exists(script) else [PYTHON, "-m", "agent.ctl.main"]


def _open_log(path: str) -> BinaryIO:
    return open(path, "wb")  # the child writes its stderr here


@dataclass
class Proc:
    name: str
    socket: str
    process: trio.Process
    log: str
    port: int = 0

    def stderr(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()


class Agents:
    def __init__(self, sockdir: str) -> None:
        self.sockdir = sockdir
        self.procs: list[Proc] = []

    async def spawn(self, name: str, join: Sequence[int] = (), extra: Sequence[str] = ()) -> Proc:
        sock = f"{self.sockdir}/{name}.sock"
        log = f"{self.sockdir}/{name}.log"
        args = [PYTHON, "-m", "agent", "--node", name, "--bind", "127.0.0.1:0",
                "--control-socket", sock, "--profile", "local", "--log-level", "debug"]
        for port in join:
            args += ["--join", f"127.0.0.1:{port}"]
        args += list(extra)
        with _open_log(log) as out:
            process = await trio.lowlevel.open_process(args, stdin=subprocess.DEVNULL, stderr=out)
        proc = Proc(name, sock, process, log)
        self.procs.append(proc)

        async def up() -> bool:
            if process.poll() is not None:
                pytest.fail(f"agent {name} exited with {process.returncode}: {proc.stderr()}")
            try:
                proc.port = int((await query(sock, "status"))["port"])
            except OSError:
                return False
            return True

        await wait_until(up, f"agent {name} to answer on its control socket")
        return proc

    def kill_all(self) -> None:
        for p in self.procs:
            if p.process.poll() is None:
                p.process.kill()


@pytest.fixture
async def agents(sockdir: str) -> AsyncIterator[Agents]:
    group = Agents(sockdir)
    try:
        yield group
    finally:
        group.kill_all()
        for p in group.procs:
            with trio.move_on_after(5):
                await p.process.wait()


async def _exit_status(proc: Proc) -> int:
    with trio.fail_after(15):
        return await proc.process.wait()


@pytest.mark.slow
async def test_signals_kill_and_leave(agents: Agents) -> None:
    a = await agents.spawn("a")
    b = await agents.spawn("b", join=[a.port])
    c = await agents.spawn("c", join=[a.port])
    d = await agents.spawn("d", join=[a.port], extra=["--leave-on-terminate", "--tag", "rack=r7"])
    e = await agents.spawn("e", join=[a.port])
    names = ["a", "b", "c", "d", "e"]

    async def all_alive() -> bool:
        for p in (a, b, c, d, e):
            if await statuses(p.socket) != dict.fromkeys(names, "alive"):
                return False
        return True

    await wait_until(all_alive, "5 agents to see each other alive")
    tags = {m["name"]: m["tags"] for m in await query(a.socket, "members")}
    # The user's tags, plus the reserved one that marks our agents (gossip/tables/agenttag.py).
    assert tags["d"] == {"role": "overlay-agent", "rack": "r7", AGENT_TAG: AGENT_TAG_VALUE}

    # SIGTERM without --leave-on-terminate: exit 0, and peers must NOT see "left".
    e.process.send_signal(signal.SIGTERM)
    assert await _exit_status(e) == 0, e.stderr()
    assert not await trio.Path(e.socket).exists()
    seen: list[str] = []

    async def e_noticed() -> bool:
        seen.append((await statuses(a.socket))["e"])
        return seen[-1] != "alive"

    await wait_until(e_noticed, "a to notice e is gone")
    assert seen[-1] in ("suspect", "dead"), f"a saw e {seen[-1]} after a plain SIGTERM"

    # SIGKILL: the others mark it dead.
    b.process.kill()
    await b.process.wait()

    async def b_dead() -> bool:
        return [(await statuses(p.socket))["b"] for p in (a, c, d)] == ["dead"] * 3

    await wait_until(b_dead, "a, c and d to mark b dead")

    # agentctl leave: graceful leave, the agent exits 0, peers see "left".
    result = await trio.run_process(
        [*agentctl_command(), "--socket", c.socket, "leave"], capture_stdout=True, capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert await _exit_status(c) == 0, c.stderr()

    async def c_left() -> bool:
        return [(await statuses(p.socket))["c"] for p in (a, d)] == ["left", "left"]

    await wait_until(c_left, "a and d to see c left")

    # SIGTERM with --leave-on-terminate: leave first, exit 0, peers see "left".
    d.process.send_signal(signal.SIGTERM)
    assert await _exit_status(d) == 0, d.stderr()
    assert "event=leave-finished" in d.stderr()

    async def d_left() -> bool:
        return (await statuses(a.socket))["d"] == "left"

    await wait_until(d_left, "a to see d left")
    assert "Traceback" not in a.stderr()


async def test_agent_without_keys_never_maps_openssl(agents: Agents) -> None:
    """trio's TLS/DTLS modules stay deferred (agent/deferred.py): ~5 MiB less per agent."""
    a = await agents.spawn("a")
    assert await statuses(a.socket) == {"a": "alive"}
    maps = await trio.Path(f"/proc/{a.process.pid}/maps").read_text(encoding="ascii")
    libs = {line.split()[-1].rsplit("/", 1)[-1] for line in maps.splitlines() if ".so" in line}
    loaded = sorted(x for x in libs if x.startswith(("libcrypto", "libssl", "_ssl.", "_hashlib.")))
    assert loaded == [], loaded
    # Nor the compressors shutil would load (argparse imports it before trio does).
    compressors = sorted(x for x in libs if x.startswith(("libbz2", "liblzma", "_bz2.", "_lzma.")))
    assert compressors == [], compressors


async def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        args, capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL,
        env=env,
    )


@pytest.mark.parametrize(
    "flags",
    [
        ["--node", "x"],  # --bind missing
        ["--bind", "nonsense"],
        ["--bind", "127.0.0.1:99999"],
        ["--bind", "0.0.0.0"],  # wildcard without --advertise
        ["--bind", "127.0.0.1", "--join", "example.org"],
        ["--bind", "127.0.0.1", "--encrypt-key", "not-base64!"],
        ["--bind", "127.0.0.1", "--encrypt-key", "AAAA"],
        ["--bind", "127.0.0.1", "--profile", "moon"],
        ["--bind", "127.0.0.1", "--tag", "novalue"],
        ["--bind", "127.0.0.1", "--tag", "big=" + "x" * 600],
        ["--bind", "127.0.0.1", "--node", "has space"],
        ["--bind", "[127.0.0.1]:7946"],
    ],
)
async def test_bad_flags_exit_2_with_one_line(flags: list[str]) -> None:
    result = await _run([PYTHON, "-m", "agent", *flags])
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.count("\n") == 1, err
    assert err.startswith("overlay-agent: error: ")
    assert "Traceback" not in err


async def test_port_in_use_is_one_line_exit_1(sockdir: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = await _run([PYTHON, "-m", "agent", "--node", "x", "--bind", f"127.0.0.1:{port}",
                             "--control-socket", f"{sockdir}/x.sock"])
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert err.count("\n") == 1 and "cannot bind" in err, err


async def test_agentctl_without_agent(sockdir: str) -> None:
    missing = await _run([*agentctl_command(), "--socket", f"{sockdir}/none.sock", "members"])
    assert missing.returncode == 1
    assert missing.stderr.decode().count("\n") == 1
    assert "no agent control socket" in missing.stderr.decode()
    # A stale socket file whose agent is gone.
    stale = f"{sockdir}/stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()
    down = await _run([*agentctl_command(), "--socket", stale, "status"])
    assert down.returncode == 1
    assert "not running" in down.stderr.decode()
    # The environment variable names the default socket.
    env: dict[str, Any] = dict(os.environ, OVERLAY_AGENT_SOCKET=stale)
    via_env = await _run([*agentctl_command(), "members"], env=env)
    assert via_env.returncode == 1 and stale in via_env.stderr.decode()


def test_console_scripts_declared() -> None:
    # The entry points of pyproject.toml; skipped if the project is not installed.
    if shutil.which("agentctl", path=BIN) is None:
        pytest.skip("project not installed in this interpreter's environment")
    assert shutil.which("overlay-agent", path=BIN) is not None
